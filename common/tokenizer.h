// Byte-level BPE tokenizer read from a Hugging Face tokenizer.json of the kind DeepSeek ships
// (DeepSeek-V3 / V4: 128,000 BPE entries plus 818 / 1,283 added tokens).
//
// Encoding follows the Rust `tokenizers` library step by step (checked against its output in
// ../shared/golden/tokenizer-small/cases.jsonl and against the real DeepSeek-V3 file):
//   1. added tokens are split out of the raw text first, leftmost-longest (a trie); tokens
//      with normalized=false in a first pass, normalized=true ones in the pieces left over;
//   2. each remaining piece goes through the pre-tokenizer: a Sequence of Split(Regex,
//      Isolated) run by PCRE2 (UTF + UCP, JIT), then ByteLevel;
//   3. each pre-token is mapped to GPT-2 byte symbols and merged by lowest merge rank (ties:
//      leftmost first), with a per-call cache of words already seen.
// No BOS or EOS is ever added: encode() equals HF's encode(text, add_special_tokens=False);
// a BOS appears only where the text spells it. Special-token ids come from the file.
//
// Decoding maps each token's characters back through the byte table (a token with a
// character outside the table, e.g. <｜User｜>, contributes its UTF-8 text as is), then
// turns the bytes into UTF-8 the way Rust's String::from_utf8_lossy does (each maximal
// invalid subpart becomes U+FFFD).
//
// Supported tokenizer.json features (anything else is a load error naming the file and the
// JSON path): normalizer null or an empty Sequence; pre_tokenizer = Split(Regex or String
// pattern, behavior Isolated, invert false)... followed by ByteLevel(add_prefix_space false;
// use_regex true adds GPT-2's regex); model BPE with merges as "a b" strings or [a, b] pairs,
// byte_fallback false, unk_token / dropout / continuing_subword_prefix / end_of_word_suffix
// null, ignore_merges false; decoder ByteLevel; truncation and padding null; added tokens with
// lstrip / rstrip (single_word=true is rejected). post_processor is not applied (it only adds
// tokens when special tokens are requested, which encode() never does). HF assigns added-token
// ids itself and only warns when the file disagrees; a file whose ids differ from HF's is
// refused, so ids here and in HF are always the same. The vocab must hold all 256 byte
// symbols; ids go up to 4,194,303.
// Regex classes follow Oniguruma (which HF uses) rather than PCRE2 where they differ: \s and
// \S mean Unicode White_Space (PCRE2's \s also takes U+180E).
//
// Thread safety: a Tokenizer is immutable after load; encode/decode may run concurrently.
// Copies share the loaded data. A StreamDecoder belongs to one sequence and one thread.
#pragma once

#include <cstdint>
#include <filesystem>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace moerun {

// How encode() treats text that spells an added token such as <｜User｜>.
enum class SpecialTokens {
  kMatch,   // added tokens in the text are matched first (HF default): for prompts we build
  kAsText,  // the text is purely text: added-token spellings become ordinary BPE tokens
            // (user-supplied message content must never turn into a control token)
};

// A part of a text to encode and whether added tokens may be matched inside it.
struct TextSpan {
  std::string_view text;
  SpecialTokens mode = SpecialTokens::kMatch;
};

class Tokenizer {
 public:
  // Reads and validates a tokenizer.json; throws moerun::Error naming the file and the JSON
  // path of the first problem.
  static Tokenizer load(const std::filesystem::path& tokenizer_json);
  // Same, from text in memory; `label` names the source in errors.
  static Tokenizer from_json(std::string_view json_text, std::string_view label);

  // Token ids of `text`, no BOS added. Throws moerun::Error naming the byte offset when
  // `text` is not valid UTF-8.
  std::vector<int32_t> encode(std::string_view text,
                              SpecialTokens mode = SpecialTokens::kMatch) const;
  // Encodes the concatenation of `spans` as one text in which added tokens are matched only
  // where they lie wholly inside kMatch spans; elsewhere their spellings are text. The text
  // between matched tokens is pre-tokenized as one run across span boundaries, so when no
  // kAsText span spells an added token the ids equal encode(concatenation). This is how a
  // chat prompt is tokenized: the template's pieces kMatch, message contents kAsText.
  std::vector<int32_t> encode_spans(std::span<const TextSpan> spans) const;
  // The text of `ids` (special tokens included unless skip_special). Throws moerun::Error
  // naming an id that has no token (negative, >= vocab_size(), or a gap in the id range).
  std::string decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // Max id + 1 over the vocab and the added tokens (= embedding rows).
  int64_t vocab_size() const;
  // Id of a vocab entry (in its byte-level spelling, e.g. "Ġthe") or an added token.
  std::optional<int32_t> token_to_id(std::string_view token) const;
  // The token's spelling as in the file; throws moerun::Error when `id` has no token.
  std::string_view id_to_token(int32_t id) const;
  // True for added tokens with special=true (the ones decode(skip_special) drops).
  bool is_special(int32_t id) const;

  struct Impl;  // in tokenizer.cc

 private:
  explicit Tokenizer(std::shared_ptr<const Impl> impl);
  std::shared_ptr<const Impl> impl_;
  friend class StreamDecoder;
};

// Incremental decoding for streaming: push() returns the text completed by one more token.
// The concatenation of all push() results and finish() equals decode() of all the ids; every
// piece is valid UTF-8 (bytes of a character split across tokens are held back until it is
// complete or can no longer become valid, then emitted as the character or U+FFFD).
// One per sequence; not thread-safe. Keeps the tokenizer's data alive.
class StreamDecoder {
 public:
  explicit StreamDecoder(const Tokenizer& t, bool skip_special = false);

  // Throws moerun::Error for an id without a token (and then ignores that id).
  std::string push(int32_t id);
  // Whatever is held back (an incomplete character becomes U+FFFD); the decoder is then
  // empty and may be reused.
  std::string finish();

 private:
  std::shared_ptr<const Tokenizer::Impl> impl_;
  bool skip_special_;
  std::string pending_;  // bytes of an incomplete UTF-8 sequence, at most 3
};

}  // namespace moerun
