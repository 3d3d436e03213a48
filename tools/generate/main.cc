// moerun-generate --model DIR (--chat TEXT | --prompt TEXT | --ids 1,2,3) [--max-tokens N]
//                 [--temperature T] [--top-k K] [--top-p P] [--seed S] [--thinking]
//                 [--kernels reference|optimized] [--threads N] [--experts-per-token K]
//
// Offline generation through the single-process engine: the prompt is a chat turn rendered
// with the DeepSeek-V4 chat format (--chat), raw text (--prompt), or token ids (--ids); the
// completion streams to stdout as it is decoded, timings go to stderr. Stops at the end-of-
// sentence token or after --max-tokens. Exit status 0, 1 on errors, 2 on usage errors.
#include <chrono>
#include <cstdio>
#include <optional>
#include <sstream>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/chat_format.h"
#include "common/error.h"
#include "common/tokenizer.h"
#include "worker/engine/engine.h"

namespace {

std::vector<int32_t> parse_ids(const std::string& text) {
  std::vector<int32_t> ids;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    size_t used = 0;
    long v = 0;
    try {
      v = std::stol(item, &used);
    } catch (const std::exception&) {
      used = 0;
    }
    MOERUN_CHECK(used == item.size() && !item.empty(), "--ids: '{}' is not an integer", item);
    ids.push_back(static_cast<int32_t>(v));
  }
  MOERUN_CHECK(!ids.empty(), "--ids: no token ids given");
  return ids;
}

std::vector<int32_t> chat_prompt(const moerun::Tokenizer& tok, const std::string& user,
                                 bool thinking) {
  nlohmann::ordered_json messages = nlohmann::ordered_json::array();
  messages.push_back({{"role", "user"}, {"content", user}});
  moerun::chat::EncodeOptions opt;
  opt.mode = thinking ? moerun::chat::ThinkingMode::kThinking : moerun::chat::ThinkingMode::kChat;
  const auto pieces = moerun::chat::encode_messages_pieces(messages, opt);
  std::vector<moerun::TextSpan> spans;
  for (const auto& p : pieces)
    spans.push_back(
        {p.text, p.special ? moerun::SpecialTokens::kMatch : moerun::SpecialTokens::kAsText});
  return tok.encode_spans(spans);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Generate text with a DeepSeek-V4 checkpoint on this machine"};
  std::string model, chat, prompt, ids, kernels = "optimized";
  int64_t max_tokens = 64, experts = 0;
  int threads = 0;
  bool thinking = false;
  moerun::kernels::SamplingParams sp;
  app.add_option("--model", model, "Checkpoint folder (config.json, shards, tokenizer.json)")
      ->required();
  auto* g = app.add_option_group("prompt", "exactly one of");
  g->add_option("--chat", chat, "A user message, rendered with the chat format");
  g->add_option("--prompt", prompt, "Raw prompt text (special tokens matched)");
  g->add_option("--ids", ids, "Comma-separated prompt token ids");
  g->require_option(1);
  app.add_flag("--thinking", thinking, "Thinking mode for --chat");
  app.add_option("--max-tokens", max_tokens, "Tokens to generate")->check(CLI::PositiveNumber);
  app.add_option("--temperature", sp.temperature, "0 = greedy")->check(CLI::Range(0.0, 100.0));
  app.add_option("--top-k", sp.top_k, "Sample among the K most likely (0 = all)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--top-p", sp.top_p, "Nucleus mass in (0, 1]")->check(CLI::Range(0.0, 1.0));
  app.add_option("--seed", sp.seed, "Sampling seed");
  app.add_option("--kernels", kernels, "Kernel set")
      ->check(CLI::IsMember({"reference", "optimized"}));
  app.add_option("--threads", threads, "Kernel threads (default: OpenMP's)");
  app.add_option("--experts-per-token", experts, "Override num_experts_per_tok")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);
  if (!(sp.top_p > 0.0f)) {
    std::fprintf(stderr, "moerun-generate: --top-p must be in (0, 1], got %g\n", sp.top_p);
    return 2;
  }
  try {
    moerun::engine::EngineOptions eo;
    eo.checkpoint = model;
    eo.kernels = moerun::kernels::parse_kernel_impl(kernels);
    eo.num_threads = threads;
    eo.experts_per_token = experts;
    eo.max_sequences = 1;
    std::optional<moerun::Tokenizer> tok;
    const auto tok_path = std::filesystem::path(model) / "tokenizer.json";
    if (!chat.empty() || !prompt.empty() || std::filesystem::exists(tok_path))
      tok = moerun::Tokenizer::load(tok_path);
    std::vector<int32_t> input = !ids.empty()    ? parse_ids(ids)
                                 : !chat.empty() ? chat_prompt(*tok, chat, thinking)
                                                 : tok->encode(prompt);
    moerun::engine::Engine eng(eo);
    const int32_t eos = static_cast<int32_t>(eng.config().eos_token_id);
    std::fprintf(stderr, "moerun-generate: %zu prompt tokens, %s kernels (%s)\n", input.size(),
                 kernels.c_str(), eng.kernels().describe().c_str());
    const auto id = eng.add_sequence();
    std::optional<moerun::StreamDecoder> dec;
    if (tok) dec.emplace(*tok);
    using Clock = std::chrono::steady_clock;
    auto t0 = Clock::now();
    auto res = eng.step({{id, input, false}});
    const double prefill_s = std::chrono::duration<double>(Clock::now() - t0).count();
    t0 = Clock::now();
    int64_t generated = 0;
    for (; generated < max_tokens; ++generated) {
      sp.step = static_cast<uint64_t>(eng.length(id));
      const int32_t next = eng.sample(res[0].logits, sp);
      if (dec) {
        std::fputs(dec->push(next).c_str(), stdout);
      } else {
        std::printf("%d ", next);
      }
      std::fflush(stdout);
      if (next == eos || generated + 1 == max_tokens ||
          eng.length(id) + 1 >= eng.options().max_context)
        break;
      res = eng.step({{id, {next}, false, moerun::kernels::RowPhase::kDecode}});
    }
    if (dec) std::fputs(dec->finish().c_str(), stdout);
    std::printf("\n");
    const double decode_s = std::chrono::duration<double>(Clock::now() - t0).count();
    std::fprintf(stderr,
                 "moerun-generate: prefill %zu tokens in %.3f s (%.1f tok/s); %ld tokens in %.3f s "
                 "(%.1f tok/s)\n",
                 input.size(), prefill_s, static_cast<double>(input.size()) / prefill_s,
                 static_cast<long>(generated + 1), decode_s,
                 static_cast<double>(generated + 1) / decode_s);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moerun-generate: %s\n", e.what());
    return 1;
  }
}
