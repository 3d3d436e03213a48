// Tests for the byte-level BPE tokenizer (common/tokenizer.h).
//
// Checked against data the tokenizer did not produce:
//  - ../shared/golden/tokenizer-small/cases.jsonl: ids and decodes from Hugging Face's Rust
//    `tokenizers` (all 266 cases, also decoded one token at a time by StreamDecoder);
//  - tests/unit/data/tokenizer_small_variants.json: ids and decodes from the same library for
//    variants of that file (lstrip/rstrip added tokens, ByteLevel use_regex, String splits)
//    and for byte sequences that are not UTF-8 (lossy decoding);
//  - a naive BPE written here (merge the lowest-ranked pair, leftmost first, until none is
//    left) for the kAsText mode, on pre-tokens split by hand;
//  - a UTF-8 validator written here for the streaming pieces.
#include "common/tokenizer.h"

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <functional>
#include <map>
#include <random>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "tests/unit/test_util.h"

namespace moerun {
namespace {

using nlohmann::json;
using testing_util::error_message;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in.good()) << "cannot open " << path;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

const std::string& fixture_path() {
  static const std::string path =
      std::string(MOERUN_GOLDEN_DIR) + "/tokenizer-small/tokenizer.json";
  return path;
}

const json& fixture_json() {
  static const json j = json::parse(read_file(fixture_path()));
  return j;
}

const Tokenizer& small() {
  static const Tokenizer t = Tokenizer::load(fixture_path());
  return t;
}

struct Case {
  std::string id;
  std::string category;
  std::string text;
  std::vector<int32_t> ids;
  std::string decoded;
  std::string decoded_skip_special;
};

const std::vector<Case>& cases() {
  static const std::vector<Case> all = [] {
    std::vector<Case> out;
    std::ifstream in(std::string(MOERUN_GOLDEN_DIR) + "/tokenizer-small/cases.jsonl");
    std::string line;
    while (std::getline(in, line)) {
      if (line.empty()) continue;
      const json j = json::parse(line);
      out.push_back({j.at("id"), j.at("category"), j.at("text"), j.at("ids"), j.at("decoded"),
                     j.at("decoded_skip_special")});
    }
    return out;
  }();
  return all;
}

// Independent UTF-8 check (code-point decoding, then range checks): offset of the first
// problem or -1.
int64_t first_invalid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b0 = static_cast<uint8_t>(s[i]);
    int len = 0;
    uint32_t cp = 0;
    if (b0 < 0x80) {
      len = 1;
      cp = b0;
    } else if ((b0 & 0xE0) == 0xC0) {
      len = 2;
      cp = b0 & 0x1F;
    } else if ((b0 & 0xF0) == 0xE0) {
      len = 3;
      cp = b0 & 0x0F;
    } else if ((b0 & 0xF8) == 0xF0) {
      len = 4;
      cp = b0 & 0x07;
    } else {
      return static_cast<int64_t>(i);
    }
    if (i + len > s.size()) return static_cast<int64_t>(i);
    for (int k = 1; k < len; ++k) {
      const auto b = static_cast<uint8_t>(s[i + k]);
      if ((b & 0xC0) != 0x80) return static_cast<int64_t>(i);
      cp = (cp << 6) | (b & 0x3F);
    }
    static constexpr uint32_t kMinForLength[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < kMinForLength[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
      return static_cast<int64_t>(i);
    }
    i += len;
  }
  return -1;
}

// Decodes ids one at a time; checks every piece is valid UTF-8 and returns the concatenation.
std::string stream_decode(const Tokenizer& t, const std::vector<int32_t>& ids, bool skip_special) {
  StreamDecoder d(t, skip_special);
  std::string all;
  for (size_t i = 0; i < ids.size(); ++i) {
    const std::string piece = d.push(ids[i]);
    EXPECT_EQ(first_invalid_utf8(piece), -1) << "piece after id #" << i << " (" << ids[i] << ")";
    all += piece;
  }
  const std::string rest = d.finish();
  EXPECT_EQ(first_invalid_utf8(rest), -1) << "finish()";
  return all + rest;
}

std::string ids_str(const std::vector<int32_t>& ids) {
  return fmt::format("{}", fmt::join(ids, ","));
}

// ---- the golden cases -------------------------------------------------------------------

TEST(Tokenizer, LoadsFixture) {
  const Tokenizer& t = small();
  const json& j = fixture_json();
  int64_t max_id = -1;
  for (const auto& [token, id] : j["model"]["vocab"].items()) {
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
    ASSERT_EQ(t.token_to_id(token), id.get<int32_t>()) << token;
    ASSERT_EQ(t.id_to_token(id.get<int32_t>()), token);
  }
  for (const json& a : j["added_tokens"]) {
    const auto id = a["id"].get<int32_t>();
    max_id = std::max<int64_t>(max_id, id);
    EXPECT_EQ(t.token_to_id(a["content"].get<std::string>()), id);
    EXPECT_EQ(t.id_to_token(id), a["content"].get<std::string>());
    EXPECT_EQ(t.is_special(id), a["special"].get<bool>()) << a["content"];
  }
  EXPECT_EQ(t.vocab_size(), max_id + 1);
  EXPECT_FALSE(t.token_to_id("<｜not▁a▁token｜>").has_value());
  EXPECT_FALSE(t.is_special(-1));
  EXPECT_FALSE(t.is_special(static_cast<int32_t>(t.vocab_size())));
}

TEST(Tokenizer, AllGoldenCases) {
  ASSERT_EQ(cases().size(), 266u);
  const Tokenizer& t = small();
  int failures = 0;
  for (const Case& c : cases()) {
    const std::vector<int32_t> ids = t.encode(c.text);
    EXPECT_EQ(ids, c.ids) << c.id << " (" << c.category << "): got " << ids_str(ids)
                          << "\n  expected " << ids_str(c.ids);
    EXPECT_EQ(t.decode(c.ids), c.decoded) << c.id;
    EXPECT_EQ(t.decode(c.ids, /*skip_special=*/true), c.decoded_skip_special) << c.id;
    if (ids != c.ids && ++failures > 5) break;
  }
}

TEST(Tokenizer, StreamingMatchesFullDecode) {
  const Tokenizer& t = small();
  for (const Case& c : cases()) {
    EXPECT_EQ(stream_decode(t, c.ids, false), c.decoded) << c.id;
    EXPECT_EQ(stream_decode(t, c.ids, true), c.decoded_skip_special) << c.id;
  }
}

TEST(Tokenizer, StreamingHoldsBackSplitCharacters) {
  // "😀" is F0 9F 98 80: byte tokens one at a time emit nothing until the last byte.
  const Tokenizer& t = small();
  const std::vector<int32_t> ids = t.encode("a😀");
  // The GPT-2 byte symbols of a, F0, 9F, 98, 80, looked up by spelling.
  const char* kSymbols[] = {"a", "ð", "Ł", "ĺ", "Ģ"};
  std::vector<int32_t> byte_ids;
  for (const char* s : kSymbols) byte_ids.push_back(t.token_to_id(s).value());
  StreamDecoder d(t);
  EXPECT_EQ(d.push(byte_ids[0]), "a");
  EXPECT_EQ(d.push(byte_ids[1]), "");
  EXPECT_EQ(d.push(byte_ids[2]), "");
  EXPECT_EQ(d.push(byte_ids[3]), "");
  EXPECT_EQ(d.push(byte_ids[4]), "😀");
  EXPECT_EQ(d.finish(), "");
  EXPECT_EQ(t.decode(byte_ids), "a😀");
  EXPECT_EQ(t.decode(ids), "a😀");
  // An incomplete character at the end becomes one U+FFFD.
  StreamDecoder d2(t);
  EXPECT_EQ(d2.push(byte_ids[1]), "");
  EXPECT_EQ(d2.push(byte_ids[2]), "");
  EXPECT_EQ(d2.finish(), "\xEF\xBF\xBD");
  // A special token after a partial character: the partial bytes are invalid by then.
  StreamDecoder d3(t);
  const int32_t eos = t.token_to_id("<｜end▁of▁sentence｜>").value();
  EXPECT_EQ(d3.push(byte_ids[1]), "");
  EXPECT_EQ(d3.push(eos), "\xEF\xBF\xBD<｜end▁of▁sentence｜>");
  // ... unless it is skipped, when the character continues across it.
  StreamDecoder d4(t, /*skip_special=*/true);
  EXPECT_EQ(d4.push(byte_ids[1]), "");
  EXPECT_EQ(d4.push(eos), "");
  EXPECT_EQ(d4.push(byte_ids[2]), "");
  EXPECT_EQ(d4.push(byte_ids[3]), "");
  EXPECT_EQ(d4.push(byte_ids[4]), "😀");
  EXPECT_EQ(
      t.decode(std::vector<int32_t>{byte_ids[1], eos, byte_ids[2], byte_ids[3], byte_ids[4]}, true),
      "😀");
}

// Random id sequences (byte tokens, merges, added tokens): streaming equals decode(), and
// both are valid UTF-8 whatever the bytes.
TEST(Tokenizer, StreamingRandomIds) {
  const Tokenizer& t = small();
  std::mt19937 rng(1234);
  std::uniform_int_distribution<int32_t> any_id(0, static_cast<int32_t>(t.vocab_size()) - 1);
  for (int round = 0; round < 2000; ++round) {
    std::vector<int32_t> ids(rng() % 12);
    for (int32_t& id : ids) id = any_id(rng);
    for (const bool skip : {false, true}) {
      const std::string full = t.decode(ids, skip);
      EXPECT_EQ(first_invalid_utf8(full), -1) << ids_str(ids);
      EXPECT_EQ(stream_decode(t, ids, skip), full) << ids_str(ids);
    }
  }
}

// ---- kAsText ------------------------------------------------------------------------------

// Naive BPE on raw bytes: repeatedly merge the lowest-ranked adjacent pair (leftmost first).
std::vector<int32_t> naive_bpe(std::string_view word) {
  static const auto tables = [] {
    const json& j = fixture_json();
    std::map<std::string, int32_t> vocab;
    for (const auto& [token, id] : j["model"]["vocab"].items()) vocab[token] = id.get<int32_t>();
    std::map<std::pair<std::string, std::string>, int> ranks;
    int rank = 0;
    for (const json& m : j["model"]["merges"]) {
      const std::string s = m.get<std::string>();
      ranks.emplace(std::make_pair(s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)), rank++);
    }
    return std::make_pair(vocab, ranks);
  }();
  // bytes_to_unicode, written out again.
  auto symbol = [](unsigned char b) {
    std::vector<int> printable;
    for (int c = '!'; c <= '~'; ++c) printable.push_back(c);
    for (int c = 0xA1; c <= 0xAC; ++c) printable.push_back(c);
    for (int c = 0xAE; c <= 0xFF; ++c) printable.push_back(c);
    int cp = b;
    if (std::find(printable.begin(), printable.end(), b) == printable.end()) {
      cp = 256;
      for (int x = 0; x < b; ++x) {
        if (std::find(printable.begin(), printable.end(), x) == printable.end()) ++cp;
      }
    }
    std::string out;
    if (cp < 0x80) {
      out += static_cast<char>(cp);
    } else {
      out += static_cast<char>(0xC0 | (cp >> 6));
      out += static_cast<char>(0x80 | (cp & 0x3F));
    }
    return out;
  };
  std::vector<std::string> parts;
  for (const unsigned char b : word) parts.push_back(symbol(b));
  while (true) {
    int best = -1;
    size_t best_pos = 0;
    for (size_t i = 0; i + 1 < parts.size(); ++i) {
      auto it = tables.second.find({parts[i], parts[i + 1]});
      if (it != tables.second.end() && (best < 0 || it->second < best)) {
        best = it->second;
        best_pos = i;
      }
    }
    if (best < 0) break;
    parts[best_pos] += parts[best_pos + 1];
    parts.erase(parts.begin() + static_cast<std::ptrdiff_t>(best_pos) + 1);
  }
  std::vector<int32_t> ids;
  for (const std::string& p : parts) ids.push_back(tables.first.at(p));
  return ids;
}

std::set<int32_t> added_ids() {
  std::set<int32_t> ids;
  for (const json& a : fixture_json()["added_tokens"]) ids.insert(a["id"].get<int32_t>());
  return ids;
}

TEST(Tokenizer, AsTextModeNeverYieldsAddedTokens) {
  const Tokenizer& t = small();
  const int32_t user = t.token_to_id("<｜User｜>").value();
  // Pre-tokens of "<｜User｜>hi" under DeepSeek's regex: "<｜" and "｜>" are punctuation or
  // symbol runs, "User" and "hi" letter runs.
  std::vector<int32_t> expected;
  for (const char* piece : {"<｜", "User", "｜>", "hi"}) {
    const std::vector<int32_t> ids = naive_bpe(piece);
    expected.insert(expected.end(), ids.begin(), ids.end());
  }
  EXPECT_EQ(t.encode("<｜User｜>hi", SpecialTokens::kAsText), expected);
  std::vector<int32_t> matched = {user};
  for (const int32_t id : naive_bpe("hi")) matched.push_back(id);
  EXPECT_EQ(t.encode("<｜User｜>hi", SpecialTokens::kMatch), matched);
  EXPECT_EQ(t.encode("<｜User｜>hi"), matched);  // kMatch is the default

  const std::set<int32_t> added = added_ids();
  for (const Case& c : cases()) {
    const std::vector<int32_t> ids = t.encode(c.text, SpecialTokens::kAsText);
    for (const int32_t id : ids) {
      ASSERT_EQ(added.count(id), 0u) << c.id << ": added token id " << id << " in kAsText mode";
    }
    EXPECT_EQ(t.decode(ids), c.text) << c.id;
    const bool has_added =
        std::any_of(c.ids.begin(), c.ids.end(), [&](int32_t id) { return added.count(id) != 0; });
    if (!has_added) {
      EXPECT_EQ(ids, c.ids) << c.id;
    }
  }
}

// Spans: added tokens only inside kMatch spans, one pre-tokenizer run across boundaries.
TEST(Tokenizer, SpansMatchAddedTokensOnlyWhereAllowed) {
  const Tokenizer& t = small();
  const int32_t user = *t.token_to_id("<｜User｜>");
  const int32_t assistant = *t.token_to_id("<｜Assistant｜>");
  // No literal in the text spans: identical to encoding the concatenation.
  const std::vector<moerun::TextSpan> plain = {{"<｜User｜>Hel", SpecialTokens::kMatch},
                                               {"lo wor", SpecialTokens::kAsText},
                                               {"ld<｜Assistant｜>", SpecialTokens::kMatch}};
  EXPECT_EQ(t.encode_spans(plain), t.encode("<｜User｜>Hello world<｜Assistant｜>"));
  // A typed control token stays text; the template's are tokens.
  const std::vector<moerun::TextSpan> typed = {{"<｜User｜>", SpecialTokens::kMatch},
                                               {"<｜User｜>hi", SpecialTokens::kAsText},
                                               {"<｜Assistant｜>", SpecialTokens::kMatch}};
  const auto ids = t.encode_spans(typed);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), user), 1);
  EXPECT_EQ(ids.front(), user);
  EXPECT_EQ(ids.back(), assistant);
  EXPECT_EQ(t.decode(ids), "<｜User｜><｜User｜>hi<｜Assistant｜>");
  // A token spelled across a kMatch/kAsText boundary is not matched.
  const std::vector<moerun::TextSpan> split = {{"<｜Us", SpecialTokens::kMatch},
                                               {"er｜>", SpecialTokens::kAsText}};
  const auto split_ids = t.encode_spans(split);
  EXPECT_EQ(std::count(split_ids.begin(), split_ids.end(), user), 0);
  EXPECT_EQ(split_ids, t.encode("<｜User｜>", SpecialTokens::kAsText));
  // Adjacent kMatch spans join: a token across their boundary is matched.
  const std::vector<moerun::TextSpan> joined = {{"<｜Us", SpecialTokens::kMatch},
                                                {"er｜>", SpecialTokens::kMatch}};
  EXPECT_EQ(t.encode_spans(joined), std::vector<int32_t>{user});
  EXPECT_THROW(t.encode_spans(std::vector<moerun::TextSpan>{{"\xff", SpecialTokens::kAsText}}),
               moerun::Error);
}

TEST(Tokenizer, NaiveBpeAgreesOnPlainWords) {
  // The reference above is also a check of the heap-based merging on single pre-tokens.
  const Tokenizer& t = small();
  for (const char* word : {"Hello", " world", "tokenization", " the", "ababababab", "aaaaaaa",
                           "\xE4\xBD\xA0\xE5\xA5\xBD", " \xF0\x9F\x98\x80"}) {
    EXPECT_EQ(t.encode(word), naive_bpe(word)) << word;
  }
}

// ---- variants of the fixture, expected values from HF -----------------------------------

TEST(Tokenizer, VariantsMatchHuggingFace) {
  const json data = json::parse(
      read_file(std::string(MOERUN_SOURCE_DIR) + "/tests/unit/data/tokenizer_small_variants.json"));
  int checked = 0;
  for (const json& v : data.at("variants")) {
    json tj = fixture_json();
    for (const json& patch : v.at("patch")) {
      tj[json::json_pointer(patch.at("path").get<std::string>())] = patch.at("value");
    }
    const Tokenizer t = Tokenizer::from_json(tj.dump(), v.at("name").get<std::string>());
    for (const json& c : v.at("cases")) {
      const std::string text = c.at("text");
      EXPECT_EQ(t.encode(text), c.at("ids").get<std::vector<int32_t>>())
          << v.at("name") << ": " << text;
      EXPECT_EQ(t.decode(c.at("ids").get<std::vector<int32_t>>()),
                c.at("decoded").get<std::string>());
      ++checked;
    }
  }
  for (const json& c : data.at("lossy_decode")) {
    const auto ids = c.at("ids").get<std::vector<int32_t>>();
    EXPECT_EQ(small().decode(ids), c.at("decoded").get<std::string>()) << ids_str(ids);
    EXPECT_EQ(stream_decode(small(), ids, false), c.at("decoded").get<std::string>());
    ++checked;
  }
  EXPECT_GE(checked, 20);
}

// ---- bad input ------------------------------------------------------------------------------

TEST(Tokenizer, InvalidUtf8TextNamesTheOffset) {
  const Tokenizer& t = small();
  const struct {
    std::string text;
    size_t offset;
    const char* what;
  } kCases[] = {
      {"ab\x80"
       "cd",
       2, "lone continuation byte"},
      {"x\xF0\x9F\x98", 1, "truncated 4-byte sequence"},
      {"0123456789\xF0\x9F\x98"
       "a",
       10, "truncated 4-byte sequence before ASCII"},
      {"\xC0\xAF", 0, "overlong 2-byte '/'"},
      {"a\xE0\x80\xAF", 1, "overlong 3-byte '/'"},
      {"ok \xED\xA0\x80", 3, "surrogate U+D800 in UTF-8"},
      {"\xF4\x90\x80\x80", 0, "above U+10FFFF"},
      {"abcdefgh\xFF", 8, "0xFF byte"},
      {std::string("a\0b", 3) + "\xC3", 3, "NUL is fine, truncated 2-byte is not"},
  };
  for (const auto& c : kCases) {
    for (const SpecialTokens mode : {SpecialTokens::kMatch, SpecialTokens::kAsText}) {
      const std::string msg = error_message([&] { (void)t.encode(c.text, mode); });
      EXPECT_NE(msg.find(fmt::format("byte offset {}", c.offset)), std::string::npos)
          << c.what << ": " << msg;
      EXPECT_NE(msg.find("not valid UTF-8"), std::string::npos) << msg;
    }
  }
  EXPECT_EQ(t.decode(t.encode(std::string("a\0b", 3))), std::string("a\0b", 3));
  EXPECT_TRUE(t.encode("").empty());
}

TEST(Tokenizer, DecodeRejectsIdsWithoutToken) {
  const Tokenizer& t = small();
  const auto bad = static_cast<int32_t>(t.vocab_size());
  for (const int32_t id : {-1, bad}) {
    const std::vector<int32_t> ids = {42, id};
    const std::string msg = error_message([&] { (void)t.decode(ids); });
    EXPECT_NE(msg.find(fmt::format("token id {} has no token", id)), std::string::npos) << msg;
    EXPECT_NE(error_message([&] { (void)t.id_to_token(id); }), "<no exception>");
    StreamDecoder d(t);
    EXPECT_NE(error_message([&] { (void)d.push(id); }), "<no exception>");
    EXPECT_EQ(d.push(42), t.decode(std::vector<int32_t>{42}));
  }
}

// A small tokenizer.json built here: the 256 byte symbols (ids 0..255), "Ġt" and "he", two
// merges, two added tokens.
json tiny_json() {
  json vocab = json::object();
  const json& fixture_vocab = fixture_json()["model"]["vocab"];
  int32_t next = 0;
  for (const auto& [token, id] : fixture_vocab.items()) {  // byte symbols are ids 3..258 there
    const auto i = id.get<int32_t>();
    if (i >= 3 && i <= 258) vocab[token] = i - 3;
  }
  next = 256;
  vocab["Ġt"] = next++;
  vocab["he"] = next++;
  json j;
  j["version"] = "1.0";
  j["truncation"] = nullptr;
  j["padding"] = nullptr;
  j["added_tokens"] = json::array({{{"id", 258},
                                    {"content", "<｜User｜>"},
                                    {"single_word", false},
                                    {"lstrip", false},
                                    {"rstrip", false},
                                    {"normalized", false},
                                    {"special", false}},
                                   {{"id", 259},
                                    {"content", "<think>"},
                                    {"single_word", false},
                                    {"lstrip", false},
                                    {"rstrip", false},
                                    {"normalized", true},
                                    {"special", true}}});
  j["normalizer"] = fixture_json()["normalizer"];
  j["pre_tokenizer"] = fixture_json()["pre_tokenizer"];
  j["post_processor"] = fixture_json()["post_processor"];
  j["decoder"] = fixture_json()["decoder"];
  j["model"] = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"vocab", vocab},
                {"merges", json::array({"Ġ t", "h e"})}};
  return j;
}

TEST(Tokenizer, TinyJsonLoads) {
  const Tokenizer t = Tokenizer::from_json(tiny_json().dump(), "tiny");
  EXPECT_EQ(t.vocab_size(), 260);
  EXPECT_EQ(t.encode(" the<｜User｜><think>"), (std::vector<int32_t>{256, 257, 258, 259}));
  EXPECT_EQ(t.decode(std::vector<int32_t>{256, 257, 258, 259}, true), " the<｜User｜>");
  // Merges as [a, b] pairs give the same tokenizer.
  json pairs = tiny_json();
  pairs["model"]["merges"] = json::array({json::array({"Ġ", "t"}), json::array({"h", "e"})});
  EXPECT_EQ(Tokenizer::from_json(pairs.dump(), "pairs").encode(" the"),
            (std::vector<int32_t>{256, 257}));
}

struct BadJson {
  const char* name;
  std::function<void(json&)> mutate;
  std::vector<std::string> expected;  // substrings of the error message
};

TEST(Tokenizer, LoadErrorsNameFileAndPath) {
  const std::vector<BadJson> kCases = {
      {"missing model", [](json& j) { j.erase("model"); }, {"model: missing"}},
      {"model not an object", [](json& j) { j["model"] = 3; }, {"model: expected an object"}},
      {"unknown model type",
       [](json& j) { j["model"]["type"] = "WordPiece"; },
       {"model.type", "unknown model type WordPiece"}},
      {"missing vocab", [](json& j) { j["model"].erase("vocab"); }, {"model.vocab: missing"}},
      {"missing merges", [](json& j) { j["model"].erase("merges"); }, {"model.merges: missing"}},
      {"merge names unknown token",
       [](json& j) { j["model"]["merges"].push_back("Ġ zz"); },
       {"model.merges[2]", "\"zz\" is not in model.vocab"}},
      {"merge result not in vocab",
       [](json& j) { j["model"]["merges"].push_back("t h"); },
       {"model.merges[2]", "\"th\" is not in model.vocab"}},
      {"merge without space",
       [](json& j) { j["model"]["merges"][0] = "Ġt"; },
       {"model.merges[0]", "two tokens separated by one space"}},
      {"merge wrong type",
       [](json& j) { j["model"]["merges"][1] = 5; },
       {"model.merges[1]", "expected \"a b\""}},
      {"duplicate vocab id",
       [](json& j) { j["model"]["vocab"]["he"] = 256; },
       {"model.vocab", "duplicate id 256"}},
      {"negative vocab id",
       [](json& j) { j["model"]["vocab"]["he"] = -4; },
       {"model.vocab.he", "token id -4 out of range"}},
      {"huge vocab id",
       [](json& j) { j["model"]["vocab"]["he"] = int64_t{1} << 40; },
       {"model.vocab.he", "out of range"}},
      {"vocab id not a number",
       [](json& j) { j["model"]["vocab"]["he"] = "257"; },
       {"model.vocab.he", "expected an integer token id"}},
      {"byte symbol missing",
       [](json& j) { j["model"]["vocab"].erase("Ā"); },
       {"model.vocab", "byte 0x00"}},
      {"invalid regex",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][1]["pattern"]["Regex"] = "ab(c"; },
       {"pre_tokenizer.pretokenizers[1].pattern.Regex", "invalid regex",
        "missing closing parenthesis", "at offset 4"}},
      {"regex lookbehind not fixed",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(?<=a+)b"; },
       {"pre_tokenizer.pretokenizers[0].pattern.Regex", "invalid regex"}},
      {"split behavior",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][2]["behavior"] = "MergedWithPrevious"; },
       {"pre_tokenizer.pretokenizers[2].behavior",
        "unsupported Split behavior MergedWithPrevious"}},
      {"split invert",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][2]["invert"] = true; },
       {"pre_tokenizer.pretokenizers[2].invert", "not supported"}},
      {"split empty pattern",
       [](json& j) {
         j["pre_tokenizer"]["pretokenizers"][2]["pattern"] = {{"String", ""}};
       },
       {"pre_tokenizer.pretokenizers[2].pattern.String", "empty pattern"}},
      {"unknown pre-tokenizer",
       [](json& j) {
         j["pre_tokenizer"]["pretokenizers"][0] = {{"type", "Whitespace"}};
       },
       {"pre_tokenizer.pretokenizers[0].type", "unsupported pre-tokenizer type Whitespace"}},
      {"no ByteLevel",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"].erase(3); },
       {"pre_tokenizer", "no ByteLevel"}},
      {"ByteLevel not last",
       [](json& j) {
         auto& list = j["pre_tokenizer"]["pretokenizers"];
         list.push_back(list[0]);
       },
       {"pre_tokenizer.pretokenizers[4]", "ByteLevel must be the last"}},
      {"add_prefix_space",
       [](json& j) { j["pre_tokenizer"]["pretokenizers"][3]["add_prefix_space"] = true; },
       {"pre_tokenizer.pretokenizers[3].add_prefix_space", "not supported"}},
      {"normalizer",
       [](json& j) {
         j["normalizer"] = {{"type", "NFC"}};
       },
       {"normalizer.type", "unsupported normalizer type NFC"}},
      {"nested normalizer",
       [](json& j) {
         j["normalizer"]["normalizers"] = json::array({{{"type", "Lowercase"}}});
       },
       {"normalizer.normalizers[0].type", "unsupported normalizer type Lowercase"}},
      {"decoder",
       [](json& j) {
         j["decoder"] = {{"type", "WordPiece"}};
       },
       {"decoder.type", "unsupported decoder type WordPiece"}},
      {"byte_fallback",
       [](json& j) { j["model"]["byte_fallback"] = true; },
       {"model.byte_fallback", "not supported"}},
      {"unk_token",
       [](json& j) { j["model"]["unk_token"] = "<unk>"; },
       {"model.unk_token", "\"<unk>\" is not supported"}},
      {"dropout", [](json& j) { j["model"]["dropout"] = 0.1; }, {"model.dropout", "not supported"}},
      {"unknown model field",
       [](json& j) { j["model"]["fancy"] = 1; },
       {"model.fancy", "unknown field"}},
      {"unknown top-level field", [](json& j) { j["extra"] = 1; }, {"extra: unknown field"}},
      {"truncation",
       [](json& j) {
         j["truncation"] = {{"max_length", 5}};
       },
       {"truncation", "not supported"}},
      {"added token missing id",
       [](json& j) { j["added_tokens"][1].erase("id"); },
       {"added_tokens[1].id: missing"}},
      {"added token flag type",
       [](json& j) { j["added_tokens"][0]["special"] = "yes"; },
       {"added_tokens[0].special", "expected true or false"}},
      {"added token single_word",
       [](json& j) { j["added_tokens"][0]["single_word"] = true; },
       {"added_tokens[0].single_word", "not supported"}},
      {"added token empty",
       [](json& j) { j["added_tokens"][0]["content"] = ""; },
       {"added_tokens[0].content", "empty token"}},
      {"added token duplicate",
       [](json& j) { j["added_tokens"][1]["content"] = "<｜User｜>"; },
       {"added_tokens[1].content", "also added_tokens[0]"}},
      {"added token collides with vocab entry",
       [](json& j) { j["added_tokens"][0]["id"] = 257; },
       {"added_tokens[0].id", "id 257", "already the id of \"he\""}},
      {"added token id not what HF assigns",
       [](json& j) { j["added_tokens"][1]["id"] = 300; },
       {"added_tokens[1].id", "has id 300", "assigns it id 259"}},
      {"added token spelled like a vocab entry with another id",
       [](json& j) { j["added_tokens"][1]["content"] = "he"; },
       {"added_tokens[1].id", "\"he\" has id 259", "assigns it id 257"}},
  };
  for (const BadJson& c : kCases) {
    json j = tiny_json();
    c.mutate(j);
    const std::string msg =
        error_message([&] { (void)Tokenizer::from_json(j.dump(), "/models/tiny/tokenizer.json"); });
    EXPECT_NE(msg.find("/models/tiny/tokenizer.json"), std::string::npos) << c.name << ": " << msg;
    for (const std::string& part : c.expected) {
      EXPECT_NE(msg.find(part), std::string::npos)
          << c.name << ": [" << part << "] not in: " << msg;
    }
  }
}

TEST(Tokenizer, LoadErrorsForBadFiles) {
  EXPECT_NE(error_message([] {
              (void)Tokenizer::from_json("{\"model\": ", "cut.json");
            }).find("cut.json: invalid JSON"),
            std::string::npos);
  EXPECT_NE(error_message([] {
              (void)Tokenizer::from_json("[1, 2]", "array.json");
            }).find("array.json: (top level): expected an object"),
            std::string::npos);
  EXPECT_NE(error_message([] {
              (void)Tokenizer::from_json("{\"a\": \"\xFF\"}", "bytes.json");
            }).find("bytes.json: invalid JSON"),
            std::string::npos);
  const std::string missing = std::string(MOERUN_BINARY_DIR) + "/no/such/tokenizer.json";
  EXPECT_NE(error_message([&] { (void)Tokenizer::load(missing); }).find(missing + ": cannot open"),
            std::string::npos);
}

// ---- assorted behaviour -------------------------------------------------------------------

TEST(Tokenizer, LongRunsRoundTrip) {
  // One pre-token of 200,000 bytes (heap-based merging), whitespace runs, digit runs.
  const Tokenizer& t = small();
  for (const std::string& text :
       {std::string(200000, 'a'), std::string(100000, ' ') + "x", std::string(100000, '7'),
        std::string(50000, '\n') + "\t\t", std::string(30000, '<') + "<｜User｜>"}) {
    const std::vector<int32_t> ids = t.encode(text);
    EXPECT_EQ(t.decode(ids), text);
    EXPECT_EQ(t.decode(t.encode(text, SpecialTokens::kAsText)), text);
  }
}

TEST(Tokenizer, ConcurrentEncodeAgrees) {
  const Tokenizer& t = small();
  std::vector<std::vector<int32_t>> expected;
  for (const Case& c : cases()) expected.push_back(t.encode(c.text));
  std::vector<std::thread> threads;
  std::vector<int> mismatches(4, 0);
  for (int k = 0; k < 4; ++k) {
    threads.emplace_back([&, k] {
      const Tokenizer copy = t;  // copies share the data
      for (size_t i = 0; i < cases().size(); ++i) {
        if (copy.encode(cases()[i].text) != expected[i]) ++mismatches[k];
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(mismatches, std::vector<int>(4, 0));
}

}  // namespace
}  // namespace moerun
