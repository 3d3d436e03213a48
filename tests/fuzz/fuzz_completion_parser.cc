// Fuzz target for the chat format: any completion text must either parse into a message
// whose invariants hold or throw moerun::Error, and any JSON conversation must either
// encode or throw moerun::Error; any other exception, crash or sanitizer report is a bug.
//
// Input layout: byte 0 holds flags (bit 0 thinking mode, bit 1 drop_thinking, bit 2
// reasoning_effort "max", bit 3 no BOS); the rest up to the first NUL byte is the completion
// text; what follows the NUL is JSON: a messages array, or {"messages": [...], "context":
// [...]}.
//
// Built as a libFuzzer target when MOERUN_FUZZ is on; built with MOERUN_FUZZ_REPLAY_MAIN
// always, as a replay of the corpus run by ctest.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/chat_format.h"
#include "common/error.h"

namespace {

using Json = nlohmann::ordered_json;

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_completion_parser: invariant violated: %s\n", what);
    std::abort();
  }
}

// What a successful parse promises (chat_format.h).
void check_message(const moerun::chat::ParsedMessage& m, std::string_view text,
                   moerun::chat::ThinkingMode mode) {
  for (const char* token :
       {"<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>", "<think>", "</think>", "｜DSML｜"}) {
    check(m.content.find(token) == std::string::npos, "no special token in the content");
    check(m.reasoning_content.find(token) == std::string::npos,
          "no special token in the reasoning");
  }
  if (mode == moerun::chat::ThinkingMode::kChat)
    check(m.reasoning_content.empty(), "chat: no reasoning");
  check(m.content.size() + m.reasoning_content.size() <= text.size(), "parts inside the text");
  for (const moerun::chat::ToolCall& c : m.tool_calls) {
    check(c.arguments.size() >= 2 && c.arguments.front() == '{' && c.arguments.back() == '}',
          "arguments are {...}");
  }
  const Json j = m.to_json();
  check(j["tool_calls"].size() == m.tool_calls.size(), "to_json keeps every call");
}

// Error messages reach JSON responses: they must be valid UTF-8 even for garbage input.
void check_error(const moerun::Error& e) {
  try {
    (void)Json(e.what()).dump();
  } catch (const Json::type_error&) {
    check(false, "error message is valid UTF-8");
  }
}

void fuzz_encode(uint8_t flags, std::string_view json_text) {
  Json doc = Json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (doc.is_discarded()) return;
  moerun::chat::EncodeOptions opt;
  opt.mode =
      (flags & 1) ? moerun::chat::ThinkingMode::kThinking : moerun::chat::ThinkingMode::kChat;
  opt.drop_thinking = (flags & 2) != 0;
  if (flags & 4) opt.reasoning_effort = "max";
  opt.add_default_bos_token = (flags & 8) == 0;
  Json messages = doc;
  if (doc.is_object()) {
    messages = doc.contains("messages") ? doc["messages"] : Json();
    if (doc.contains("context")) opt.context = doc["context"];
  }
  try {
    const auto pieces = moerun::chat::encode_messages_pieces(messages, opt);
    std::string joined;
    for (size_t i = 0; i < pieces.size(); ++i) {
      check(!pieces[i].text.empty(), "pieces are non-empty");
      check(i == 0 || pieces[i].special != pieces[i - 1].special, "adjacent pieces merged");
      joined += pieces[i].text;
    }
    check(joined == moerun::chat::encode_messages(messages, opt),
          "pieces concatenate to the prompt");
  } catch (const moerun::Error& e) {
    check_error(e);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const uint8_t flags = data[0];
  const std::string_view rest(reinterpret_cast<const char*>(data) + 1, size - 1);
  const size_t nul = rest.find('\0');
  const std::string_view completion = rest.substr(0, nul);
  const auto mode =
      (flags & 1) ? moerun::chat::ThinkingMode::kThinking : moerun::chat::ThinkingMode::kChat;
  try {
    check_message(moerun::chat::parse_completion(completion, mode), completion, mode);
  } catch (const moerun::Error& e) {
    check_error(e);
  }
  if (nul != std::string_view::npos) fuzz_encode(flags, rest.substr(nul + 1));
  return 0;
}

#include "tests/fuzz/replay_main.h"
