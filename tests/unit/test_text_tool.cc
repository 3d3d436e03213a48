// moerun-text end to end: every golden chat-encoding case, parse case and tokenizer case
// through the command-line tool, bad lines answered with errors without stopping, and chat
// prompts tokenized with message contents kept as text.
#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

namespace {

namespace fs = std::filesystem;
// ordered_json: the inputs keep their key order (tool schemas are rendered in request order).
using json = nlohmann::ordered_json;
const fs::path kGolden = MOERUN_GOLDEN_DIR;
const fs::path kText = fs::path(MOERUN_BINARY_DIR) / "tools/text/moerun-text";

std::vector<json> read_jsonl(const fs::path& path) {
  std::ifstream f(path);
  std::vector<json> out;
  std::string line;
  while (std::getline(f, line))
    if (!line.empty()) out.push_back(json::parse(line));
  return out;
}

// Runs moerun-text with `input` on stdin; returns its stdout lines and exit status.
std::pair<std::vector<std::string>, int> run_text(const std::string& args,
                                                  const std::string& input) {
  const fs::path in = fs::temp_directory_path() / ("moerun-text-in-" + std::to_string(::getpid()));
  {
    std::ofstream f(in, std::ios::binary);
    f << input;
  }
  FILE* p = ::popen((kText.string() + " " + args + " < " + in.string()).c_str(), "r");
  std::string out;
  char buf[65536];
  size_t n;
  while (p && (n = std::fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  const int st = p ? ::pclose(p) : -1;
  fs::remove(in);
  std::vector<std::string> lines;
  std::istringstream s(out);
  std::string line;
  while (std::getline(s, line)) lines.push_back(line);
  return {lines, WIFEXITED(st) ? WEXITSTATUS(st) : -1};
}

std::string as_input(const std::vector<json>& lines) {
  std::string s;
  for (const json& j : lines) s += j.dump() + "\n";
  return s;
}

// Runs every case through `moerun-text args` and calls check(case, output) per line, after
// checking the exit status, the line count and that each output keeps its input's id.
void for_each_output(const std::string& args, const std::vector<json>& cases,
                     const std::function<void(const json&, const json&)>& check) {
  const auto [lines, status] = run_text(args, as_input(cases));
  ASSERT_EQ(status, 0);
  ASSERT_EQ(lines.size(), cases.size());
  for (size_t i = 0; i < cases.size(); ++i) {
    const json out = json::parse(lines[i]);
    SCOPED_TRACE(cases[i].value("id", json()).dump() + " → " + lines[i]);
    EXPECT_EQ(out["id"], cases[i].value("id", json()));
    check(cases[i], out);
  }
}

TEST(TextTool, ChatCasesReproduceTheReference) {
  const auto cases = read_jsonl(kGolden / "chat-encoding/cases.jsonl");
  ASSERT_EQ(cases.size(), 75u);
  int prompts = 0, errors = 0;
  for_each_output("chat", cases, [&](const json& c, const json& out) {
    if (c.contains("expected_error")) {
      EXPECT_TRUE(out.contains("error"));
      ++errors;
    } else {
      EXPECT_EQ(out["prompt"], c["expected_prompt"]);
      ++prompts;
    }
  });
  EXPECT_EQ(prompts, 72);
  EXPECT_EQ(errors, 3);
}

TEST(TextTool, ParseCasesReproduceTheReference) {
  const auto cases = read_jsonl(kGolden / "chat-encoding/parse_cases.jsonl");
  ASSERT_EQ(cases.size(), 21u);
  for_each_output("parse", cases, [](const json& c, const json& out) {
    if (c.contains("expected_error")) {
      EXPECT_TRUE(out.contains("error"));
    } else {
      EXPECT_EQ(out["message"], c["expected_message"]);
    }
  });
}

TEST(TextTool, EncodeCasesReproduceHuggingFace) {
  const auto cases = read_jsonl(kGolden / "tokenizer-small/cases.jsonl");
  for_each_output("encode --tokenizer " + (kGolden / "tokenizer-small/tokenizer.json").string(),
                  cases, [](const json& c, const json& out) {
                    EXPECT_EQ(out["ids"], c["ids"]);
                    EXPECT_EQ(out["decoded"], c["decoded"]);
                  });
}

TEST(TextTool, BadLinesGetErrorsAndTheToolGoesOn) {
  const std::string input =
      "this is not json\n"
      "[1, 2]\n"
      "{\"id\": \"no-text\"}\n"
      "{\"id\": \"wrong-type\", \"text\": 3}\n"
      "{\"id\": \"bad-utf8\", \"text\": \"a\\udc80b\"}\n"
      "{\"id\": \"ok\", \"text\": \"Hello world\"}\n";
  const auto [lines, status] = run_text(
      "encode --tokenizer " + (kGolden / "tokenizer-small/tokenizer.json").string(), input);
  ASSERT_EQ(status, 0);
  ASSERT_EQ(lines.size(), 6u);
  for (size_t i = 0; i < 5; ++i) EXPECT_TRUE(json::parse(lines[i]).contains("error")) << lines[i];
  EXPECT_EQ(json::parse(lines[2])["id"], "no-text");
  EXPECT_EQ(json::parse(lines[5])["ids"], json::parse("[42, 71, 603, 81, 277, 285, 602]"));

  const auto [chat_lines, chat_status] =
      run_text("chat",
               "{\"id\": 1, \"messages\": [{\"role\": \"robot\", \"content\": \"x\"}]}\n"
               "{\"id\": 2, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}],"
               " \"thinking_mode\": \"sideways\"}\n"
               "{\"id\": 3, \"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n");
  ASSERT_EQ(chat_status, 0);
  ASSERT_EQ(chat_lines.size(), 3u);
  EXPECT_NE(json::parse(chat_lines[0])["error"].get<std::string>().find("robot"),
            std::string::npos);
  EXPECT_NE(json::parse(chat_lines[1])["error"].get<std::string>().find("sideways"),
            std::string::npos);
  EXPECT_EQ(json::parse(chat_lines[2])["prompt"],
            "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜></think>");

  const auto [usage_lines, usage_status] = run_text("encode --tokenizer /nonexistent.json", "");
  EXPECT_EQ(usage_status, 2);
}

// Prompts tokenized from the chat pieces equal Hugging Face's ids for the whole prompt
// whenever no message content spells a control token; where one does, it stays text.
TEST(TextTool, ChatIdsKeepTypedControlTokensAsText) {
  const auto cases = read_jsonl(kGolden / "chat-encoding/cases.jsonl");
  std::map<std::string, json> hf;
  for (const json& c : read_jsonl(kGolden / "tokenizer-small/cases.jsonl")) hf[c["id"]] = c;
  const fs::path tok = kGolden / "tokenizer-small/tokenizer.json";
  const auto [lines, status] = run_text("chat --tokenizer " + tok.string(), as_input(cases));
  ASSERT_EQ(status, 0);
  ASSERT_EQ(lines.size(), cases.size());
  int compared = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    if (cases[i].contains("expected_error")) continue;
    const std::string id = cases[i]["id"];
    const std::string messages = cases[i]["messages"].dump();
    bool literal = false;
    for (const char* t : {"<｜", "<think>", "</think>", "｜DSML｜", "<|"})
      literal = literal || messages.find(t) != std::string::npos;
    const auto it = hf.find("chat-" + id);
    if (literal || it == hf.end()) continue;
    EXPECT_EQ(json::parse(lines[i])["ids"], it->second["ids"]) << id;
    ++compared;
  }
  EXPECT_GE(compared, 50);

  // The reference behaviour on request: every golden prompt as Hugging Face tokenizes it whole.
  const auto [ref_lines, ref_status] =
      run_text("chat --match-special-in-content --tokenizer " + tok.string(), as_input(cases));
  ASSERT_EQ(ref_status, 0);
  int literal_compared = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto it = hf.find("chat-" + cases[i]["id"].get<std::string>());
    if (cases[i].contains("expected_error") || it == hf.end()) continue;
    EXPECT_EQ(json::parse(ref_lines[i])["ids"], it->second["ids"]) << cases[i]["id"];
    literal_compared += cases[i]["messages"].dump().find("<｜") != std::string::npos;
  }
  EXPECT_GE(literal_compared, 1);  // includes prompts whose contents spell control tokens

  const std::string typed = "<｜User｜>hi</think>";
  const auto [t_lines, t_status] = run_text(
      "chat --tokenizer " + tok.string(),
      json({{"id", "typed"}, {"messages", {{{"role", "user"}, {"content", typed}}}}}).dump() +
          "\n");
  ASSERT_EQ(t_status, 0);
  const auto ids = json::parse(t_lines.at(0))["ids"].get<std::vector<int>>();
  // The template contributes BOS, one <｜User｜>, <｜Assistant｜> and </think>; the typed ones
  // are text.
  const auto count = [&](int id) { return std::count(ids.begin(), ids.end(), id); };
  const auto encoded =
      run_text("encode --tokenizer " + tok.string(), "{\"text\": \"<｜User｜></think>\"}\n");
  const auto special = json::parse(encoded.first.at(0))["ids"].get<std::vector<int>>();
  ASSERT_EQ(special.size(), 2u);
  EXPECT_EQ(count(special[0]), 1);  // <｜User｜>
  EXPECT_EQ(count(special[1]), 1);  // </think>
}

}  // namespace
