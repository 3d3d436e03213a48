// The DeepSeek-V4 chat format: OpenAI-style messages → prompt text, and a decoded completion
// → assistant message. A byte-exact re-implementation of the reference `encoding_dsv4.py`
// (`encode_messages`, `parse_message_from_completion_text`); docs/model-dsv4-flash.md §4.2-4.3
// describes the format and ../shared/golden/chat-encoding/README.md every surprising
// behaviour of the reference that this code reproduces.
//
// Messages are JSON in the OpenAI chat layout: role, content, reasoning_content,
// tool_calls[].{id, function.{name, arguments}}, tool_call_id, plus the reference's own
// fields tools, response_format, task and wo_eos. They are `nlohmann::ordered_json` because
// the prompt repeats tool schemas and response formats with Python's json.dumps, which keeps
// the key order of the request: parse requests with nlohmann::ordered_json::parse (a
// nlohmann::json converts implicitly, but has already sorted its keys). Integers beyond 64
// bits inside schemas are rendered through a double (nlohmann's DOM keeps no number text);
// tool-call arguments are re-parsed from their JSON text and rendered exactly.
//
// Errors: every malformed conversation or completion throws moerun::Error naming the field
// (messages[3].role, messages[2].tool_calls[0].function.name, ...) or the completion's byte
// offset and what was expected there. Where the reference crashes or renders Python reprs
// ("None", "[{...}]"), this code throws instead; fields are type-checked on every message,
// also on those the reference happens not to read. Odd input that the reference renders
// (arguments that are not JSON, unknown tool-call ids, empty contents) renders the same.
//
// Thread safety: all functions are pure; call them from any thread.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace moerun::chat {

// kChat: the model answers directly (prompt ends in "<｜Assistant｜></think>").
// kThinking: it reasons first (prompt ends in "<｜Assistant｜><think>").
enum class ThinkingMode { kChat, kThinking };

// "chat" / "thinking"; anything else throws, listing the allowed values.
ThinkingMode parse_thinking_mode(std::string_view name);

struct EncodeOptions {
  ThinkingMode mode = ThinkingMode::kChat;
  // Thinking mode: drop reasoning_content of assistant turns before the last user/developer
  // message, and developer messages before it. Forced off when any message carries tools.
  bool drop_thinking = true;
  // "max" (thinking mode: prepends the fixed "Reasoning Effort: Absolute maximum..."
  // paragraph), "high" (no change) or unset; anything else throws.
  std::optional<std::string> reasoning_effort;
  bool add_default_bos_token = true;  // BOS string first, unless there is a context
  // Messages encoded earlier (an array), or null. They are not rendered, but transitions,
  // tool-result order and drop_thinking look at context + messages together.
  nlohmann::ordered_json context = nullptr;
};

// One piece of a rendered prompt. `special` pieces are the template's own text (role tokens,
// <think> tags, DSML markup, the fixed paragraphs) and are tokenized with special-token
// matching on; the others are caller-supplied text (contents, reasoning, tool names,
// arguments and results, tool schemas, system prompts) and are tokenized with matching off,
// so that a user who types "<｜User｜>" gets text, not the control token. Adjacent pieces of
// the same kind are merged and no piece is empty.
//
// Pieces say only where special-token matching applies; they are not pre-tokenizer
// boundaries: ordinary text on both sides of a piece boundary (`name="` + `get_weather`) is
// one run for the pre-tokenizer, as in the reference, which tokenizes the whole string.
struct PromptPiece {
  std::string text;
  bool special = false;
};

// `messages` must be a JSON array of message objects.
std::vector<PromptPiece> encode_messages_pieces(const nlohmann::ordered_json& messages,
                                                const EncodeOptions& options);

// The concatenation of encode_messages_pieces: byte for byte the reference's prompt string.
std::string encode_messages(const nlohmann::ordered_json& messages, const EncodeOptions& options);

struct ToolCall {
  std::string name;
  std::string arguments;  // JSON object text exactly as the reference rebuilds it
};

struct ParsedMessage {
  std::string content;
  std::string reasoning_content;  // empty in chat mode
  std::vector<ToolCall> tool_calls;

  // {role: "assistant", content, reasoning_content,
  //  tool_calls: [{type: "function", function: {name, arguments}}]}, keys in this order.
  nlohmann::ordered_json to_json() const;
};

// Parses the decoded completion (special tokens kept as text) that follows a prompt made
// with `mode`; it normally ends with "<｜end▁of▁sentence｜>". Throws on any deviation from the
// format, on invalid UTF-8, and when the content or reasoning contains BOS, EOS, <think>,
// </think> or ｜DSML｜.
ParsedMessage parse_completion(std::string_view completion_text, ThinkingMode mode);

// Python json.dumps(value, ensure_ascii=False) of a JSON value: separators ", " and ": ",
// floats in repr form (1e-07, 1000.0, 6.02e+23), non-ASCII characters raw.
std::string python_json_dumps(const nlohmann::ordered_json& value);

// Python json.dumps(json.loads(text), ensure_ascii=False): numbers keep their exact value
// (integers of any size), duplicate keys keep the last value at the first key's place, NaN
// and Infinity are accepted. std::nullopt where json.loads would raise (not JSON, nesting
// past Python's recursion limit, an integer of more than 4300 digits). Throws when the value
// holds a lone UTF-16 surrogate, which has no UTF-8 form.
std::optional<std::string> python_json_redump(std::string_view text);

}  // namespace moerun::chat
