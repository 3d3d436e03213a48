// Continuous batching over a StepEngine (see prompt_runner.h).
#include "worker/engine/prompt_runner.h"

#include <algorithm>
#include <chrono>
#include <deque>
#include <fstream>
#include <sstream>

#include "common/error.h"
#include "common/safetensors.h"

namespace moerun::engine {

std::vector<PromptResult> run_prompts(StepEngine& eng,
                                      const std::vector<std::vector<int32_t>>& prompts,
                                      const PromptRunOptions& opt, PromptRunStats* stats) {
  MOERUN_CHECK(opt.max_new_tokens >= 1, "max_new_tokens {} must be >= 1", opt.max_new_tokens);
  MOERUN_CHECK(opt.prefill_chunk >= 0, "prefill_chunk {} must be >= 0", opt.prefill_chunk);
  const auto t0 = std::chrono::steady_clock::now();
  const int64_t vocab = eng.config().vocab_size;
  std::vector<PromptResult> results(prompts.size());
  struct Running {
    size_t index = 0;
    SeqId seq = -1;
    int64_t fed = 0;  // prompt tokens processed
  };
  std::deque<size_t> waiting;
  for (size_t i = 0; i < prompts.size(); ++i) {
    MOERUN_CHECK(!prompts[i].empty(), "prompt {} is empty", i);
    results[i].prompt = prompts[i];
    waiting.push_back(i);
  }
  std::vector<Running> running;
  PromptRunStats st;
  while (!waiting.empty() || !running.empty()) {
    while (!waiting.empty() && eng.capacity().free_sequences > 0) {
      running.push_back({waiting.front(), eng.add_sequence(), 0});
      waiting.pop_front();
    }
    int64_t budget = eng.capacity().max_batch_tokens;
    std::vector<StepRequest> reqs;
    std::vector<size_t> who;  // index into running
    for (size_t r = 0; r < running.size() && budget > 0; ++r) {
      const Running& s = running[r];
      const std::vector<int32_t>& prompt = prompts[s.index];
      StepRequest q;
      q.seq = s.seq;
      q.return_logits = opt.keep_logits;
      const int64_t left = static_cast<int64_t>(prompt.size()) - s.fed;
      if (left > 0) {
        int64_t n = std::min(left, budget);
        if (opt.prefill_chunk > 0) n = std::min(n, opt.prefill_chunk);
        q.tokens.assign(prompt.begin() + s.fed, prompt.begin() + s.fed + n);
        q.phase = kernels::RowPhase::kPrefill;
      } else {
        q.tokens = {results[s.index].generated.back()};
        q.phase = kernels::RowPhase::kDecode;
      }
      budget -= static_cast<int64_t>(q.tokens.size());
      const bool samples = left <= static_cast<int64_t>(q.tokens.size());
      if (samples) {
        kernels::SamplingParams sp = opt.sampling;
        // The position of the token being drawn.
        const int64_t fed = s.fed + (left > 0 ? static_cast<int64_t>(q.tokens.size()) : 0);
        sp.step =
            static_cast<uint64_t>(fed + static_cast<int64_t>(results[s.index].generated.size()));
        q.sampling = sp;
      } else {
        q.return_logits = false;
      }
      reqs.push_back(std::move(q));
      who.push_back(r);
    }
    MOERUN_CHECK(!reqs.empty(), "no sequence could be scheduled (max_batch_tokens {})",
                 eng.capacity().max_batch_tokens);
    const auto step_start = std::chrono::steady_clock::now();
    const std::vector<StepResult> res = eng.step(reqs);
    st.steps++;
    if (std::all_of(reqs.begin(), reqs.end(),
                    [](const StepRequest& q) { return q.phase == kernels::RowPhase::kDecode; })) {
      st.decode_steps++;
      st.decode_tokens += static_cast<int64_t>(reqs.size());
      st.decode_seconds +=
          std::chrono::duration<double>(std::chrono::steady_clock::now() - step_start).count();
    }
    std::vector<size_t> finished;
    for (size_t j = 0; j < reqs.size(); ++j) {
      Running& s = running[who[j]];
      PromptResult& out = results[s.index];
      if (reqs[j].phase == kernels::RowPhase::kPrefill) {
        s.fed += static_cast<int64_t>(reqs[j].tokens.size());
        st.prompt_tokens += static_cast<int64_t>(reqs[j].tokens.size());
      }
      if (!reqs[j].sampling) continue;
      out.generated.push_back(res[j].token);
      st.generated_tokens++;
      if (opt.keep_logits) {
        MOERUN_CHECK(static_cast<int64_t>(res[j].logits.size()) >= vocab,
                     "step returned {} logits for sequence {}", res[j].logits.size(), s.seq);
        out.logits.insert(out.logits.end(), res[j].logits.end() - vocab, res[j].logits.end());
      }
      const bool stop = std::find(opt.stop_tokens.begin(), opt.stop_tokens.end(), res[j].token) !=
                        opt.stop_tokens.end();
      if (stop || static_cast<int64_t>(out.generated.size()) >= opt.max_new_tokens)
        finished.push_back(who[j]);
    }
    std::sort(finished.rbegin(), finished.rend());
    for (size_t r : finished) {
      eng.free_sequence(running[r].seq);
      running.erase(running.begin() + static_cast<int64_t>(r));
    }
  }
  st.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (stats) *stats = st;
  return results;
}

std::vector<std::vector<int32_t>> read_prompt_file(const std::filesystem::path& path) {
  std::ifstream in(path);
  MOERUN_CHECK(in.good(), "cannot read prompt file {}", path.string());
  std::vector<std::vector<int32_t>> prompts;
  std::string line;
  for (int64_t no = 1; std::getline(in, line); ++no) {
    std::stringstream ss(line);
    std::string item;
    std::vector<int32_t> ids;
    while (ss >> item) {
      if (ids.empty() && item[0] == '#') break;
      size_t used = 0;
      long long v = -1;
      try {
        v = std::stoll(item, &used);
      } catch (const std::exception&) {
        used = 0;
      }
      MOERUN_CHECK(used == item.size() && v >= 0 && v <= INT32_MAX,
                   "{} line {}: '{}' is not a token id (a non-negative integer)", path.string(), no,
                   item);
      ids.push_back(static_cast<int32_t>(v));
    }
    if (!ids.empty()) prompts.push_back(std::move(ids));
  }
  MOERUN_CHECK(!prompts.empty(), "prompt file {} holds no prompts", path.string());
  return prompts;
}

void write_prompt_results(const std::vector<PromptResult>& results, int64_t vocab,
                          const std::filesystem::path& path) {
  SafetensorsWriter w;
  for (size_t i = 0; i < results.size(); ++i) {
    const PromptResult& r = results[i];
    const auto n = static_cast<int64_t>(r.generated.size());
    w.add(fmt::format("prompt{}.tokens", i), DType::kI32, {n},
          std::as_bytes(std::span(r.generated)));
    if (!r.logits.empty())
      w.add(fmt::format("prompt{}.logits", i), DType::kF32, {n, vocab},
            std::as_bytes(std::span(r.logits)));
  }
  w.write(path);
}

}  // namespace moerun::engine
