// Fuzz target for the tokenizer.json loader: any input must either load into a tokenizer
// whose invariants hold or throw moerun::Error; any other exception, crash, hang or sanitizer
// report is a bug.
//
// Each input is read twice:
//  1. as a whole tokenizer.json; a tokenizer that loads encodes a few fixed strings;
//  2. as "REGEX\nTEXT": REGEX becomes an extra Split stage in front of the DeepSeek
//     pre-tokenizer of a fixed small tokenizer (lstrip/rstrip/normalized added tokens), and
//     TEXT (any bytes) is encoded. Random JSON rarely gets past the loader; this reading
//     reaches PCRE2 compilation, the split loop (empty matches, look-arounds) and BPE.
// Invariants (tokenizer.h): ids lie in [0, vocab_size()); kAsText round-trips exactly
// (byte-level BPE loses nothing); decode() is valid UTF-8 and equals the concatenated
// StreamDecoder pieces; invalid UTF-8 text is an Error.
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

#include "common/error.h"
#include "common/tokenizer.h"

namespace {

// Texts encoded by every tokenizer that loads: ASCII, digits, CJK, emoji, whitespace kinds,
// DeepSeek added-token spellings and look-alikes.
constexpr std::string_view kTexts[] = {
    "Hello world, it's 2024! x = f(y) + 12345;\n",
    "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜><think>ok</think><｜end▁of▁sentence｜>",
    "深度求索 こんにちは 😀👍🏽 \xC2\xA0\xE3\x80\x80\xE2\x80\xA8\xC2\x85 "
    "tabs\t\tend "
    " ",
    "<|User|> <｜User <think ab ba aab",
    "",
};

void check(bool ok, const char* what) {
  if (!ok) {
    std::fprintf(stderr, "fuzz_tokenizer_json: invariant violated: %s\n", what);
    std::abort();
  }
}

bool valid_utf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto b = static_cast<unsigned char>(s[i]);
    const int len = b < 0x80 ? 1 : (b >> 5) == 6 ? 2 : (b >> 4) == 14 ? 3 : (b >> 3) == 30 ? 4 : 0;
    if (len == 0 || i + len > s.size()) return false;
    uint32_t cp = len == 1 ? b : b & (0x7F >> len);
    for (int k = 1; k < len; ++k) {
      const auto c = static_cast<unsigned char>(s[i + k]);
      if ((c & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (c & 0x3F);
    }
    const uint32_t min_cp[5] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < min_cp[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

void exercise_text(const moerun::Tokenizer& t, std::string_view text) {
  for (const moerun::SpecialTokens mode :
       {moerun::SpecialTokens::kMatch, moerun::SpecialTokens::kAsText}) {
    try {
      const std::vector<int32_t> ids = t.encode(text, mode);
      check(valid_utf8(text), "encode() accepts only valid UTF-8");
      for (const int32_t id : ids) check(id >= 0 && id < t.vocab_size(), "ids in range");
      for (const bool skip : {false, true}) {
        const std::string decoded = t.decode(ids, skip);
        check(valid_utf8(decoded), "decode() is valid UTF-8");
        if (mode == moerun::SpecialTokens::kAsText && !skip) {
          check(decoded == text, "kAsText round-trips");
        }
        moerun::StreamDecoder stream(t, skip);
        std::string streamed;
        for (const int32_t id : ids) {
          const std::string piece = stream.push(id);
          check(valid_utf8(piece), "stream pieces are valid UTF-8");
          streamed += piece;
        }
        streamed += stream.finish();
        check(streamed == decoded, "streaming equals decode()");
      }
    } catch (const moerun::Error&) {
      // Invalid UTF-8, or a regex that fails at match time (e.g. PCRE2's match limit).
    }
  }
}

void exercise(const moerun::Tokenizer& t) {
  for (const std::string_view text : kTexts) exercise_text(t, text);
}

// The fixed tokenizer of the second reading, with "REGEX" where the input's regex goes.
const nlohmann::json& regex_host() {
  static const nlohmann::json j = [] {
    using nlohmann::json;
    json vocab = json::object();
    int next_extra = 256;
    for (int b = 0; b < 256; ++b) {  // GPT-2 bytes_to_unicode
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const int cp = printable ? b : next_extra++;
      std::string symbol;
      if (cp < 0x80) {
        symbol += static_cast<char>(cp);
      } else {
        symbol += static_cast<char>(0xC0 | (cp >> 6));
        symbol += static_cast<char>(0x80 | (cp & 0x3F));
      }
      vocab[symbol] = b;
    }
    const char* merged[] = {"Ġt", "he", "Ġthe", "aa", "aaa", "ĠĠ"};
    for (int i = 0; i < 6; ++i) vocab[merged[i]] = 256 + i;
    auto added = [](int id, const char* content, bool lstrip, bool rstrip, bool normalized,
                    bool special) {
      return json{{"id", id},          {"content", content}, {"single_word", false},
                  {"lstrip", lstrip},  {"rstrip", rstrip},   {"normalized", normalized},
                  {"special", special}};
    };
    auto split = [](const char* regex) {
      return json{{"type", "Split"},
                  {"pattern", {{"Regex", regex}}},
                  {"behavior", "Isolated"},
                  {"invert", false}};
    };
    json host;
    host["version"] = "1.0";
    host["added_tokens"] =
        json::array({added(262, "<｜User｜>", true, false, false, false),
                     added(263, "<think>", false, true, true, true),
                     added(264, "<｜end▁of▁sentence｜>", false, false, false, true),
                     added(265, " ", false, false, true, false)});
    host["normalizer"] = nullptr;
    host["pre_tokenizer"] = {
        {"type", "Sequence"},
        {"pretokenizers",
         json::array(
             {split("REGEX"),
              split(R"(\p{N}{1,3})"),
              split("[一-龥぀-ゟ゠-ヿ]+"),
              split(
                  R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)"),
              {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"use_regex", false}}})}};
    host["decoder"] = {{"type", "ByteLevel"}};
    host["model"] = {{"type", "BPE"},
                     {"vocab", vocab},
                     {"merges", json::array({"Ġ t", "h e", "Ġt he", "a a", "aa a", "Ġ Ġ"})}};
    return host;
  }();
  return j;
}

void regex_reading(std::string_view input) {
  const size_t newline = input.find('\n');
  if (newline == std::string_view::npos) return;
  const std::string_view regex = input.substr(0, newline);
  const std::string_view text = input.substr(newline + 1);
  if (!valid_utf8(regex)) return;  // JSON strings are UTF-8: nothing to test
  nlohmann::json j = regex_host();
  j["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = std::string(regex);
  try {
    const moerun::Tokenizer t = moerun::Tokenizer::from_json(j.dump(), "fuzz-regex");
    exercise_text(t, text);
  } catch (const moerun::Error&) {
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view input(reinterpret_cast<const char*>(data), size);
  try {
    const moerun::Tokenizer t = moerun::Tokenizer::from_json(input, "fuzz-input");
    check(t.vocab_size() > 0, "a loaded tokenizer has tokens");
    exercise(t);
  } catch (const moerun::Error&) {
  }
  regex_reading(input);
  return 0;
}

#include "tests/fuzz/replay_main.h"
