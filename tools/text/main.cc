// moerun-text: the tokenizer and the DeepSeek-V4 chat format as a JSON-lines filter.
//
//   moerun-text encode --tokenizer FILE   {"id", "text"}        → {"id", "ids", "decoded"}
//   moerun-text chat [--tokenizer FILE]   a chat-encoding case  → {"id", "prompt"[, "ids"]}
//   moerun-text parse                     a completion to parse → {"id", "message"}
//
// One output line per input line, in input order, keeping each input's "id". A line that
// cannot be handled (bad JSON, missing field, invalid conversation, malformed completion)
// gives {"id", "error"} and the tool goes on with the next line. Exit status: 0 when every
// line was read (even if some gave errors), 2 for usage or an unreadable tokenizer.
//
// The chat subcommand takes the layout of ../shared/golden/chat-encoding/cases.jsonl:
// messages, thinking_mode ("chat" / "thinking"), drop_thinking, reasoning_effort,
// add_default_bos_token, context — each optional with the reference's defaults. With
// --tokenizer it also prints the prompt's ids, message contents encoded with special-token
// matching off and the template's own tokens with it on; --match-special-in-content restores
// the reference's behaviour (the whole prompt tokenized as one text).
#include <cstdio>
#include <iostream>
#include <optional>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/chat_format.h"
#include "common/error.h"
#include "common/tokenizer.h"

namespace {

// ordered_json: tool schemas and arguments keep their key order, as the reference renders them.
using json = nlohmann::ordered_json;

json encode_line(const json& in, const moerun::Tokenizer& tokenizer) {
  if (!in.contains("text") || !in["text"].is_string())
    MOERUN_THROW("input line needs a string field \"text\"");
  const auto ids = tokenizer.encode(in["text"].get<std::string>());
  return {{"ids", ids}, {"decoded", tokenizer.decode(ids)}};
}

moerun::chat::EncodeOptions chat_options(const json& in) {
  moerun::chat::EncodeOptions opt;
  auto get = [&](const char* key) -> const json* {
    auto it = in.find(key);
    return it == in.end() || it->is_null() ? nullptr : &*it;
  };
  if (const json* v = get("thinking_mode")) {
    MOERUN_CHECK(v->is_string(), "thinking_mode must be a string, got {}", v->dump());
    opt.mode = moerun::chat::parse_thinking_mode(v->get<std::string>());
  }
  if (const json* v = get("drop_thinking")) {
    MOERUN_CHECK(v->is_boolean(), "drop_thinking must be true or false, got {}", v->dump());
    opt.drop_thinking = v->get<bool>();
  }
  if (const json* v = get("reasoning_effort")) {
    MOERUN_CHECK(v->is_string(), "reasoning_effort must be a string, got {}", v->dump());
    opt.reasoning_effort = v->get<std::string>();
  }
  if (const json* v = get("add_default_bos_token")) {
    MOERUN_CHECK(v->is_boolean(), "add_default_bos_token must be true or false, got {}", v->dump());
    opt.add_default_bos_token = v->get<bool>();
  }
  if (const json* v = get("context")) opt.context = *v;
  return opt;
}

json chat_line(const json& in, const moerun::Tokenizer* tokenizer, bool match_in_content) {
  MOERUN_CHECK(in.contains("messages"), "input line needs a field \"messages\"");
  const auto options = chat_options(in);
  const auto pieces = moerun::chat::encode_messages_pieces(in["messages"], options);
  std::string prompt;
  std::vector<moerun::TextSpan> spans;
  for (const auto& piece : pieces) {
    prompt += piece.text;
    spans.push_back({piece.text, piece.special || match_in_content
                                     ? moerun::SpecialTokens::kMatch
                                     : moerun::SpecialTokens::kAsText});
  }
  json out = {{"prompt", prompt}};
  if (tokenizer) out["ids"] = tokenizer->encode_spans(spans);
  return out;
}

json parse_line(const json& in) {
  MOERUN_CHECK(in.contains("completion") && in["completion"].is_string(),
               "input line needs a string field \"completion\"");
  moerun::chat::ThinkingMode mode = moerun::chat::ThinkingMode::kChat;
  if (in.contains("thinking_mode")) {
    MOERUN_CHECK(in["thinking_mode"].is_string(), "thinking_mode must be a string, got {}",
                 in["thinking_mode"].dump());
    mode = moerun::chat::parse_thinking_mode(in["thinking_mode"].get<std::string>());
  }
  return {{"message",
           moerun::chat::parse_completion(in["completion"].get<std::string>(), mode).to_json()}};
}

// moerun::Error messages start with "file:line [host]: "; a line's error is about the input.
std::string input_error(const std::string& what) {
  const size_t cut = what.find("]: ");
  return cut == std::string::npos ? what : what.substr(cut + 3);
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Tokenizer and DeepSeek-V4 chat format over JSON lines (stdin → stdout)"};
  app.require_subcommand(1);
  std::string tokenizer_path;
  auto* encode = app.add_subcommand("encode", "{id, text} → {id, ids, decoded}");
  encode->add_option("--tokenizer", tokenizer_path, "tokenizer.json")->required();
  auto* chat = app.add_subcommand("chat", "chat-encoding case → {id, prompt[, ids]}");
  chat->add_option("--tokenizer", tokenizer_path, "also tokenize the prompt");
  bool match_in_content = false;
  chat->add_flag("--match-special-in-content", match_in_content,
                 "reference behaviour: control-token spellings inside message contents become "
                 "control tokens (the whole prompt is tokenized as one text)");
  auto* parse = app.add_subcommand("parse", "completion case → {id, message}");
  CLI11_PARSE(app, argc, argv);

  std::optional<moerun::Tokenizer> tokenizer;
  if (!tokenizer_path.empty()) {
    try {
      tokenizer = moerun::Tokenizer::load(tokenizer_path);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "moerun-text: %s\n", e.what());
      return 2;
    }
  }

  std::string line;
  while (std::getline(std::cin, line)) {
    json out = json::object();
    try {
      const json in = json::parse(line);
      MOERUN_CHECK(in.is_object(), "input line is not a JSON object");
      out["id"] = in.value("id", json());
      json result;
      if (encode->parsed()) {
        result = encode_line(in, *tokenizer);
      } else if (chat->parsed()) {
        result = chat_line(in, tokenizer ? &*tokenizer : nullptr, match_in_content);
      } else if (parse->parsed()) {
        result = parse_line(in);
      }
      out.update(result);
    } catch (const moerun::Error& e) {
      out["error"] = input_error(e.what());
    } catch (const json::exception& e) {
      out["error"] = std::string("invalid JSON input: ") + e.what();
    }
    if (!out.contains("id")) out["id"] = nullptr;
    // Invalid UTF-8 in an error message must not abort the dump: replace it.
    std::cout << out.dump(-1, ' ', false, json::error_handler_t::replace) << '\n';
  }
  std::cout.flush();
  return 0;
}
