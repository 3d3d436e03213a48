// Chat format: every golden encode case (../shared/golden/chat-encoding/cases.jsonl, written
// by the official encoding_dsv4.py) byte for byte, every golden parse case, the split of the
// prompt into special / text pieces, bad conversations and completions rejected with errors
// that name the place, every truncation of a valid completion handled without a crash, and
// the Python json.dumps emulation against values printed by CPython 3.
#include "common/chat_format.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace moerun::chat {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::ordered_json;

const fs::path kGoldenDir = fs::path(MOERUN_GOLDEN_DIR) / "chat-encoding";

// Special-token strings the template emits (docs/model-dsv4-flash.md §4.1).
const std::vector<std::string> kSpecialTokens = {"<｜begin▁of▁sentence｜>",
                                                 "<｜end▁of▁sentence｜>",
                                                 "<｜User｜>",
                                                 "<｜Assistant｜>",
                                                 "<think>",
                                                 "</think>",
                                                 "｜DSML｜",
                                                 "<｜latest_reminder｜>",
                                                 "<｜action｜>",
                                                 "<｜query｜>",
                                                 "<｜authority｜>",
                                                 "<｜domain｜>",
                                                 "<｜title｜>",
                                                 "<｜read_url｜>"};

std::vector<Json> read_jsonl(const fs::path& path) {
  std::ifstream f(path);
  EXPECT_TRUE(f.good()) << "cannot read " << path;
  std::vector<Json> out;
  std::string line;
  while (std::getline(f, line)) {
    if (!line.empty()) out.push_back(Json::parse(line));  // ordered: key order matters
  }
  return out;
}

// The options of a golden case; throws moerun::Error for an invalid thinking_mode.
EncodeOptions case_options(const Json& c) {
  EncodeOptions opt;
  opt.mode = parse_thinking_mode(c.at("thinking_mode").get<std::string>());
  opt.drop_thinking = c.at("drop_thinking").get<bool>();
  if (!c.at("reasoning_effort").is_null()) {
    opt.reasoning_effort = c["reasoning_effort"].get<std::string>();
  }
  opt.add_default_bos_token = c.at("add_default_bos_token").get<bool>();
  if (c.contains("context")) opt.context = c["context"];
  return opt;
}

// "" when equal, else the first differing byte offset with some context on both sides.
std::string first_difference(const std::string& got, const std::string& want) {
  if (got == want) return "";
  size_t i = 0;
  while (i < got.size() && i < want.size() && got[i] == want[i]) ++i;
  const size_t from = i < 40 ? 0 : i - 40;
  return "first difference at byte " + std::to_string(i) + " (got " + std::to_string(got.size()) +
         " bytes, want " + std::to_string(want.size()) + ")\n  got:  ..." + got.substr(from, 100) +
         "\n  want: ..." + want.substr(from, 100);
}

// The encoder's pieces are classified correctly: every special-token string inside a text
// piece was typed by the caller (appears in the inputs), and no special token straddles two
// pieces.
void check_pieces(const std::vector<PromptPiece>& pieces, const std::string& inputs) {
  std::string prompt;
  std::vector<size_t> piece_end;
  for (size_t i = 0; i < pieces.size(); ++i) {
    EXPECT_FALSE(pieces[i].text.empty()) << "piece " << i << " is empty";
    if (i > 0) {
      EXPECT_NE(pieces[i].special, pieces[i - 1].special) << "pieces " << i << " unmerged";
    }
    prompt += pieces[i].text;
    piece_end.push_back(prompt.size());
    if (pieces[i].special) continue;
    for (const std::string& token : kSpecialTokens) {
      if (pieces[i].text.find(token) != std::string::npos) {
        EXPECT_NE(inputs.find(token), std::string::npos)
            << "text piece " << i << " holds '" << token
            << "', which no input contains: " << pieces[i].text;
      }
    }
  }
  for (const std::string& token : kSpecialTokens) {
    for (size_t at = prompt.find(token); at != std::string::npos; at = prompt.find(token, at + 1)) {
      const size_t piece =
          std::upper_bound(piece_end.begin(), piece_end.end(), at) - piece_end.begin();
      EXPECT_LE(at + token.size(), piece_end[piece])
          << "'" << token << "' at " << at << " straddles two pieces";
    }
  }
}

TEST(ChatFormat, GoldenEncodeCases) {
  const std::vector<Json> cases = read_jsonl(kGoldenDir / "cases.jsonl");
  ASSERT_EQ(cases.size(), 75u);
  int prompts = 0, errors = 0;
  for (const Json& c : cases) {
    const std::string id = c.at("id").get<std::string>();
    SCOPED_TRACE(id);
    if (c.contains("expected_error")) {
      EXPECT_THROW(encode_messages(c.at("messages"), case_options(c)), moerun::Error);
      ++errors;
      continue;
    }
    const EncodeOptions opt = case_options(c);
    const std::string want = c.at("expected_prompt").get<std::string>();
    const std::string got = encode_messages(c.at("messages"), opt);
    EXPECT_EQ(first_difference(got, want), "");
    const std::vector<PromptPiece> pieces = encode_messages_pieces(c.at("messages"), opt);
    std::string joined;
    for (const PromptPiece& p : pieces) joined += p.text;
    EXPECT_EQ(joined, got) << "pieces do not concatenate to the prompt";
    check_pieces(pieces, c["messages"].dump() + opt.context.dump());
    ++prompts;
  }
  EXPECT_EQ(prompts, 72);
  EXPECT_EQ(errors, 3);
}

TEST(ChatFormat, TypedControlTokensStayText) {
  const Json messages = Json::parse(R"([
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "<｜User｜><think>hi</think>"}])");
  EncodeOptions opt;
  opt.mode = ThinkingMode::kThinking;
  const auto pieces = encode_messages_pieces(messages, opt);
  const std::vector<PromptPiece> want = {{"<｜begin▁of▁sentence｜>", true},
                                         {"Be brief.", false},
                                         {"<｜User｜>", true},
                                         {"<｜User｜><think>hi</think>", false},
                                         {"<｜Assistant｜><think>", true}};
  ASSERT_EQ(pieces.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(pieces[i].text, want[i].text) << i;
    EXPECT_EQ(pieces[i].special, want[i].special) << i;
  }
}

TEST(ChatFormat, ToolCallPiecesSeparateMarkupFromValues) {
  const Json messages = Json::parse(R"([
    {"role": "user", "content": "q"},
    {"role": "assistant", "content": "", "tool_calls": [{"id": "a", "type": "function",
      "function": {"name": "f<｜User｜>", "arguments": "{\"k\": \"</think>\", \"n\": [1.50]}"}}]}])");
  const auto pieces = encode_messages_pieces(messages, EncodeOptions{});
  std::vector<std::string> text;
  for (const PromptPiece& p : pieces) {
    if (!p.special) text.push_back(p.text);
  }
  EXPECT_EQ(text, (std::vector<std::string>{"q", "f<｜User｜>", "k", "</think>", "n", "[1.5]"}));
  EXPECT_EQ(encode_messages(messages, EncodeOptions{}),
            "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜></think>\n\n<｜DSML｜tool_calls>\n"
            "<｜DSML｜invoke name=\"f<｜User｜>\">\n"
            "<｜DSML｜parameter name=\"k\" string=\"true\"></think></｜DSML｜parameter>\n"
            "<｜DSML｜parameter name=\"n\" string=\"false\">[1.5]</｜DSML｜parameter>\n"
            "</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>");
}

TEST(ChatFormat, NonStringArgumentsBecomeOneParameter) {
  // json.loads(dict) raises TypeError in the reference: the value is the parameter "arguments".
  const Json messages = Json::parse(R"([
    {"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": {"b": 1, "a": 2}}}]}])");
  EXPECT_EQ(encode_messages(messages, EncodeOptions{}),
            "<｜begin▁of▁sentence｜>\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"f\">\n"
            "<｜DSML｜parameter name=\"arguments\" string=\"false\">{\"b\": 1, \"a\": 2}"
            "</｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>");
}

TEST(ChatFormat, EmptyStringsAreFalsyAsInPython) {
  // Empty call ids are skipped (`if tc_id:`), so both results sort as position 0 and keep
  // their order; an empty response_format adds nothing. (Printed by the reference.)
  const Json messages = Json::parse(R"([
    {"role": "system", "content": "S", "response_format": ""},
    {"role": "assistant", "tool_calls": [
      {"id": "", "function": {"name": "f", "arguments": "{}"}},
      {"id": "c3", "function": {"name": "g", "arguments": "{}"}},
      {"id": "", "function": {"name": "f", "arguments": "{}"}}]},
    {"role": "tool", "content": "A", "tool_call_id": ""},
    {"role": "tool", "content": "B", "tool_call_id": 7}])");
  EXPECT_EQ(encode_messages(messages, EncodeOptions{}),
            "<｜begin▁of▁sentence｜>S\n\n<｜DSML｜tool_calls>\n"
            "<｜DSML｜invoke name=\"f\">\n\n</｜DSML｜invoke>\n"
            "<｜DSML｜invoke name=\"g\">\n\n</｜DSML｜invoke>\n"
            "<｜DSML｜invoke name=\"f\">\n\n</｜DSML｜invoke>\n"
            "</｜DSML｜tool_calls><｜end▁of▁sentence｜>"
            "<｜User｜><tool_result>A</tool_result>\n\n<tool_result>B</tool_result>"
            "<｜Assistant｜></think>");
}

std::string encode_error(const std::string& messages_json, EncodeOptions opt = {}) {
  try {
    encode_messages(Json::parse(messages_json), opt);
  } catch (const moerun::Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(ChatFormat, BadConversationsNameTheField) {
  struct Bad {
    const char* messages;
    const char* expect;  // a part of the message
  };
  const Bad bad[] = {
      {R"({"role": "user", "content": "x"})", "messages: expected an array"},
      {R"([{"role": "user", "content": "x"}, {"role": "robot", "content": "y"}])",
       "messages[1].role: unknown role 'robot' (allowed: system, user, developer, assistant, "
       "tool, latest_reminder)"},
      {R"([{"content": "x"}])", "messages[0].role: missing"},
      {R"([{"role": 7}])", "messages[0].role: expected a string"},
      {R"(["hello"])", "messages[0]: expected a message object"},
      {R"([{"role": "user", "content": 42}])", "messages[0].content: expected a string"},
      {R"([{"role": "user", "content": null}])", "messages[0].content: expected a string"},
      {R"([{"role": "system", "content": [{"type": "text", "text": "x"}]}])",
       "messages[0].content: expected a string or null for role 'system'"},
      {R"([{"role": "assistant", "content": {"a": 1}}])",
       "messages[0].content: expected a string or null"},
      {R"([{"role": "assistant", "reasoning_content": 1}])",
       "messages[0].reasoning_content: expected a string or null"},
      {R"([{"role": "tool", "content": 3}])", "messages[0].content: expected a string or an array"},
      {R"([{"role": "tool", "content": [{"type": "text", "text": 5}]}])",
       "messages[0].content[0].text: expected a string"},
      {R"([{"role": "latest_reminder"}])", "messages[0].content: expected a string"},
      {R"([{"role": "developer", "content": ""}])",
       "messages[0].content: a developer message needs non-empty content"},
      {R"([{"role": "assistant", "tool_calls": {"function": {"name": "f"}}}])",
       "messages[0].tool_calls: expected an array"},
      {R"([{"role": "assistant", "tool_calls": [{"id": "a"}]}])",
       "messages[0].tool_calls[0].function: expected an object"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}])",
       "messages[0].tool_calls[0].function.name: missing"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"name": 3, "arguments": "{}"}}]}])",
       "messages[0].tool_calls[0].function.name: expected a string"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f"}}]}])",
       "messages[0].tool_calls[0].function.arguments: missing"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}])",
       "messages[0].tool_calls[0].function.arguments: the arguments are JSON but not an object"},
      {R"([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{\"a\": \"\\ud800\"}"}}]}])",
       "lone UTF-16 surrogate"},
      {R"([{"role": "system", "content": "s", "tools": {"a": 1}}])",
       "messages[0].tools: expected an array"},
      {R"([{"role": "system", "content": "s", "tools": [{"name": "f"}]}])",
       "messages[0].tools[0]: expected {\"type\": \"function\""},
      {R"([{"role": "user", "content": "x", "task": "summarize"}])",
       "messages[0].task: invalid task \"summarize\""},
      {R"([{"role": "tool", "tool_call_id": ["a"], "content": "r"}])",
       "messages[0].tool_call_id: expected a string id"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.messages);
    const std::string what = encode_error(b.messages);
    EXPECT_NE(what.find(b.expect), std::string::npos) << what;
  }

  EncodeOptions opt;
  opt.mode = ThinkingMode::kThinking;
  opt.reasoning_effort = "low";
  EXPECT_NE(encode_error(R"([{"role": "user", "content": "x"}])", opt)
                .find("reasoning_effort: invalid value 'low' (allowed: max, high"),
            std::string::npos);
  opt = {};
  opt.context = Json::parse(R"({"role": "user"})");
  EXPECT_NE(encode_error("[]", opt).find("context: expected an array"), std::string::npos);
  opt.context = Json::parse(R"([{"role": "user", "content": "x"}, {"role": "robot"}])");
  EXPECT_NE(encode_error("[]", opt).find("context[1].role: unknown role 'robot'"),
            std::string::npos);

  try {
    parse_thinking_mode("fast");
    ADD_FAILURE() << "no error for thinking_mode 'fast'";
  } catch (const moerun::Error& e) {
    EXPECT_NE(std::string(e.what()).find("invalid value 'fast' (allowed: chat, thinking)"),
              std::string::npos)
        << e.what();
  }
  EXPECT_EQ(parse_thinking_mode("chat"), ThinkingMode::kChat);
  EXPECT_EQ(parse_thinking_mode("thinking"), ThinkingMode::kThinking);
}

TEST(ChatFormat, GoldenParseCases) {
  const std::vector<Json> cases = read_jsonl(kGoldenDir / "parse_cases.jsonl");
  ASSERT_EQ(cases.size(), 21u);
  int parsed = 0, rejected = 0;
  for (const Json& c : cases) {
    SCOPED_TRACE(c.at("id").get<std::string>());
    const ThinkingMode mode = parse_thinking_mode(c.at("thinking_mode").get<std::string>());
    const std::string text = c.at("completion").get<std::string>();
    if (c.contains("expected_error")) {
      EXPECT_THROW(parse_completion(text, mode), moerun::Error);
      ++rejected;
      continue;
    }
    EXPECT_EQ(parse_completion(text, mode).to_json(), c.at("expected_message"));
    ++parsed;
  }
  EXPECT_EQ(parsed, 15);
  EXPECT_EQ(rejected, 6);
}

std::string parse_error(const std::string& text, ThinkingMode mode = ThinkingMode::kChat) {
  try {
    parse_completion(text, mode);
  } catch (const moerun::Error& e) {
    return e.what();
  }
  return "<no error>";
}

TEST(ChatFormat, MalformedCompletionsSayWhatWasExpectedWhere) {
  const std::string head = "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"get_weather\">\n";
  const std::string param =
      "<｜DSML｜parameter name=\"city\" string=\"true\">Oslo</｜DSML｜parameter>";
  struct Bad {
    std::string text;
    ThinkingMode mode;
    std::string expect;
  };
  const Bad bad[] = {
      {"no end", ThinkingMode::kThinking,
       "completion offset 6: expected '</think>' to end the reasoning"},
      {"r\n\n<｜DSML｜tool_calls>", ThinkingMode::kThinking, "found '\\n\\n<｜DSML｜tool_calls'"},
      {"cut off", ThinkingMode::kChat,
       "completion offset 7: expected '<｜end▁of▁sentence｜>' after the content"},
      {head + param + "\n<｜DSML｜tool_calls><｜end▁of▁sentence｜>", ThinkingMode::kChat,
       "after parameter 'city' of invoke 'get_weather'"},
      {head + "<｜DSML｜parameter name=\"city\">Oslo</｜DSML｜parameter>\n</｜DSML｜invoke>",
       ThinkingMode::kChat, "expected ' name=\"KEY\" string=\"true|false\">VALUE"},
      {"\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke nam=\"x\">\n</｜DSML｜invoke>",
       ThinkingMode::kChat, "expected ' name=\"NAME\">\\n' after '<｜DSML｜invoke'"},
      {"\n\n<｜DSML｜tool_calls>x", ThinkingMode::kChat, "completion offset 23: expected '>\\n'"},
      {"a<｜begin▁of▁sentence｜>b<｜end▁of▁sentence｜>", ThinkingMode::kChat,
       "completion offset 1: unexpected special token '<｜begin▁of▁sentence｜>' in the content"},
      {"r<think></think>a<｜end▁of▁sentence｜>", ThinkingMode::kThinking,
       "unexpected special token '<think>' in the reasoning"},
      {"a｜DSML｜b<｜end▁of▁sentence｜>", ThinkingMode::kChat, "'｜DSML｜' in the content"},
      {"ok\xff<｜end▁of▁sentence｜>", ThinkingMode::kChat, "completion offset 2: invalid UTF-8"},
      {"x<｜end▁of▁sentence｜>y", ThinkingMode::kChat, "expected the end of the text"},
  };
  for (const Bad& b : bad) {
    SCOPED_TRACE(b.text);
    const std::string what = parse_error(b.text, b.mode);
    EXPECT_NE(what.find(b.expect), std::string::npos) << what;
  }
}

TEST(ChatFormat, ParserFollowsPythonRegexSemantics) {
  // `$` matches before a final "\n": the empty invoke body, and a parameter value ending
  // in "<\n" right before "/｜DSML｜parameter"; \s in the name regex is Unicode whitespace.
  const ParsedMessage m = parse_completion(
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke\u3000name=\"a\">\n\n</｜DSML｜invoke>\n"
      "<｜DSML｜invoke name=\"b\">\n<｜DSML｜parameter name=\"v\" string=\"false\">1<\n"
      "/｜DSML｜parameter>\n</｜DSML｜invoke>\n</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
      ThinkingMode::kChat);
  ASSERT_EQ(m.tool_calls.size(), 2u);
  EXPECT_EQ(m.tool_calls[0].name, "a");
  EXPECT_EQ(m.tool_calls[0].arguments, "{}");
  EXPECT_EQ(m.tool_calls[1].name, "b");
  EXPECT_EQ(m.tool_calls[1].arguments, "{\"v\": 1}");
  // The name group is lazy: it ends at the first ' string="..."'.
  const ParsedMessage n = parse_completion(
      "\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name=\"c\">\n<｜DSML｜parameter name=\"k\" "
      "string=\"true\">x\" string=\"false\">y</｜DSML｜parameter>\n</｜DSML｜invoke>\n"
      "</｜DSML｜tool_calls><｜end▁of▁sentence｜>",
      ThinkingMode::kChat);
  ASSERT_EQ(n.tool_calls.size(), 1u);
  EXPECT_EQ(n.tool_calls[0].arguments, "{\"k\": \"x\\\" string=\\\"false\\\">y\"}");
}

TEST(ChatFormat, EveryTruncationParsesOrThrows) {
  const std::vector<Json> cases = read_jsonl(kGoldenDir / "parse_cases.jsonl");
  size_t cuts = 0, parsed = 0;
  for (const Json& c : cases) {
    if (c.contains("expected_error")) continue;
    const ThinkingMode mode = parse_thinking_mode(c.at("thinking_mode").get<std::string>());
    const std::string text = c.at("completion").get<std::string>();
    for (size_t cut = 0; cut <= text.size(); ++cut) {
      ++cuts;
      try {
        parse_completion(std::string_view(text).substr(0, cut), mode);
        ++parsed;
      } catch (const moerun::Error&) {
      } catch (const std::exception& e) {
        ADD_FAILURE() << c["id"] << " cut at " << cut << ": not a moerun::Error: " << e.what();
      }
    }
  }
  EXPECT_GT(cuts, 5000u);
  // Whole texts parse; a few cuts inside a tool-call block do too, as in the reference.
  EXPECT_GE(parsed, 15u);
}

TEST(ChatFormat, RoundTripOfEncodedToolCalls) {
  // The assistant turn as encoded parses back to the call, arguments in json.dumps form.
  const Json messages = Json::parse(R"([{"role": "user", "content": "q"},
    {"role": "assistant", "reasoning_content": "r", "content": "c", "tool_calls": [
      {"function": {"name": "f", "arguments": "{\"s\": \"a\\nb\", \"x\": 1.0E2, \"l\": [true]}"}}]}])");
  EncodeOptions opt;
  opt.mode = ThinkingMode::kThinking;
  const std::string prompt = encode_messages(messages, opt);
  const std::string prefix = "<｜begin▁of▁sentence｜><｜User｜>q<｜Assistant｜><think>";
  ASSERT_EQ(prompt.substr(0, prefix.size()), prefix);
  const ParsedMessage m = parse_completion(prompt.substr(prefix.size()), ThinkingMode::kThinking);
  EXPECT_EQ(m.reasoning_content, "r");
  EXPECT_EQ(m.content, "c");
  ASSERT_EQ(m.tool_calls.size(), 1u);
  EXPECT_EQ(m.tool_calls[0].arguments, "{\"s\": \"a\\nb\", \"x\": 100.0, \"l\": [true]}");
}

// Expected strings printed by CPython 3: json.dumps(json.loads(text), ensure_ascii=False).
TEST(ChatFormat, PythonJsonRedump) {
  const std::pair<const char*, const char*> cases[] = {
      {"0.1", "0.1"},
      {"1e16", "1e+16"},
      {"1.0e16", "1e+16"},
      {"1e15", "1000000000000000.0"},
      {"9999999999999998.0", "9999999999999998.0"},
      {"1e-05", "1e-05"},
      {"1e-4", "0.0001"},
      {"0.00001234", "1.234e-05"},
      {"2e-7", "2e-07"},
      {"123456789.0", "123456789.0"},
      {"100.0", "100.0"},
      {"1.5e300", "1.5e+300"},
      {"1e22", "1e+22"},
      {"0.30000000000000004", "0.30000000000000004"},
      {"1.7976931348623157e308", "1.7976931348623157e+308"},
      {"4.9406564584124654e-324", "5e-324"},
      {"2.2250738585072014e-308", "2.2250738585072014e-308"},
      {"1E400", "Infinity"},
      {"-1e400", "-Infinity"},
      {"1e-400", "0.0"},
      {"-1e-400", "-0.0"},
      {"1234567e303", "Infinity"},
      {"0.000001e-320", "0.0"},
      {"0.0e999999999999999999999", "0.0"},
      {"1e99999999999999999999", "Infinity"},
      {"-0.001e-99999999999999999999", "-0.0"},
      {"17976931348623159e292", "Infinity"},
      {"0.5e-323", "5e-324"},
      {"2.4703282292062328e-324", "5e-324"},
      {"2.4703282292062327e-324", "0.0"},
      {"NaN", "NaN"},
      {"-Infinity", "-Infinity"},
      {"-0", "0"},
      {"-0.0", "-0.0"},
      {"9007199254740993", "9007199254740993"},
      {"123456789012345678901234567890", "123456789012345678901234567890"},
      {"-123456789012345678901234567890", "-123456789012345678901234567890"},
      {" \t\r\n[1 , 2]\n", "[1, 2]"},
      {R"("caf\u00e9 \ud83d\ude00 日本")", "\"café 😀 日本\""},
      {R"("\u0001\u001f\b\f\n\r\t\"\\\/)"
       "\x7f\"",
       "\"\\u0001\\u001f\\b\\f\\n\\r\\t\\\"\\\\/\x7f\""},
      {R"({"a":[1,{"b":null}],"c":{},"d":[]})", R"({"a": [1, {"b": null}], "c": {}, "d": []})"},
      {R"({"a": 1, "b": 2, "a": 3})", R"({"a": 3, "b": 2})"},
      {R"({"z": true, "y": false})", R"({"z": true, "y": false})"},
  };
  for (const auto& [in, want] : cases) {
    const std::optional<std::string> got = python_json_redump(in);
    ASSERT_TRUE(got.has_value()) << in;
    EXPECT_EQ(*got, want) << in;
  }
  const char* not_json[] = {
      "",         "{",   "[1,]",       "01",       "1.",    "1e",       "\"\\x\"",
      "\"a\nb\"", "tru", "{\"a\" 1}",  "NaN1",     "[1] x", "{'a': 1}", "\xef\xbb\xbf{}",
      "+1",       ".5",  "{\"a\":1,}", "\"\\u12\""};
  for (const char* in : not_json) {
    EXPECT_FALSE(python_json_redump(in).has_value()) << in;
  }
  // Nesting and integer length limits of CPython.
  EXPECT_TRUE(python_json_redump(std::string(500, '[') + std::string(500, ']')).has_value());
  EXPECT_FALSE(python_json_redump(std::string(2000, '[') + std::string(2000, ']')).has_value());
  EXPECT_TRUE(python_json_redump(std::string(4300, '7')).has_value());
  EXPECT_FALSE(python_json_redump(std::string(4301, '7')).has_value());
  EXPECT_THROW(python_json_redump(R"(["\udc00"])"), moerun::Error);
}

TEST(ChatFormat, PythonJsonDumps) {
  const Json v = Json::parse(
      R"({"b": 1, "a": [1.0, 2.5, 1e100, -0.0, 1e-7, true, null, "x\u0000y"], "u": 18446744073709551615,
          "i": -9223372036854775808, "o": {"k": "日本 ☕"}})");
  EXPECT_EQ(
      python_json_dumps(v),
      "{\"b\": 1, \"a\": [1.0, 2.5, 1e+100, -0.0, 1e-07, true, null, \"x\\u0000y\"], "
      "\"u\": 18446744073709551615, \"i\": -9223372036854775808, \"o\": {\"k\": \"日本 ☕\"}}");
  EXPECT_EQ(python_json_dumps(Json::array()), "[]");
  EXPECT_EQ(python_json_dumps(Json::object()), "{}");
  // Duplicate keys in the request: last value at the first key's place, as a Python dict.
  EXPECT_EQ(python_json_dumps(Json::parse(R"({"a": 1, "b": 2, "a": 3})")), R"({"a": 3, "b": 2})");
}

}  // namespace
}  // namespace moerun::chat
