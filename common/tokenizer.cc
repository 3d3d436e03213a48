// Byte-level BPE tokenizer (tokenizer.h): tokenizer.json loading and checks, the added-token
// trie, the PCRE2 pre-tokenizer, BPE merging, and (lossy) UTF-8 decoding.
//
// Where Hugging Face's Rust `tokenizers` has a rule that decides an output, the code follows it
// and says so in a comment (merge order, empty regex matches, added-token passes, id
// assignment, lossy decoding); ../shared/golden/tokenizer-small/cases.jsonl pins the results.
#include "common/tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <unordered_map>
#include <utility>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/utf8.h"

namespace moerun {
namespace {

using nlohmann::json;

// Largest token id accepted. Tables are indexed by id (~24 bytes per id), so this bounds
// what a corrupt or hostile file can make us allocate (~100 MB); DeepSeek-V4 uses ids up to
// 129,279, the largest vocabularies in use ~260,000.
constexpr int64_t kMaxTokenId = (int64_t{1} << 22) - 1;
// Largest tokenizer.json accepted (the real files are 8-10 MB); token tables use 32-bit offsets.
constexpr size_t kMaxJsonBytes = size_t{1} << 30;
// Nesting of Sequence pre-tokenizers / normalizers accepted.
constexpr int kMaxSequenceDepth = 8;
// Words remembered by one encode() call (each entry is a view into the text plus its ids).
constexpr size_t kMaxCachedWords = size_t{1} << 20;
// Longest word the cache keeps (longer ones rarely repeat, and their merging dominates anyway).
constexpr size_t kMaxCachedWordBytes = 4096;
// Longest text encode() accepts: symbol positions in a word are 32-bit.
constexpr size_t kMaxTextBytes = (size_t{1} << 31) - 1;
// Longest string quoted verbatim in an error message.
constexpr size_t kMaxQuotedBytes = 80;

// GPT-2's ByteLevel pre-tokenizer regex (HF pre_tokenizers/byte_level.rs), used for
// ByteLevel(use_regex=true).
constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// ---- GPT-2 byte table -------------------------------------------------------------------
// bytes_to_unicode(): printable bytes map to the same code point, the other 68 to 256+n.
struct ByteTable {
  std::array<char32_t, 256> byte_to_cp{};
  std::array<int16_t, 324> cp_to_byte{};  // -1 for code points outside the table
};

constexpr ByteTable make_byte_table() {
  ByteTable t;
  for (int16_t& b : t.cp_to_byte) b = -1;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    const int cp = printable ? b : next++;
    t.byte_to_cp[b] = static_cast<char32_t>(cp);
    t.cp_to_byte[cp] = static_cast<int16_t>(b);
  }
  return t;
}
constexpr ByteTable kByteTable = make_byte_table();

// ---- UTF-8 ------------------------------------------------------------------------------
enum class Utf8Status { kValid, kInvalid, kIncomplete };
struct Utf8Step {
  Utf8Status status;
  size_t len;  // valid: sequence length; invalid: maximal subpart (>= 1); incomplete: all bytes
};

// Classifies the sequence starting at p[0] (n >= 1 bytes available), strictly: no overlong
// forms, surrogates or code points above U+10FFFF (Unicode Table 3-7).
Utf8Step utf8_step(const unsigned char* p, size_t n) {
  const unsigned char b = p[0];
  if (b < 0x80) return {Utf8Status::kValid, 1};
  size_t need = 0;
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (b >= 0xC2 && b <= 0xDF) {
    need = 1;
  } else if (b == 0xE0) {
    need = 2;
    lo = 0xA0;
  } else if ((b >= 0xE1 && b <= 0xEC) || b == 0xEE || b == 0xEF) {
    need = 2;
  } else if (b == 0xED) {
    need = 2;
    hi = 0x9F;
  } else if (b == 0xF0) {
    need = 3;
    lo = 0x90;
  } else if (b >= 0xF1 && b <= 0xF3) {
    need = 3;
  } else if (b == 0xF4) {
    need = 3;
    hi = 0x8F;
  } else {
    return {Utf8Status::kInvalid, 1};
  }
  for (size_t i = 1; i <= need; ++i) {
    if (i >= n) return {Utf8Status::kIncomplete, n};
    if (p[i] < lo || p[i] > hi) return {Utf8Status::kInvalid, i};
    lo = 0x80;
    hi = 0xBF;
  }
  return {Utf8Status::kValid, need + 1};
}

// Offset of the first byte that does not start a valid UTF-8 sequence, or npos.
size_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII runs eight bytes at a time.
    while (i + 8 <= n) {
      uint64_t word;
      std::memcpy(&word, p + i, 8);
      if ((word & 0x8080808080808080ULL) != 0) break;
      i += 8;
    }
    if (i >= n) break;
    const Utf8Step step = utf8_step(p + i, n - i);
    if (step.status != Utf8Status::kValid) return i;
    i += step.len;
  }
  return std::string_view::npos;
}

constexpr std::string_view kReplacementChar = "\xEF\xBF\xBD";  // U+FFFD

// Appends `bytes` to `out` as UTF-8, each maximal invalid subpart replaced by U+FFFD (what
// Rust's String::from_utf8_lossy, and so HF's decoders, do). With hold_incomplete, a trailing
// incomplete sequence is not consumed; returns the number of bytes consumed.
size_t append_lossy(std::string& out, std::string_view bytes, bool hold_incomplete) {
  const auto* p = reinterpret_cast<const unsigned char*>(bytes.data());
  const size_t n = bytes.size();
  size_t i = 0;
  size_t run_begin = 0;  // start of the valid run not yet appended
  while (i < n) {
    if (p[i] < 0x80) {
      ++i;
      continue;
    }
    const Utf8Step step = utf8_step(p + i, n - i);
    if (step.status == Utf8Status::kValid) {
      i += step.len;
      continue;
    }
    out.append(bytes.substr(run_begin, i - run_begin));
    if (step.status == Utf8Status::kIncomplete && hold_incomplete) return i;
    out.append(kReplacementChar);
    i += step.len;
    run_begin = i;
  }
  out.append(bytes.substr(run_begin, n - run_begin));
  return n;
}

// Decodes the code point of a valid sequence at p (len from utf8_step).
char32_t decode_cp(const unsigned char* p, size_t len) {
  switch (len) {
    case 1:
      return p[0];
    case 2:
      return (char32_t{p[0] & 0x1Fu} << 6) | (p[1] & 0x3Fu);
    case 3:
      return (char32_t{p[0] & 0x0Fu} << 12) | (char32_t{p[1] & 0x3Fu} << 6) | (p[2] & 0x3Fu);
    default:
      return (char32_t{p[0] & 0x07u} << 18) | (char32_t{p[1] & 0x3Fu} << 12) |
             (char32_t{p[2] & 0x3Fu} << 6) | (p[3] & 0x3Fu);
  }
}

// Unicode White_Space, which is what Rust's char::is_whitespace tests (added-token
// lstrip/rstrip). Stable since Unicode 6.3.
bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F || c == 0x205F ||
         c == 0x3000;
}

// The byte-level spelling of a token ("Ġthe") as raw bytes (" the"); nullopt when a character
// lies outside the byte table (e.g. "<｜User｜>"), in which case decoders use the UTF-8 as is.
std::optional<std::string> byte_level_to_bytes(std::string_view token) {
  std::string out;
  out.reserve(token.size());
  const auto* p = reinterpret_cast<const unsigned char*>(token.data());
  size_t i = 0;
  while (i < token.size()) {
    const Utf8Step step = utf8_step(p + i, token.size() - i);
    if (step.status != Utf8Status::kValid) return std::nullopt;
    const char32_t cp = decode_cp(p + i, step.len);
    if (cp >= kByteTable.cp_to_byte.size() || kByteTable.cp_to_byte[cp] < 0) return std::nullopt;
    out += static_cast<char>(kByteTable.cp_to_byte[cp]);
    i += step.len;
  }
  return out;
}

// `s` in double quotes for an error message: control bytes escaped, cut at kMaxQuotedBytes
// (on a character boundary).
std::string quote(std::string_view s) {
  size_t cut = s.size();
  if (cut > kMaxQuotedBytes) {
    cut = kMaxQuotedBytes;
    while (cut > 0 && (static_cast<unsigned char>(s[cut]) & 0xC0) == 0x80) --cut;
  }
  std::string out = "\"";
  for (const char ch : s.substr(0, cut)) {
    const auto c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7F) {
      out += fmt::format("\\x{:02x}", c);
    } else {
      if (c == '"' || c == '\\') out += '\\';
      out += ch;
    }
  }
  out += '"';
  if (cut < s.size()) out += fmt::format("... ({} bytes)", s.size());
  return out;
}

// A JSON value for an error message: scalars as written, containers by type (dump() recurses,
// and a fuzzed file can nest arrays 100,000 deep).
std::string describe(const json& v) {
  if (v.is_string()) return quote(v.get_ref<const std::string&>());
  if (v.is_array() || v.is_object()) return fmt::format("an {}", v.type_name());
  return v.dump();
}

// ---- PCRE2 ------------------------------------------------------------------------------
struct Pcre2CodeFree {
  void operator()(pcre2_code* c) const { pcre2_code_free(c); }
};
struct Pcre2MatchDataFree {
  void operator()(pcre2_match_data* m) const { pcre2_match_data_free(m); }
};
using Pcre2Code = std::unique_ptr<pcre2_code, Pcre2CodeFree>;
using Pcre2MatchData = std::unique_ptr<pcre2_match_data, Pcre2MatchDataFree>;

std::string pcre2_message(int code) {
  std::array<PCRE2_UCHAR, 256> buf{};
  if (pcre2_get_error_message(code, buf.data(), buf.size()) < 0) {
    return fmt::format("code {}", code);
  }
  return std::string(reinterpret_cast<const char*>(buf.data()));
}

// HF runs its regexes with Oniguruma, whose \s is Unicode White_Space; PCRE2's \s under UCP
// also takes U+180E. Rewrites \s and \S (in and out of classes, not inside \Q...\E) to the
// property so that both agree.
std::string onig_compatible(std::string_view pattern) {
  std::string out;
  out.reserve(pattern.size() + 32);
  size_t i = 0;
  while (i < pattern.size()) {
    const char c = pattern[i];
    if (c != '\\' || i + 1 == pattern.size()) {
      out += c;
      ++i;
      continue;
    }
    const char e = pattern[i + 1];
    if (e == 's') {
      out += "\\p{White_Space}";
      i += 2;
    } else if (e == 'S') {
      out += "\\P{White_Space}";
      i += 2;
    } else if (e == 'Q') {
      const size_t end = pattern.find("\\E", i + 2);
      const size_t stop = end == std::string_view::npos ? pattern.size() : end + 2;
      out.append(pattern.substr(i, stop - i));
      i = stop;
    } else if (e == 'c' && i + 2 < pattern.size()) {  // \cX: X is literal
      out.append(pattern.substr(i, 3));
      i += 3;
    } else {
      out += c;
      out += e;
      i += 2;
    }
  }
  return out;
}

// One Split stage of the pre-tokenizer.
struct Regex {
  Pcre2Code code;
  bool jit = false;
};

// ---- added-token trie -------------------------------------------------------------------
// Byte trie over added-token spellings; longest_at() gives the longest token starting at a
// position, so scanning left to right gives HF's leftmost-longest (Aho-Corasick) matches in
// O(text length x longest token).
class TokenTrie {
 public:
  TokenTrie() { root_.fill(-1); }

  void insert(std::string_view s, int32_t value) {
    int32_t node = root_[static_cast<unsigned char>(s[0])];
    if (node < 0) {
      node = new_node();
      root_[static_cast<unsigned char>(s[0])] = node;
    }
    for (size_t i = 1; i < s.size(); ++i) {
      const auto b = static_cast<unsigned char>(s[i]);
      const auto& children = nodes_[node].children;
      auto it =
          std::lower_bound(children.begin(), children.end(), b,
                           [](const auto& child, unsigned char x) { return child.first < x; });
      if (it != children.end() && it->first == b) {
        node = it->second;
      } else {
        const auto at = it - children.begin();  // new_node() may move the nodes
        const int32_t child = new_node();
        auto& moved = nodes_[node].children;
        moved.insert(moved.begin() + at, {b, child});
        node = child;
      }
    }
    nodes_[node].value = value;
  }

  bool empty() const { return nodes_.empty(); }
  bool may_start(unsigned char b) const { return root_[b] >= 0; }

  // Length and value of the longest token that starts at text[pos]; length 0 if none.
  std::pair<size_t, int32_t> longest_at(std::string_view text, size_t pos) const {
    int32_t node = root_[static_cast<unsigned char>(text[pos])];
    size_t best_len = 0;
    int32_t best_value = -1;
    size_t i = pos + 1;
    while (node >= 0) {
      if (nodes_[node].value >= 0) {
        best_len = i - pos;
        best_value = nodes_[node].value;
      }
      if (i >= text.size()) break;
      const auto b = static_cast<unsigned char>(text[i]);
      const auto& children = nodes_[node].children;
      auto it =
          std::lower_bound(children.begin(), children.end(), b,
                           [](const auto& child, unsigned char x) { return child.first < x; });
      node = (it != children.end() && it->first == b) ? it->second : -1;
      ++i;
    }
    return {best_len, best_value};
  }

 private:
  struct Node {
    int32_t value = -1;
    std::vector<std::pair<unsigned char, int32_t>> children;  // sorted by byte
  };
  int32_t new_node() {
    nodes_.emplace_back();
    return static_cast<int32_t>(nodes_.size() - 1);
  }
  std::array<int32_t, 256> root_;
  std::vector<Node> nodes_;
};

// ---- merges -----------------------------------------------------------------------------
struct Merge {
  int32_t rank;    // position in model.merges: lower merges first
  int32_t new_id;  // the merged token
};

// Open-addressing hash map (id, id) -> Merge; the BPE inner loop's only lookup.
class MergeMap {
 public:
  void reserve(size_t n) {
    size_t cap = 16;
    while (cap < 2 * n) cap *= 2;
    keys_.assign(cap, kEmpty);
    values_.assign(cap, Merge{0, 0});
    mask_ = cap - 1;
  }
  // Later merges of the same pair replace earlier ones, as HF's HashMap collect does.
  void insert_or_assign(int32_t a, int32_t b, Merge m) {
    const uint64_t k = key(a, b);
    size_t i = slot(k);
    while (keys_[i] != kEmpty && keys_[i] != k) i = (i + 1) & mask_;
    keys_[i] = k;
    values_[i] = m;
  }
  const Merge* find(int32_t a, int32_t b) const {
    const uint64_t k = key(a, b);
    size_t i = slot(k);
    while (true) {
      if (keys_[i] == k) return &values_[i];
      if (keys_[i] == kEmpty) return nullptr;
      i = (i + 1) & mask_;
    }
  }

 private:
  static constexpr uint64_t kEmpty = ~uint64_t{0};  // ids are non-negative: no real key
  static uint64_t key(int32_t a, int32_t b) {
    return (uint64_t{static_cast<uint32_t>(a)} << 32) | static_cast<uint32_t>(b);
  }
  size_t slot(uint64_t k) const {
    return static_cast<size_t>((k * 0x9E3779B97F4A7C15ULL) >> 32) & mask_;
  }
  std::vector<uint64_t> keys_;
  std::vector<Merge> values_;
  size_t mask_ = 0;
};

// Words already merged in one encode() call: open addressing over (hash, view of the text),
// the ids kept in one array. Words repeat a lot in text; at most kMaxCachedWords are kept.
class WordCache {
 public:
  WordCache() : slots_(kInitialSlots) {}

  static uint64_t hash(std::string_view word) {
    uint64_t h = 0xcbf29ce484222325ULL;  // FNV-1a
    for (const char c : word) h = (h ^ static_cast<unsigned char>(c)) * 0x100000001b3ULL;
    return h;
  }

  // The cached ids of `word`, or an empty span.
  std::span<const int32_t> find(std::string_view word, uint64_t h) const {
    for (size_t i = h & (slots_.size() - 1);; i = (i + 1) & (slots_.size() - 1)) {
      const Slot& s = slots_[i];
      if (s.data == nullptr) return {};
      if (s.hash == h && s.len == word.size() && std::memcmp(s.data, word.data(), s.len) == 0) {
        return std::span<const int32_t>(ids_).subspan(s.ids_off, s.ids_len);
      }
    }
  }

  // Remembers `ids` for `word` (a view that must outlive the cache); no-op once full.
  void insert(std::string_view word, uint64_t h, std::span<const int32_t> ids) {
    if (used_ >= kMaxCachedWords || word.size() > kMaxCachedWordBytes ||
        ids_.size() + ids.size() > std::numeric_limits<uint32_t>::max()) {
      return;
    }
    if (2 * (used_ + 1) > slots_.size()) grow();
    place(Slot{h, word.data(), static_cast<uint32_t>(word.size()),
               static_cast<uint32_t>(ids_.size()), static_cast<uint32_t>(ids.size())});
    ids_.insert(ids_.end(), ids.begin(), ids.end());
    ++used_;
  }

 private:
  static constexpr size_t kInitialSlots = 256;  // a power of two
  struct Slot {
    uint64_t hash = 0;
    const char* data = nullptr;  // nullptr: empty slot
    uint32_t len = 0;
    uint32_t ids_off = 0;
    uint32_t ids_len = 0;
  };
  void place(const Slot& slot) {
    size_t i = slot.hash & (slots_.size() - 1);
    while (slots_[i].data != nullptr) i = (i + 1) & (slots_.size() - 1);
    slots_[i] = slot;
  }
  void grow() {
    std::vector<Slot> old(slots_.size() * 2);
    old.swap(slots_);
    for (const Slot& slot : old) {
      if (slot.data != nullptr) place(slot);
    }
  }
  std::vector<Slot> slots_;
  std::vector<int32_t> ids_;
  size_t used_ = 0;
};

}  // namespace

// ---- the loaded tokenizer ----------------------------------------------------------------
struct Tokenizer::Impl {
  std::string label;

  struct TokenInfo {
    uint32_t text_off = 0;  // spelling in text_arena (as in the file)
    uint32_t text_len = 0;
    uint32_t bytes_off = 0;  // what decoding emits, in bytes_arena
    uint32_t bytes_len = 0;
    bool present = false;  // false for gaps in the id range
    bool special = false;
  };
  std::vector<TokenInfo> tokens;  // indexed by id; size = vocab_size()
  std::string text_arena;
  std::string bytes_arena;
  std::unordered_map<std::string_view, int32_t> by_text;  // views into text_arena

  std::array<int32_t, 256> byte_ids{};  // id of each byte's symbol
  MergeMap merges;
  std::vector<Regex> stages;  // Split regexes, in order

  struct Added {
    int32_t id;
    bool lstrip;
    bool rstrip;
  };
  std::vector<Added> added;   // trie values index this
  TokenTrie raw_trie;         // normalized=false: matched on the raw text
  TokenTrie normalized_trie;  // normalized=true: matched in what the first pass leaves

  const TokenInfo& token(int32_t id) const {
    if (id < 0 || static_cast<size_t>(id) >= tokens.size() || !tokens[id].present) {
      MOERUN_THROW("tokenizer {}: token id {} has no token (vocab size {})", label, id,
                   tokens.size());
    }
    return tokens[id];
  }
  std::string_view bytes_of(const TokenInfo& t) const {
    return std::string_view(bytes_arena).substr(t.bytes_off, t.bytes_len);
  }
};

namespace {

using Impl = Tokenizer::Impl;

// ---- loading ------------------------------------------------------------------------------
// Walks the parsed JSON; every error names the source and the JSON path of the problem.
class Loader {
 public:
  explicit Loader(std::string_view label) : label_(label) {}

  std::shared_ptr<Impl> load(const json& root);

 private:
  [[noreturn]] void fail(std::string_view path, std::string_view what) const {
    MOERUN_THROW("tokenizer {}: {}: {}", label_, path, what);
  }
  static std::string key_path(std::string_view parent, std::string_view key) {
    const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
      return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    });
    if (plain) return parent.empty() ? std::string(key) : fmt::format("{}.{}", parent, key);
    return fmt::format("{}[{}]", parent, quote(key));
  }
  static std::string index_path(std::string_view parent, size_t i) {
    return fmt::format("{}[{}]", parent, i);
  }

  void require_object(const json& v, std::string_view path) const {
    if (!v.is_object()) fail(path, fmt::format("expected an object, got {}", v.type_name()));
  }
  const json& member(const json& obj, std::string_view path, std::string_view key) const {
    require_object(obj, path);
    auto it = obj.find(key);
    if (it == obj.end()) fail(key_path(path, key), "missing");
    return *it;
  }
  // Unknown keys are errors: a field we do not know might change the output.
  void check_keys(const json& obj, std::string_view path,
                  std::initializer_list<std::string_view> allowed) const {
    require_object(obj, path);
    for (auto it = obj.begin(); it != obj.end(); ++it) {
      if (std::find(allowed.begin(), allowed.end(), it.key()) == allowed.end()) {
        fail(key_path(path, it.key()), "unknown field");
      }
    }
  }
  const std::string& get_string(const json& v, std::string_view path) const {
    if (!v.is_string()) fail(path, fmt::format("expected a string, got {}", v.type_name()));
    return v.get_ref<const std::string&>();
  }
  bool get_bool(const json& v, std::string_view path) const {
    if (!v.is_boolean()) fail(path, fmt::format("expected true or false, got {}", v.type_name()));
    return v.get<bool>();
  }
  int32_t get_id(const json& v, std::string_view path) const {
    if (!v.is_number_integer()) {
      fail(path, fmt::format("expected an integer token id, got {}", v.type_name()));
    }
    const bool negative = !v.is_number_unsigned() && v.get<int64_t>() < 0;
    if (negative || v.get<uint64_t>() > static_cast<uint64_t>(kMaxTokenId)) {
      fail(path, fmt::format("token id {} out of range [0, {}]", describe(v), kMaxTokenId));
    }
    return static_cast<int32_t>(v.get<int64_t>());
  }
  void require_null(const json& obj, std::string_view path, std::string_view key,
                    std::string_view why) const {
    auto it = obj.find(key);
    if (it != obj.end() && !it->is_null()) {
      fail(key_path(path, key), fmt::format("{} is not supported ({})", describe(*it), why));
    }
  }
  void require_false(const json& obj, std::string_view path, std::string_view key) const {
    auto it = obj.find(key);
    if (it != obj.end() && get_bool(*it, key_path(path, key))) {
      fail(key_path(path, key), "true is not supported");
    }
  }

  void load_normalizer(const json& n, const std::string& path, int depth) const;
  void load_pre_tokenizer(const json& pt, const std::string& path, int depth, Impl& impl,
                          bool* byte_level_seen) const;
  void load_decoder(const json& d) const;
  Regex compile(std::string_view pattern, bool literal, const std::string& path) const;
  void load_model(const json& model, Impl& impl,
                  std::unordered_map<std::string_view, int32_t>& vocab,
                  std::vector<std::pair<std::string_view, int32_t>>& entries) const;
  void load_added_tokens(const json& list, Impl& impl,
                         const std::unordered_map<std::string_view, int32_t>& vocab) const;

  std::string label_;
};

void Loader::load_normalizer(const json& n, const std::string& path, int depth) const {
  if (n.is_null()) return;
  const std::string& type = get_string(member(n, path, "type"), key_path(path, "type"));
  if (type != "Sequence") {
    fail(key_path(path, "type"), fmt::format("unsupported normalizer type {}", type));
  }
  check_keys(n, path, {"type", "normalizers"});
  const std::string list_path = key_path(path, "normalizers");
  const json& list = member(n, path, "normalizers");
  if (!list.is_array()) fail(list_path, fmt::format("expected an array, got {}", list.type_name()));
  if (depth >= kMaxSequenceDepth) fail(path, "Sequence nested too deeply");
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string item_path = index_path(list_path, i);
    if (list[i].is_null()) fail(item_path, "expected a normalizer, got null");
    load_normalizer(list[i], item_path, depth + 1);
  }
}

Regex Loader::compile(std::string_view pattern, bool literal, const std::string& path) const {
  // \C (one byte, even inside a character) would cut pieces that later stages match without a
  // UTF check. PCRE2_LITERAL allows none of the other options (nor needs them).
  const uint32_t options =
      literal ? PCRE2_UTF | PCRE2_LITERAL : PCRE2_UTF | PCRE2_UCP | PCRE2_NEVER_BACKSLASH_C;
  auto try_compile = [&](std::string_view p, int* err, PCRE2_SIZE* err_offset) {
    return Pcre2Code(pcre2_compile(reinterpret_cast<PCRE2_SPTR>(p.data()), p.size(), options, err,
                                   err_offset, nullptr));
  };
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  // The pattern as written first, so that an error offset refers to the file's text.
  Pcre2Code code = try_compile(pattern, &err, &err_offset);
  if (!code) {
    fail(path, fmt::format("invalid regex {}: {} at offset {}", quote(pattern), pcre2_message(err),
                           err_offset));
  }
  if (!literal) {
    const std::string rewritten = onig_compatible(pattern);
    if (rewritten != pattern) {
      code = try_compile(rewritten, &err, &err_offset);
      if (!code) {
        fail(path, fmt::format("regex {} cannot be given Oniguruma's \\s: {}", quote(pattern),
                               pcre2_message(err)));
      }
    }
  }
  Regex re;
  // Without JIT support (or on a JIT error) the interpreter gives the same matches.
  re.jit = pcre2_jit_compile(code.get(), PCRE2_JIT_COMPLETE) == 0;
  re.code = std::move(code);
  return re;
}

void Loader::load_pre_tokenizer(const json& pt, const std::string& path, int depth, Impl& impl,
                                bool* byte_level_seen) const {
  const std::string type_path = key_path(path, "type");
  const std::string& type = get_string(member(pt, path, "type"), type_path);
  if (*byte_level_seen) {
    fail(path, "ByteLevel must be the last pre-tokenizer (later ones would see byte symbols)");
  }
  if (type == "Sequence") {
    check_keys(pt, path, {"type", "pretokenizers"});
    if (depth >= kMaxSequenceDepth) fail(path, "Sequence nested too deeply");
    const std::string list_path = key_path(path, "pretokenizers");
    const json& list = member(pt, path, "pretokenizers");
    if (!list.is_array()) {
      fail(list_path, fmt::format("expected an array, got {}", list.type_name()));
    }
    for (size_t i = 0; i < list.size(); ++i) {
      load_pre_tokenizer(list[i], index_path(list_path, i), depth + 1, impl, byte_level_seen);
    }
  } else if (type == "Split") {
    check_keys(pt, path, {"type", "pattern", "behavior", "invert"});
    const std::string pattern_path = key_path(path, "pattern");
    const json& pattern = member(pt, path, "pattern");
    require_object(pattern, pattern_path);
    if (pattern.size() != 1 || (!pattern.contains("Regex") && !pattern.contains("String"))) {
      fail(pattern_path, "expected {\"Regex\": ...} or {\"String\": ...}");
    }
    const bool literal = pattern.contains("String");
    const std::string source_path = key_path(pattern_path, literal ? "String" : "Regex");
    const std::string& source = get_string(pattern.begin().value(), source_path);
    if (source.empty()) fail(source_path, "empty pattern");
    const std::string behavior_path = key_path(path, "behavior");
    const std::string& behavior = get_string(member(pt, path, "behavior"), behavior_path);
    if (behavior != "Isolated") {
      fail(behavior_path,
           fmt::format("unsupported Split behavior {} (supported: Isolated)", behavior));
    }
    if (get_bool(member(pt, path, "invert"), key_path(path, "invert"))) {
      fail(key_path(path, "invert"), "invert=true is not supported");
    }
    impl.stages.push_back(compile(source, literal, source_path));
  } else if (type == "ByteLevel") {
    check_keys(pt, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
    // HF would prepend a space to every piece: not what DeepSeek-style files ask for.
    require_false(pt, path, "add_prefix_space");
    if (auto it = pt.find("trim_offsets"); it != pt.end()) {
      get_bool(*it, key_path(path, "trim_offsets"));  // offsets only: no effect on ids
    }
    auto use_regex = pt.find("use_regex");  // HF's default is true
    if (use_regex == pt.end() || get_bool(*use_regex, key_path(path, "use_regex"))) {
      impl.stages.push_back(compile(kGpt2Pattern, false, key_path(path, "use_regex")));
    }
    *byte_level_seen = true;
  } else {
    fail(type_path, fmt::format("unsupported pre-tokenizer type {} (supported: Sequence, Split, "
                                "ByteLevel)",
                                type));
  }
}

void Loader::load_decoder(const json& d) const {
  const std::string path = "decoder";
  if (d.is_null()) fail(path, "null is not supported (byte-level BPE needs the ByteLevel decoder)");
  const std::string& type = get_string(member(d, path, "type"), key_path(path, "type"));
  if (type != "ByteLevel") {
    fail(key_path(path, "type"),
         fmt::format("unsupported decoder type {} (supported: ByteLevel)", type));
  }
  check_keys(d, path, {"type", "add_prefix_space", "trim_offsets", "use_regex"});
  // The ByteLevel decoder ignores its options; they are only type-checked.
  for (std::string_view key : {"add_prefix_space", "trim_offsets", "use_regex"}) {
    if (auto it = d.find(key); it != d.end()) get_bool(*it, key_path(path, key));
  }
}

void Loader::load_model(const json& model, Impl& impl,
                        std::unordered_map<std::string_view, int32_t>& vocab,
                        std::vector<std::pair<std::string_view, int32_t>>& entries) const {
  const std::string path = "model";
  const std::string& type = get_string(member(model, path, "type"), "model.type");
  if (type != "BPE") {
    fail("model.type", fmt::format("unknown model type {} (supported: BPE)", type));
  }
  check_keys(model, path,
             {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
              "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"});
  if (auto it = model.find("dropout"); it != model.end() && !it->is_null()) {
    if (!it->is_number() || it->get<double>() != 0.0) {
      fail("model.dropout",
           fmt::format("{} is not supported (encoding must be deterministic)", describe(*it)));
    }
  }
  require_null(model, path, "unk_token", "byte-level BPE never needs an unknown token");
  require_null(model, path, "continuing_subword_prefix", "not used by byte-level BPE");
  require_null(model, path, "end_of_word_suffix", "not used by byte-level BPE");
  require_false(model, path, "byte_fallback");
  require_false(model, path, "ignore_merges");
  if (auto it = model.find("fuse_unk"); it != model.end()) get_bool(*it, "model.fuse_unk");

  // Vocab: spelling -> id, ids unique.
  const json& vocab_json = member(model, path, "vocab");
  require_object(vocab_json, "model.vocab");
  entries.reserve(vocab_json.size());
  vocab.reserve(vocab_json.size());
  int32_t max_id = -1;
  for (auto it = vocab_json.begin(); it != vocab_json.end(); ++it) {
    const std::string& key = it.key();
    const std::string entry_path = key_path("model.vocab", key);
    if (key.empty()) fail(entry_path, "empty token");
    const int32_t id = get_id(it.value(), entry_path);
    vocab.emplace(key, id);
    entries.emplace_back(key, id);
    max_id = std::max(max_id, id);
  }
  std::vector<int32_t> owner(static_cast<size_t>(max_id) + 1, -1);  // entry index per id
  for (size_t i = 0; i < entries.size(); ++i) {
    int32_t& o = owner[entries[i].second];
    if (o >= 0) {
      fail(key_path("model.vocab", entries[i].first),
           fmt::format("duplicate id {}: also the id of {}", entries[i].second,
                       quote(entries[o].first)));
    }
    o = static_cast<int32_t>(i);
  }

  // Every byte needs its symbol, or text with that byte could not be encoded.
  for (int b = 0; b < 256; ++b) {
    std::string symbol;
    utf8::append(symbol, kByteTable.byte_to_cp[b]);
    auto it = vocab.find(symbol);
    if (it == vocab.end()) {
      fail("model.vocab", fmt::format("lacks the byte symbol {} (byte 0x{:02x}); byte-level BPE "
                                      "needs all 256",
                                      quote(symbol), b));
    }
    impl.byte_ids[b] = it->second;
  }

  // Merges: "a b" or ["a", "b"]; a, b and a+b must all be in the vocab. Rank = position.
  const json& merges = member(model, path, "merges");
  if (!merges.is_array()) {
    fail("model.merges", fmt::format("expected an array, got {}", merges.type_name()));
  }
  if (merges.size() > static_cast<size_t>(std::numeric_limits<int32_t>::max())) {
    fail("model.merges", "too many merges");
  }
  impl.merges.reserve(merges.size());
  std::string joined;
  for (size_t i = 0; i < merges.size(); ++i) {
    const std::string merge_path = index_path("model.merges", i);
    const json& m = merges[i];
    std::string_view a;
    std::string_view b;
    if (m.is_string()) {
      const std::string& s = m.get_ref<const std::string&>();
      const size_t space = s.find(' ');
      if (space == std::string::npos || s.find(' ', space + 1) != std::string::npos) {
        fail(merge_path,
             fmt::format("merge {} is not two tokens separated by one space", quote(s)));
      }
      a = std::string_view(s).substr(0, space);
      b = std::string_view(s).substr(space + 1);
    } else if (m.is_array() && m.size() == 2) {
      a = get_string(m[0], index_path(merge_path, 0));
      b = get_string(m[1], index_path(merge_path, 1));
    } else {
      fail(merge_path, fmt::format("expected \"a b\" or [\"a\", \"b\"], got {}", m.type_name()));
    }
    auto find = [&](std::string_view token) {
      auto it = vocab.find(token);
      if (it == vocab.end()) {
        fail(merge_path, fmt::format("merge of {} and {}: {} is not in model.vocab", quote(a),
                                     quote(b), quote(token)));
      }
      return it->second;
    };
    const int32_t a_id = find(a);
    const int32_t b_id = find(b);
    joined.assign(a);
    joined.append(b);
    const int32_t new_id = find(joined);
    impl.merges.insert_or_assign(a_id, b_id, Merge{static_cast<int32_t>(i), new_id});
  }
}

void Loader::load_added_tokens(const json& list, Impl& impl,
                               const std::unordered_map<std::string_view, int32_t>& vocab) const {
  const std::string path = "added_tokens";
  if (!list.is_array()) fail(path, fmt::format("expected an array, got {}", list.type_name()));
  std::unordered_map<std::string_view, size_t> seen;  // content -> index
  // HF assigns the ids itself (AddedVocabulary::add_tokens) and only warns when the file says
  // otherwise: a token in the vocab keeps its vocab id, the others get consecutive ids from
  // max(vocab entries, last added id + 1). A file whose ids differ would decode differently
  // here and in HF, so it is refused.
  int64_t max_added = -1;
  const auto num_vocab = static_cast<int64_t>(vocab.size());
  for (size_t i = 0; i < list.size(); ++i) {
    const std::string item_path = index_path(path, i);
    const json& t = list[i];
    check_keys(t, item_path,
               {"id", "content", "single_word", "lstrip", "rstrip", "normalized", "special"});
    const std::string& content =
        get_string(member(t, item_path, "content"), key_path(item_path, "content"));
    const std::string id_path = key_path(item_path, "id");
    const int32_t id = get_id(member(t, item_path, "id"), id_path);
    auto flag = [&](std::string_view key) {
      return get_bool(member(t, item_path, key), key_path(item_path, key));
    };
    const bool single_word = flag("single_word");
    const bool lstrip = flag("lstrip");
    const bool rstrip = flag("rstrip");
    const bool normalized = flag("normalized");
    const bool special = flag("special");
    if (content.empty()) fail(key_path(item_path, "content"), "empty token");
    if (single_word) fail(key_path(item_path, "single_word"), "true is not supported");
    if (auto [it, inserted] = seen.emplace(content, i); !inserted) {
      fail(key_path(item_path, "content"),
           fmt::format("{} is also added_tokens[{}]", quote(content), it->second));
    }

    if (static_cast<size_t>(id) >= impl.tokens.size()) {
      impl.tokens.resize(static_cast<size_t>(id) + 1);
    }
    Impl::TokenInfo& info = impl.tokens[id];
    if (info.present) {
      const std::string_view existing(impl.text_arena.data() + info.text_off, info.text_len);
      if (existing != content) {
        fail(id_path, fmt::format("id {} of {} is already the id of {}", id, quote(content),
                                  quote(existing)));
      }
    }
    int64_t expected = 0;
    if (auto v = vocab.find(content); v != vocab.end()) {
      expected = v->second;
    } else {
      expected = (max_added >= num_vocab || num_vocab == 0) ? max_added + 1 : num_vocab;
    }
    if (id != expected) {
      fail(id_path, fmt::format("{} has id {}, but Hugging Face tokenizers assigns it id {} "
                                "(a vocab token keeps its vocab id; others get consecutive ids "
                                "after the vocab)",
                                quote(content), id, expected));
    }
    max_added = std::max<int64_t>(max_added, id);
    info.special = special;
    if (!info.present) {
      info.present = true;
      info.text_off = static_cast<uint32_t>(impl.text_arena.size());
      info.text_len = static_cast<uint32_t>(content.size());
      impl.text_arena += content;
    }
    const auto index = static_cast<int32_t>(impl.added.size());
    impl.added.push_back({id, lstrip, rstrip});
    (normalized ? impl.normalized_trie : impl.raw_trie).insert(content, index);
  }
}

std::shared_ptr<Impl> Loader::load(const json& root) {
  auto impl = std::make_shared<Impl>();
  impl->label = label_;
  require_object(root, "(top level)");
  check_keys(root, "",
             {"version", "truncation", "padding", "added_tokens", "normalizer", "pre_tokenizer",
              "post_processor", "decoder", "model"});
  require_null(root, "", "truncation", "encode() returns every token");
  require_null(root, "", "padding", "encode() returns every token");
  // post_processor: not applied (see tokenizer.h); only its shape is checked.
  if (auto it = root.find("post_processor"); it != root.end() && !it->is_null()) {
    get_string(member(*it, "post_processor", "type"), "post_processor.type");
  }
  if (auto it = root.find("normalizer"); it != root.end()) load_normalizer(*it, "normalizer", 0);
  const json& pre_tokenizer = member(root, "", "pre_tokenizer");
  if (pre_tokenizer.is_null()) {
    fail("pre_tokenizer", "null is not supported (byte-level BPE needs a ByteLevel pre-tokenizer)");
  }
  bool byte_level_seen = false;
  load_pre_tokenizer(pre_tokenizer, "pre_tokenizer", 0, *impl, &byte_level_seen);
  if (!byte_level_seen) {
    fail("pre_tokenizer", "no ByteLevel pre-tokenizer (needed by byte-level BPE)");
  }
  load_decoder(member(root, "", "decoder"));

  std::unordered_map<std::string_view, int32_t> vocab;
  std::vector<std::pair<std::string_view, int32_t>> entries;
  load_model(member(root, "", "model"), *impl, vocab, entries);

  // Token table: vocab first, then the added tokens (which may repeat vocab entries).
  int32_t max_id = -1;
  for (const auto& [text, id] : entries) max_id = std::max(max_id, id);
  impl->tokens.resize(static_cast<size_t>(max_id) + 1);
  size_t text_bytes = 0;
  for (const auto& [text, id] : entries) text_bytes += text.size();
  impl->text_arena.reserve(text_bytes);
  for (const auto& [text, id] : entries) {
    Impl::TokenInfo& info = impl->tokens[id];
    info.present = true;
    info.text_off = static_cast<uint32_t>(impl->text_arena.size());
    info.text_len = static_cast<uint32_t>(text.size());
    impl->text_arena += text;
  }
  load_added_tokens(member(root, "", "added_tokens"), *impl, vocab);

  // Decoded bytes and the spelling index (built once the arena no longer moves).
  impl->by_text.reserve(impl->tokens.size());
  for (size_t id = 0; id < impl->tokens.size(); ++id) {
    Impl::TokenInfo& info = impl->tokens[id];
    if (!info.present) continue;
    const std::string_view text(impl->text_arena.data() + info.text_off, info.text_len);
    impl->by_text.emplace(text, static_cast<int32_t>(id));
    const std::optional<std::string> bytes = byte_level_to_bytes(text);
    info.bytes_off = static_cast<uint32_t>(impl->bytes_arena.size());
    info.bytes_len = static_cast<uint32_t>(bytes ? bytes->size() : text.size());
    impl->bytes_arena += bytes ? *bytes : std::string(text);
  }
  return impl;
}

// ---- encoding -----------------------------------------------------------------------------
// State of one encode() call: PCRE2 match data per stage, BPE scratch space and the word cache.
class Encoder {
 public:
  Encoder(const Impl& impl, std::vector<int32_t>& out) : impl_(impl), out_(out) {
    match_data_.reserve(impl.stages.size());
    for (const Regex& re : impl.stages) {
      match_data_.emplace_back(pcre2_match_data_create_from_pattern(re.code.get(), nullptr));
      MOERUN_CHECK(match_data_.back() != nullptr,
                   "tokenizer {}: out of memory for PCRE2 match data", impl.label);
    }
  }

  // Added tokens first: normalized=false ones on the raw text, then normalized=true ones in
  // the pieces between (HF AddedVocabulary::extract_and_normalize; the normalizer is empty).
  void encode_matching_added(std::string_view text) {
    split_added(impl_.raw_trie, text, [&](std::string_view gap) {
      split_added(impl_.normalized_trie, gap,
                  [&](std::string_view piece) { pre_tokenize(0, piece); });
    });
  }

  void encode_as_text(std::string_view text) { pre_tokenize(0, text); }

  // Like encode_matching_added over `text`, but an added token is only taken where it lies
  // wholly inside one of `allowed` (byte ranges of `text`, sorted, disjoint); everywhere else
  // its spelling is text. The runs between taken tokens are pre-tokenized whole.
  void encode_matching_in(std::string_view text,
                          const std::vector<std::pair<size_t, size_t>>& allowed) {
    base_ = text.data();
    allowed_ = &allowed;
    encode_matching_added(text);
    allowed_ = nullptr;
  }

 private:
  // Whether a match of `len` bytes at `at` (inside the text being encoded) may be taken.
  bool match_allowed(const char* at, size_t len) const {
    if (allowed_ == nullptr) return true;
    const auto begin = static_cast<size_t>(at - base_);
    const auto it =
        std::upper_bound(allowed_->begin(), allowed_->end(), begin,
                         [](size_t b, const std::pair<size_t, size_t>& r) { return b < r.first; });
    if (it == allowed_->begin()) return false;
    const auto& range = *std::prev(it);
    return begin >= range.first && begin + len <= range.second;
  }

  // Calls on_gap for the text between added-token matches and appends the tokens' ids
  // (HF AddedVocabulary::find_matches, with lstrip/rstrip). Scanning resumes after a token's
  // stripped whitespace; HF resumes right after the token, which differs only when a
  // token starts with whitespace that a previous rstrip took.
  template <class OnGap>
  void split_added(const TokenTrie& trie, std::string_view text, OnGap&& on_gap) {
    if (trie.empty()) {
      if (!text.empty()) on_gap(text);
      return;
    }
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    size_t gap_begin = 0;
    size_t pos = 0;
    while (pos < text.size()) {
      if (!trie.may_start(p[pos])) {
        ++pos;
        continue;
      }
      const auto [len, index] = trie.longest_at(text, pos);
      if (len == 0 || !match_allowed(text.data() + pos, len)) {
        ++pos;
        continue;
      }
      const Impl::Added& token = impl_.added[index];
      size_t start = pos;
      size_t stop = pos + len;
      if (token.lstrip) start = skip_space_backward(text, start, gap_begin);
      if (token.rstrip) stop = skip_space_forward(text, stop);
      if (start > gap_begin) on_gap(text.substr(gap_begin, start - gap_begin));
      out_.push_back(token.id);
      gap_begin = stop;
      pos = stop;
    }
    if (gap_begin < text.size()) on_gap(text.substr(gap_begin));
  }

  static size_t skip_space_forward(std::string_view text, size_t pos) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    while (pos < text.size()) {
      const Utf8Step step = utf8_step(p + pos, text.size() - pos);  // text is valid UTF-8
      if (!is_white_space(decode_cp(p + pos, step.len))) break;
      pos += step.len;
    }
    return pos;
  }
  // Stops at `limit` (the end of the previous token): HF takes max(stripped start, limit).
  static size_t skip_space_backward(std::string_view text, size_t pos, size_t limit) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    while (pos > limit) {
      size_t begin = pos - 1;
      while (begin > limit && (p[begin] & 0xC0) == 0x80) --begin;
      if (!is_white_space(decode_cp(p + begin, pos - begin))) break;
      pos = begin;
    }
    return pos;
  }

  // Split(Isolated) stage `stage` on `piece`: every match and every gap between matches is a
  // piece for the next stage; empty pieces are dropped. Empty matches follow Rust onig's
  // find_iter: one right after the previous match is skipped (search again one character
  // on), others cut the gap they fall in.
  void pre_tokenize(size_t stage, std::string_view piece) {
    if (piece.empty()) return;
    if (stage == impl_.stages.size()) {
      bpe_word(piece);
      return;
    }
    const Regex& re = impl_.stages[stage];
    pcre2_match_data* md = match_data_[stage].get();
    size_t search_from = 0;
    size_t gap_begin = 0;
    size_t last_match_end = std::string_view::npos;
    while (search_from <= piece.size()) {
      size_t begin = 0;
      size_t end = 0;
      if (!search(re, md, piece, search_from, &begin, &end)) break;
      if (begin == end && last_match_end == end) {
        if (search_from == piece.size()) break;
        search_from += utf8_step(reinterpret_cast<const unsigned char*>(piece.data()) + search_from,
                                 piece.size() - search_from)
                           .len;
        continue;
      }
      search_from = end;
      last_match_end = end;
      if (begin > gap_begin) pre_tokenize(stage + 1, piece.substr(gap_begin, begin - gap_begin));
      if (end > begin) pre_tokenize(stage + 1, piece.substr(begin, end - begin));
      gap_begin = end;
    }
    if (gap_begin < piece.size()) pre_tokenize(stage + 1, piece.substr(gap_begin));
  }

  // First match of `re` in subject at or after `from`. The text was validated as UTF-8 and
  // every piece boundary is a character boundary (\C is disabled at compile time).
  bool search(const Regex& re, pcre2_match_data* md, std::string_view subject, size_t from,
              size_t* begin, size_t* end) {
    const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
    int rc = 0;
    if (re.jit) rc = pcre2_jit_match(re.code.get(), s, subject.size(), from, 0, md, nullptr);
    // The interpreter keeps its backtracking state on the heap: it also takes over when a
    // pattern needs more than the JIT's machine-stack default.
    if (!re.jit || rc == PCRE2_ERROR_JIT_STACKLIMIT) {
      rc = pcre2_match(re.code.get(), s, subject.size(), from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT,
                       md, nullptr);
    }
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      MOERUN_THROW("tokenizer {}: pre-tokenizer regex failed on a {}-byte piece: {}", impl_.label,
                   subject.size(), pcre2_message(rc));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    // \K can report a start after the end; such a match has no sensible split.
    if (ov[0] < from || ov[0] > ov[1] || ov[1] > subject.size()) {
      MOERUN_THROW("tokenizer {}: pre-tokenizer regex reported match [{}, {}) outside [{}, {}]",
                   impl_.label, ov[0], ov[1], from, subject.size());
    }
    *begin = ov[0];
    *end = ov[1];
    return true;
  }

  // BPE on one pre-token's bytes, memoized per call.
  void bpe_word(std::string_view word) {
    const auto* p = reinterpret_cast<const unsigned char*>(word.data());
    if (word.size() == 1) {
      out_.push_back(impl_.byte_ids[p[0]]);
      return;
    }
    const uint64_t h = WordCache::hash(word);
    if (const std::span<const int32_t> ids = cache_.find(word, h); !ids.empty()) {
      out_.insert(out_.end(), ids.begin(), ids.end());
      return;
    }
    const size_t out_begin = out_.size();
    merge(p, word.size());
    cache_.insert(word, h, std::span<const int32_t>(out_).subspan(out_begin));
  }

  // HF models/bpe/word.rs merge_all: symbols in a linked list, candidate pairs in a min-heap
  // ordered by (rank, position); a popped candidate is stale when its left symbol was merged
  // away or the pair no longer yields the same token. O(n log n) in the word's length.
  void merge(const unsigned char* p, size_t n) {
    symbols_.resize(n);
    for (size_t i = 0; i < n; ++i) {
      symbols_[i] = Symbol{impl_.byte_ids[p[i]], static_cast<int32_t>(i) - 1,
                           i + 1 < n ? static_cast<int32_t>(i + 1) : -1, true};
    }
    heap_.clear();
    for (size_t i = 0; i + 1 < n; ++i) push_candidate(static_cast<int32_t>(i));
    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end(), Candidate::later);
      const Candidate top = heap_.back();
      heap_.pop_back();
      Symbol& left = symbols_[top.pos];
      if (!left.alive || left.next < 0) continue;
      Symbol& right = symbols_[left.next];
      const Merge* m = impl_.merges.find(left.id, right.id);
      if (m == nullptr || m->new_id != top.new_id) continue;
      left.id = top.new_id;
      right.alive = false;
      left.next = right.next;
      if (left.next >= 0) symbols_[left.next].prev = top.pos;
      if (left.prev >= 0) push_candidate(left.prev);
      push_candidate(top.pos);
    }
    for (int32_t i = 0; i >= 0; i = symbols_[i].next) out_.push_back(symbols_[i].id);
  }

  void push_candidate(int32_t pos) {
    const Symbol& left = symbols_[pos];
    if (left.next < 0) return;
    const Merge* m = impl_.merges.find(left.id, symbols_[left.next].id);
    if (m == nullptr) return;
    heap_.push_back(Candidate{m->rank, pos, m->new_id});
    std::push_heap(heap_.begin(), heap_.end(), Candidate::later);
  }

  struct Symbol {
    int32_t id;
    int32_t prev;  // -1: none
    int32_t next;  // -1: none
    bool alive;
  };
  struct Candidate {
    int32_t rank;
    int32_t pos;  // the left symbol
    int32_t new_id;
    // Heap order: the top is the lowest rank, then the leftmost position.
    static bool later(const Candidate& a, const Candidate& b) {
      return a.rank != b.rank ? a.rank > b.rank : a.pos > b.pos;
    }
  };

  const Impl& impl_;
  std::vector<int32_t>& out_;
  const char* base_ = nullptr;  // encode_matching_in: the text `allowed_` indexes
  const std::vector<std::pair<size_t, size_t>>* allowed_ = nullptr;
  std::vector<Pcre2MatchData> match_data_;
  std::vector<Symbol> symbols_;
  std::vector<Candidate> heap_;
  WordCache cache_;  // keys view the text being encoded
};

}  // namespace

// ---- Tokenizer ------------------------------------------------------------------------------
Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::load(const std::filesystem::path& tokenizer_json) {
  std::ifstream in(tokenizer_json, std::ios::binary);
  if (!in) {
    MOERUN_THROW("tokenizer {}: cannot open: {}", tokenizer_json.string(),
                 detail::errno_string(errno));
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) MOERUN_THROW("tokenizer {}: read error", tokenizer_json.string());
  return from_json(text, tokenizer_json.string());
}

Tokenizer Tokenizer::from_json(std::string_view json_text, std::string_view label) {
  if (json_text.size() > kMaxJsonBytes) {
    MOERUN_THROW("tokenizer {}: {} bytes is larger than the {} accepted", label, json_text.size(),
                 kMaxJsonBytes);
  }
  json root;
  try {
    root = json::parse(json_text);
  } catch (const json::exception& e) {
    MOERUN_THROW("tokenizer {}: invalid JSON: {}", label, e.what());
  }
  try {
    return Tokenizer(Loader(label).load(root));
  } catch (const json::exception& e) {  // a type the checks above did not foresee
    MOERUN_THROW("tokenizer {}: unexpected JSON content: {}", label, e.what());
  }
}

namespace {
// What encode() accepts: at most kMaxTextBytes of valid UTF-8.
void check_text(const Tokenizer::Impl& impl, std::string_view text) {
  if (text.size() > kMaxTextBytes) {
    MOERUN_THROW("tokenizer {}: text of {} bytes is longer than the {} accepted", impl.label,
                 text.size(), kMaxTextBytes);
  }
  const size_t bad = find_invalid_utf8(text);
  if (bad != std::string_view::npos) {
    MOERUN_THROW("tokenizer {}: text is not valid UTF-8 at byte offset {} (byte 0x{:02x})",
                 impl.label, bad, static_cast<unsigned char>(text[bad]));
  }
}
}  // namespace

std::vector<int32_t> Tokenizer::encode(std::string_view text, SpecialTokens mode) const {
  check_text(*impl_, text);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  Encoder encoder(*impl_, ids);
  if (mode == SpecialTokens::kMatch) {
    encoder.encode_matching_added(text);
  } else {
    encoder.encode_as_text(text);
  }
  return ids;
}

std::vector<int32_t> Tokenizer::encode_spans(std::span<const TextSpan> spans) const {
  std::string text;
  std::vector<std::pair<size_t, size_t>> allowed;
  for (const TextSpan& span : spans) {
    if (span.mode == SpecialTokens::kMatch && !span.text.empty()) {
      if (!allowed.empty() && allowed.back().second == text.size()) {
        allowed.back().second += span.text.size();  // adjacent kMatch spans form one range
      } else {
        allowed.emplace_back(text.size(), text.size() + span.text.size());
      }
    }
    text += span.text;
  }
  check_text(*impl_, text);
  std::vector<int32_t> ids;
  ids.reserve(text.size() / 3 + 8);
  Encoder encoder(*impl_, ids);
  encoder.encode_matching_in(text, allowed);
  return ids;
}

std::string Tokenizer::decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (const int32_t id : ids) {
    const Impl::TokenInfo& t = impl_->token(id);
    if (skip_special && t.special) continue;
    bytes.append(impl_->bytes_of(t));
  }
  if (find_invalid_utf8(bytes) == std::string_view::npos) return bytes;
  std::string out;
  out.reserve(bytes.size() + 16);
  append_lossy(out, bytes, /*hold_incomplete=*/false);
  return out;
}

int64_t Tokenizer::vocab_size() const {
  return static_cast<int64_t>(impl_->tokens.size());
}

std::optional<int32_t> Tokenizer::token_to_id(std::string_view token) const {
  auto it = impl_->by_text.find(token);
  if (it == impl_->by_text.end()) return std::nullopt;
  return it->second;
}

std::string_view Tokenizer::id_to_token(int32_t id) const {
  const Impl::TokenInfo& t = impl_->token(id);
  return std::string_view(impl_->text_arena).substr(t.text_off, t.text_len);
}

bool Tokenizer::is_special(int32_t id) const {
  return id >= 0 && static_cast<size_t>(id) < impl_->tokens.size() && impl_->tokens[id].present &&
         impl_->tokens[id].special;
}

// ---- StreamDecoder --------------------------------------------------------------------------
StreamDecoder::StreamDecoder(const Tokenizer& t, bool skip_special)
    : impl_(t.impl_), skip_special_(skip_special) {}

std::string StreamDecoder::push(int32_t id) {
  const Tokenizer::Impl::TokenInfo& t = impl_->token(id);
  if (skip_special_ && t.special) return {};
  pending_.append(impl_->bytes_of(t));
  std::string out;
  const size_t consumed = append_lossy(out, pending_, /*hold_incomplete=*/true);
  pending_.erase(0, consumed);
  return out;
}

std::string StreamDecoder::finish() {
  std::string out;
  append_lossy(out, pending_, /*hold_incomplete=*/false);
  pending_.clear();
  return out;
}

}  // namespace moerun
