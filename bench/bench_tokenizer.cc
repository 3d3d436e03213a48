// Tokenizer encode throughput on one core, on a deterministic mixed text (English prose,
// C++ and Python code, Chinese and Japanese, emoji, numbers; random identifiers and numbers
// keep the per-call word cache from making it trivial), at 1 MB and 10 MB.
//
// Validates decode(encode(text)) == text before timing. Reports MB/s and tokens/s, the
// linearity ratio time(10 MB) / (10 x time(1 MB)) (1.0 = linear), and ratios to two
// baselines measured in the same run: memcpy of the text, and one PCRE2 JIT find-all pass of
// DeepSeek's main pre-tokenizer regex over it (the encoder runs three such regexes per piece).
//
//   bench_tokenizer [TOKENIZER_JSON...]
// Default: the golden tokenizer-small, plus the DeepSeek-V3 tokenizer that
// test_tokenizer_real downloads into <build>/downloads/deepseek_v3/ when it is there.
#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"
#include "common/tokenizer.h"

namespace {

namespace fs = std::filesystem;

constexpr size_t kSmallBytes = 1'000'000;
constexpr size_t kLargeBytes = 10'000'000;
constexpr int kRepeats = 3;  // best of

// DeepSeek's third (main) Split regex, as in its tokenizer.json.
constexpr std::string_view kMainPattern =
    R"([!"#$%&'()*+,\-./:;<=>?@\[\\\]^_`{|}~][A-Za-z]+|[^\r\n\p{L}\p{P}\p{S}]?[\p{L}\p{M}]+| ?[\p{P}\p{S}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t next() {
    s_ ^= s_ << 13;
    s_ ^= s_ >> 7;
    s_ ^= s_ << 17;
    return s_;
  }
  size_t below(size_t n) { return static_cast<size_t>(next() % n); }
  template <class T, size_t N>
  const T& pick(const T (&a)[N]) {
    return a[below(N)];
  }

 private:
  uint64_t s_;
};

std::string identifier(Rng& rng) {
  static const char* kParts[] = {"buf", "len",   "idx",  "tok",   "expert", "rank", "layer", "num",
                                 "ptr", "cache", "head", "route", "score",  "tmp",  "state"};
  std::string id = rng.pick(kParts);
  const size_t parts = 1 + rng.below(3);
  for (size_t i = 0; i < parts; ++i) {
    id += rng.below(2) ? "_" : "";
    id += rng.pick(kParts);
  }
  if (rng.below(3) == 0) id += std::to_string(rng.below(1000));
  return id;
}

void english(Rng& rng, std::string& out) {
  static const char* kWords[] = {
      "the",        "model",       "routes",        "each",      "token",     "to",
      "a",          "small",       "set",           "of",        "experts",   "and",
      "combines",   "their",       "outputs",       "with",      "learned",   "weights",
      "which",      "keeps",       "compute",       "low",       "while",     "capacity",
      "grows",      "however",     "communication", "between",   "ranks",     "dominates",
      "latency",    "when",        "batches",       "are",       "tiny",      "so",
      "we",         "overlap",     "transfers",     "kernels",   "carefully", "measuring",
      "everything", "twice",       "Meanwhile",     "DeepSeek",  "attention", "is",
      "compressed", "into",        "latent",        "vectors",   "it's",      "don't",
      "they've",    "performance", "throughput",    "bandwidth", "Hello",     "world"};
  const size_t n = 8 + rng.below(20);
  for (size_t i = 0; i < n; ++i) {
    out += i == 0 ? "" : " ";
    out += rng.pick(kWords);
    if (rng.below(12) == 0) out += fmt::format(" {}", rng.below(100000));
    if (rng.below(15) == 0) out += ",";
  }
  out += rng.below(4) == 0 ? "? " : ". ";
  if (rng.below(5) == 0) out += "\n\n";
}

void cpp_code(Rng& rng, std::string& out) {
  const std::string a = identifier(rng);
  const std::string b = identifier(rng);
  out += fmt::format(
      "for (int64_t {0} = 0; {0} < {1}; ++{0}) {{\n  const float {2} = weights[{0} * {3} + {4}];\n"
      "  if ({2} > 0.{5}f) acc += {2} * x[{0}];  // scale by {6}\n}}\n",
      a, rng.below(1 << 20), b, rng.below(4096), rng.below(64), rng.below(1000), rng.below(99));
}

void python_code(Rng& rng, std::string& out) {
  const std::string f = identifier(rng);
  out += fmt::format(
      "def {0}(x, n={1}):\n    \"\"\"Return the top-{2} scores.\"\"\"\n    y = [v * {3}.{4} for v "
      "in "
      "x if v > {5}]\n    return sorted(y)[:n]\n\n",
      f, rng.below(512), rng.below(16), rng.below(100), rng.below(100), rng.below(10));
}

void cjk(Rng& rng, std::string& out) {
  static const char* kPhrases[] = {"深度求索", "人工智能", "模型", "专家",       "路由",
                                   "计算",     "通信",     "延迟", "吞吐量",     "今天天气很好",
                                   "我们",     "测试",     "数据", "こんにちは", "トークン",
                                   "計算",     "です",     "ます", "日本語",     "テキスト",
                                   "分词器",   "的",       "是",   "在",         "和"};
  static const char* kPunct[] = {"，", "。", "、", "！", "？", "：", "（", "）"};
  const size_t n = 3 + rng.below(12);
  for (size_t i = 0; i < n; ++i) {
    out += rng.pick(kPhrases);
    if (rng.below(4) == 0) out += rng.pick(kPunct);
    if (rng.below(10) == 0) out += std::to_string(rng.below(10000));
  }
  out += "。\n";
}

void misc(Rng& rng, std::string& out) {
  static const char* kEmoji[] = {"😀",    "🚀", "🔥", "👍🏽", "👩‍💻",
                                 "🦀", "🐍", "✅", "❤️"};
  out +=
      fmt::format("Status {} {} id={:08x} score={}.{:03d} {}\n", rng.pick(kEmoji), rng.pick(kEmoji),
                  rng.next() & 0xFFFFFFFF, rng.below(100), rng.below(1000), rng.pick(kEmoji));
}

// About `bytes` bytes of mixed text (cut on a line boundary).
std::string make_text(size_t bytes, uint64_t seed) {
  Rng rng(seed);
  std::string out;
  out.reserve(bytes + 4096);
  while (out.size() < bytes) {
    const size_t kind = rng.below(20);
    if (kind < 9) {
      english(rng, out);
    } else if (kind < 12) {
      cpp_code(rng, out);
    } else if (kind < 15) {
      python_code(rng, out);
    } else if (kind < 18) {
      cjk(rng, out);
    } else {
      misc(rng, out);
    }
  }
  const size_t cut = out.rfind('\n', bytes);
  out.resize(cut == std::string::npos ? bytes : cut + 1);
  return out;
}

template <class F>
double best_seconds(F&& f) {
  double best = 1e30;
  for (int i = 0; i < kRepeats; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    f();
    best = std::min(best,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  }
  return best;
}

// One find-all pass of kMainPattern over the whole text, PCRE2 JIT.
size_t regex_pass(const pcre2_code* code, pcre2_match_data* md, const std::string& text) {
  size_t matches = 0;
  size_t from = 0;
  const auto* s = reinterpret_cast<PCRE2_SPTR>(text.data());
  while (from < text.size()) {
    const int rc = pcre2_jit_match(code, s, text.size(), from, 0, md, nullptr);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    from = ov[1] > from ? ov[1] : from + 1;
    ++matches;
  }
  return matches;
}

struct Sizes {
  double seconds = 0;
  size_t tokens = 0;
};

void bench(const fs::path& path, const std::string& small_text, const std::string& large_text) {
  const auto t_load0 = std::chrono::steady_clock::now();
  const moerun::Tokenizer tok = moerun::Tokenizer::load(path);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_load0).count();
  fmt::print("\n== {} (vocab {}, loaded in {:.3f} s)\n", path.string(), tok.vocab_size(), load_s);

  // Validate first.
  for (const std::string* text : {&small_text, &large_text}) {
    const std::vector<int32_t> ids = tok.encode(*text);
    if (tok.decode(ids) != *text) {
      fmt::print("VALIDATION FAILED: decode(encode(text)) != text ({} bytes)\n", text->size());
      std::exit(1);
    }
  }

  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code =
      pcre2_compile(reinterpret_cast<PCRE2_SPTR>(kMainPattern.data()), kMainPattern.size(),
                    PCRE2_UTF | PCRE2_UCP, &err, &err_offset, nullptr);
  MOERUN_CHECK(code != nullptr && pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0,
               "cannot JIT-compile the baseline regex");
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(code, nullptr);

  fmt::print("{:>7} {:>10} {:>9} {:>11} {:>10} {:>12} {:>12}\n", "size", "time_s", "MB/s", "tokens",
             "Mtok/s", "vs_memcpy", "vs_regex");
  Sizes results[2];
  const std::string* texts[2] = {&small_text, &large_text};
  for (int k = 0; k < 2; ++k) {
    const std::string& text = *texts[k];
    size_t tokens = 0;
    const double enc_s = best_seconds([&] { tokens = tok.encode(text).size(); });
    std::string copy(text.size(), '\0');
    const double copy_s = best_seconds([&] {
      std::memcpy(copy.data(), text.data(), text.size());
      asm volatile("" : : "r"(copy.data()) : "memory");
    });
    size_t matches = 0;
    const double regex_s = best_seconds([&] { matches = regex_pass(code, md, text); });
    const double mb = static_cast<double>(text.size()) / 1e6;
    fmt::print("{:>5.1f}MB {:>10.4f} {:>9.1f} {:>11} {:>10.2f} {:>11.4f}x {:>11.3f}x\n", mb, enc_s,
               mb / enc_s, tokens, static_cast<double>(tokens) / enc_s / 1e6, copy_s / enc_s,
               regex_s / enc_s);
    fmt::print(
        "        (memcpy {:.1f} MB/s; regex pass {:.1f} MB/s, {} matches; {:.2f} bytes/token)\n",
        mb / copy_s, mb / regex_s, matches, static_cast<double>(text.size()) / tokens);
    results[k] = {enc_s, tokens};
  }
  const double size_ratio =
      static_cast<double>(large_text.size()) / static_cast<double>(small_text.size());
  fmt::print("linearity: time(10MB) / ({:.2f} x time(1MB)) = {:.3f} (1.0 = linear)\n", size_ratio,
             results[1].seconds / (size_ratio * results[0].seconds));
  pcre2_match_data_free(md);
  pcre2_code_free(code);
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<fs::path> paths;
  for (int i = 1; i < argc; ++i) paths.emplace_back(argv[i]);
  if (paths.empty()) {
    // The source tree sits next to ../shared; the build dir is two levels above this binary.
    const fs::path source_dir = fs::path(__FILE__).parent_path().parent_path();
    paths.push_back(source_dir / ".." / "shared" / "golden" / "tokenizer-small" / "tokenizer.json");
    const fs::path v3 = fs::read_symlink("/proc/self/exe").parent_path().parent_path() /
                        "downloads" / "deepseek_v3" / "tokenizer.json";
    if (fs::exists(v3)) {
      paths.push_back(v3);
    } else {
      fmt::print("(no {}: run test_tokenizer_real once to download DeepSeek-V3's tokenizer)\n",
                 v3.string());
    }
  }
  const std::string large = make_text(kLargeBytes, 0x5EED);
  std::string small = large.substr(0, kSmallBytes);
  small.resize(small.rfind('\n') + 1);
  fmt::print("text: {} and {} bytes of English, C++/Python, CJK, emoji and numbers; best of {}\n",
             small.size(), large.size(), kRepeats);
  try {
    for (const fs::path& p : paths) bench(p, small, large);
  } catch (const moerun::Error& e) {
    fmt::print(stderr, "{}\n", e.what());
    return 1;
  }
  return 0;
}
