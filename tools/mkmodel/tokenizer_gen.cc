// Synthetic DeepSeek-shaped tokenizer.json / tokenizer_config.json (see tokenizer_gen.h).
//
// The merges are learned by plain byte-level BPE training on a built-in corpus of a few KB.
// The corpus is pre-tokenized with a simple GPT-2-like splitter rather than DeepSeek's regex:
// merges only have to be valid (both sides and their concatenation in the vocabulary) and
// deterministic, not to match what the real pre-tokenizer would learn. Training is greedy
// over the whole corpus (most frequent pair first, ties by the smallest pair, count >= 2), so
// a smaller budget yields a prefix of a larger one's merges.
#include "tools/mkmodel/tokenizer_gen.h"

#include <array>
#include <cstddef>
#include <map>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace moerun::mkmodel {
namespace {

using nlohmann::json;

constexpr int64_t kNumLeadingTokens = 3;  // BOS, EOS, pad
constexpr int64_t kNumByteTokens = 256;
constexpr int64_t kFirstMergeId = kNumLeadingTokens + kNumByteTokens;  // 259
// A pair seen once is noise; the fixture used the same floor.
constexpr int64_t kMinMergeCount = 2;

// Block sizes: the real model's, and the fixture's for any other vocabulary size.
constexpr int64_t kDsv4NumPlaceholders = 800;
constexpr int64_t kDsv4NumMmSpans = 415;
constexpr int64_t kSmallNumPlaceholders = 10;
constexpr int64_t kSmallNumMmSpans = 5;
// DeepSeek's mm-span tokens are numbered from 0021 (0000..0020 are not in the vocabulary).
constexpr int64_t kFirstMmSpanNumber = 21;

// The flags of each added token, copied from the fixture token by token (its README says they
// are V3-like; DeepSeek-V4's real flags are not known). All have lstrip/rstrip/single_word false.
enum class TokenFlags {
  kControl,            // special: true,  normalized: false
  kText,               // special: false, normalized: true  (chat/fim/tool markers, <think>)
  kSpecialNormalized,  // special: true,  normalized: true  (only <|EOT|>)
};

struct NamedToken {
  std::string_view content;
  TokenFlags flags;
};

// Ids 0..2, also in model.vocab.
constexpr std::array<NamedToken, kNumLeadingTokens> kLeadingTokens = {{
    {"<｜begin▁of▁sentence｜>", TokenFlags::kControl},
    {"<｜end▁of▁sentence｜>", TokenFlags::kControl},
    {"<｜▁pad▁｜>", TokenFlags::kControl},
}};

// The named tokens between the placeholders and the mm spans, in id order (real ids
// 128800..128846).
constexpr std::array<NamedToken, 47> kNamedTokens = {{
    {"<｜fim▁hole｜>", TokenFlags::kText},
    {"<｜fim▁begin｜>", TokenFlags::kText},
    {"<｜fim▁end｜>", TokenFlags::kText},
    {"<｜User｜>", TokenFlags::kText},
    {"<｜Assistant｜>", TokenFlags::kText},
    {"<|EOT|>", TokenFlags::kSpecialNormalized},
    {"<｜tool▁calls▁begin｜>", TokenFlags::kText},
    {"<｜tool▁calls▁end｜>", TokenFlags::kText},
    {"<｜tool▁call▁begin｜>", TokenFlags::kText},
    {"<｜tool▁call▁end｜>", TokenFlags::kText},
    {"<｜tool▁outputs▁begin｜>", TokenFlags::kText},
    {"<｜tool▁outputs▁end｜>", TokenFlags::kText},
    {"<｜tool▁output▁begin｜>", TokenFlags::kText},
    {"<｜tool▁output▁end｜>", TokenFlags::kText},
    {"<｜tool▁sep｜>", TokenFlags::kText},
    {"<｜begin▁of▁repo▁name｜>", TokenFlags::kControl},
    {"<｜end▁of▁repo▁name｜>", TokenFlags::kControl},
    {"<｜begin▁of▁file▁name｜>", TokenFlags::kControl},
    {"<｜end▁of▁file▁name｜>", TokenFlags::kControl},
    {"<｜begin▁of▁file｜>", TokenFlags::kControl},
    {"<｜end▁of▁file｜>", TokenFlags::kControl},
    {"<think>", TokenFlags::kText},
    {"</think>", TokenFlags::kText},
    {"<｜place▁holder▁for▁copy｜>", TokenFlags::kControl},
    {"<｜place▁holder▁for▁pointer▁replace｜>", TokenFlags::kControl},
    {"｜DSML｜", TokenFlags::kText},
    {"<｜begin▁sys｜>", TokenFlags::kControl},
    {"<｜end▁sys｜>", TokenFlags::kControl},
    {"<｜latest_reminder｜>", TokenFlags::kControl},
    {"<｜action｜>", TokenFlags::kControl},
    {"<｜query｜>", TokenFlags::kControl},
    {"<｜authority｜>", TokenFlags::kControl},
    {"<｜domain｜>", TokenFlags::kControl},
    {"<｜task｜>", TokenFlags::kControl},
    {"<｜political｜>", TokenFlags::kControl},
    {"<｜entity｜>", TokenFlags::kControl},
    {"<｜title｜>", TokenFlags::kControl},
    {"<｜safety｜>", TokenFlags::kControl},
    {"<｜answer｜>", TokenFlags::kControl},
    {"<｜search｜>", TokenFlags::kControl},
    {"<dsml:", TokenFlags::kControl},
    {"</dsml:", TokenFlags::kControl},
    {"<｜search▁begin｜>", TokenFlags::kControl},
    {"<｜search▁end｜>", TokenFlags::kControl},
    {"<｜extracted_url｜>", TokenFlags::kControl},
    {"<｜read_url｜>", TokenFlags::kControl},
    {"<｜end_of_query｜>", TokenFlags::kControl},
}};

// The last 18 ids of the vocabulary (real 129262..129279), including DeepSeek's odd
// "<｜/table>｜".
constexpr std::array<NamedToken, 18> kImageTokens = {{
    {"<｜rl_image_pad｜>", TokenFlags::kControl},
    {"<｜rl_image_start｜>", TokenFlags::kControl},
    {"<｜image2｜>", TokenFlags::kControl},
    {"<｜/table>｜", TokenFlags::kControl},
    {"<｜table｜>", TokenFlags::kControl},
    {"<｜/td｜>", TokenFlags::kControl},
    {"<｜td｜>", TokenFlags::kControl},
    {"<｜/tr｜>", TokenFlags::kControl},
    {"<｜tr｜>", TokenFlags::kControl},
    {"<｜/polygon｜>", TokenFlags::kControl},
    {"<｜polygon｜>", TokenFlags::kControl},
    {"<｜/point｜>", TokenFlags::kControl},
    {"<｜point｜>", TokenFlags::kControl},
    {"<｜/box｜>", TokenFlags::kControl},
    {"<｜box｜>", TokenFlags::kControl},
    {"<｜/ref｜>", TokenFlags::kControl},
    {"<｜ref｜>", TokenFlags::kControl},
    {"<｜image｜>", TokenFlags::kControl},
}};

// std::array zero-fills missing initializers; an empty last entry means one was left out.
static_assert(!kNamedTokens.back().content.empty() && !kImageTokens.back().content.empty());
// The sizes in the header follow from the block layout.
static_assert(kMinTokenizerVocabSize == kFirstMergeId + kSmallNumPlaceholders +
                                            std::ssize(kNamedTokens) + kSmallNumMmSpans +
                                            std::ssize(kImageTokens));
// Real ids: the block starts at 128000 and <｜fim▁hole｜> is 128800 (model spec §4.1).
static_assert(kDsv4VocabSize - kDsv4NumPlaceholders - std::ssize(kNamedTokens) - kDsv4NumMmSpans -
                  std::ssize(kImageTokens) ==
              128000);

// normalizer, pre_tokenizer, post_processor and decoder, copied verbatim from the fixture
// (which copied them from DeepSeek-V3's tokenizer.json). Kept as JSON text, not C++ string
// escapes, so the long regex can be compared with the fixture by eye. The "\r\n" inside the
// regexes are JSON escapes for real CR/LF characters, as in the original.
constexpr std::string_view kPipelineJson = R"json({
  "normalizer": {"type": "Sequence", "normalizers": []},
  "pre_tokenizer": {
    "type": "Sequence",
    "pretokenizers": [
      {"type": "Split", "pattern": {"Regex": "\\p{N}{1,3}"},
       "behavior": "Isolated", "invert": false},
      {"type": "Split", "pattern": {"Regex": "[一-龥぀-ゟ゠-ヿ]+"},
       "behavior": "Isolated", "invert": false},
      {"type": "Split",
       "pattern": {"Regex": "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"},
       "behavior": "Isolated", "invert": false},
      {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false}
    ]
  },
  "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false,
                     "use_regex": true},
  "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true,
              "use_regex": true}
})json";

// DeepSeek-V4-Flash's tokenizer_config.json (same content as the fixture's).
constexpr std::string_view kTokenizerConfigJson = R"json({
  "add_bos_token": false,
  "add_eos_token": false,
  "bos_token": {"__type": "AddedToken", "content": "<｜begin▁of▁sentence｜>", "lstrip": false,
                "normalized": true, "rstrip": false, "single_word": false},
  "clean_up_tokenization_spaces": false,
  "eos_token": {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>", "lstrip": false,
                "normalized": true, "rstrip": false, "single_word": false},
  "legacy": true,
  "model_max_length": 1048576,
  "pad_token": {"__type": "AddedToken", "content": "<｜end▁of▁sentence｜>", "lstrip": false,
                "normalized": true, "rstrip": false, "single_word": false},
  "sp_model_kwargs": {},
  "unk_token": null,
  "tokenizer_class": "PreTrainedTokenizerFast"
})json";

// The training text: a few KB of the kinds of input a chat model sees, so the merges look like
// a real tokenizer's (" the", "ing", "    ", "return", "\":") and compress such text.
// Adjacent raw literals concatenate into one array, so this is a single contiguous string.
constexpr std::string_view kCorpus =
    R"corpus(The runtime loads a checkpoint, splits the experts across the ranks, and serves
requests over a small network protocol. Each request is tokenized, packed into a batch, and
run through the layers one after another. The attention layers keep a cache of the keys and
values they have seen, so that generating the next token does not repeat the work done for
the earlier ones. When the cache is full, the oldest entries are compressed rather than
thrown away, which is why the model can read a whole book and still answer questions about
the first chapter. The mixture-of-experts layers send every token to six of the two hundred
and fifty-six experts; the router chooses them by score, and the outputs are weighted and
added back together. A good scheduler keeps the network busy while the experts compute.
There is nothing magic about it: the same arithmetic, done in the same order, gives the
same answer every time. That is what makes the tests useful. If the output changes when
the number of ranks changes, something is wrong, and the test says where. We measure the
time to the first token, the time between tokens, and the throughput of the whole system
under load. We also measure memory, because a model that does not fit is not fast.
In the morning the weather was cold and clear; by the afternoon it had started to rain,
and the streets were full of people hurrying home with their collars turned up against the
wind. She said that the meeting would start at nine, but nobody was there until ten.
)corpus"
    R"corpus(
#include <cstdint>
#include <vector>

namespace moerun {

// Returns the index of the largest element, or -1 when the input is empty.
int64_t argmax(const std::vector<float>& values) {
  if (values.empty()) return -1;
  int64_t best_idx = 0;
  for (int64_t i = 1; i < static_cast<int64_t>(values.size()); ++i) {
    if (values[i] > values[best_idx]) best_idx = i;
  }
  return best_idx;
}

struct Config {
  int64_t num_layers = 43;
  int64_t num_experts = 256;
  int64_t hidden_size = 4096;
  float rms_norm_eps = 1e-6f;
};

void softmax(float* data, int64_t size) {
  float max_value = data[0];
  for (int64_t i = 1; i < size; ++i) max_value = std::max(max_value, data[i]);
  float sum = 0.0f;
  for (int64_t i = 0; i < size; ++i) {
    data[i] = std::exp(data[i] - max_value);
    sum += data[i];
  }
  for (int64_t i = 0; i < size; ++i) data[i] /= sum;
}

}  // namespace moerun
)corpus"
    R"corpus(
import json
import numpy as np


def load_config(path):
    """Read a model config and return it as a dictionary."""
    with open(path, "r", encoding="utf-8") as f:
        config = json.load(f)
    if "vocab_size" not in config:
        raise ValueError(f"missing vocab_size in {path}")
    return config


class Tokenizer:
    def __init__(self, vocab, merges):
        self.vocab = vocab
        self.merges = {pair: rank for rank, pair in enumerate(merges)}

    def encode(self, text):
        tokens = list(text.encode("utf-8"))
        for i in range(len(tokens) - 1):
            pair = (tokens[i], tokens[i + 1])
            if pair in self.merges:
                return self.merges[pair]
        return tokens


def main():
    config = load_config("config.json")
    print("layers:", config["num_hidden_layers"], "experts:", config["n_routed_experts"])
    for name, value in sorted(config.items()):
        print(f"{name} = {value}")


if __name__ == "__main__":
    main()
)corpus"
    R"corpus(
{
  "model": "deepseek-v4-flash",
  "messages": [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "The capital of France is Paris."}
  ],
  "max_tokens": 1024,
  "temperature": 0.7,
  "top_p": 0.95,
  "stream": true,
  "usage": {"prompt_tokens": 123, "completion_tokens": 456, "total_tokens": 579},
  "choices": [
    {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}
  ],
  "created": 1718000000,
  "id": "chatcmpl-0123456789"
}
)corpus"
    R"corpus(
人工智能是计算机科学的一个分支，它试图理解智能的本质，并生产出一种新的能以人类智能相似的方式做出反应的智能机器。
今天的天气很好，我们一起去公园散步吧。这个模型的参数很多，但是每个词只使用其中的一小部分专家。
深度学习模型需要大量的数据和计算资源。我们的系统把专家分布在多个机器上，每个机器负责一部分专家。
東京は日本の首都です。今日はとても良い天気ですね。このプログラムは、モデルの重みを読み込んで、文章を生成します。
カタカナとひらがなと漢字を使って日本語を書きます。モデルは質問に答えます。
)corpus";

// ---- byte symbols ------------------------------------------------------------------------

// UTF-8 of a code point below U+0800 (all byte symbols are below U+0144).
std::string utf8_2byte(uint32_t cp) {
  std::string out;
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
  return out;
}

// GPT-2's bytes_to_unicode: the printable Latin-1 bytes map to themselves and come first (in
// byte order); the other 68 bytes map to U+0100.. in byte order and come after them. Token
// ids 3..258 follow this order.
struct ByteSymbols {
  std::array<uint8_t, kNumByteTokens> byte_of_index{};  // index = id - 3
  std::array<int, kNumByteTokens> index_of_byte{};
  std::array<std::string, kNumByteTokens> symbol_of_byte;
};

ByteSymbols make_byte_symbols() {
  auto printable = [](int b) {
    return (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
  };
  ByteSymbols table;
  int idx = 0;
  for (int b = 0; b < kNumByteTokens; ++b) {
    if (!printable(b)) continue;
    table.byte_of_index[idx] = static_cast<uint8_t>(b);
    table.index_of_byte[b] = idx++;
    table.symbol_of_byte[b] = utf8_2byte(static_cast<uint32_t>(b));
  }
  uint32_t next_cp = 0x100;
  for (int b = 0; b < kNumByteTokens; ++b) {
    if (printable(b)) continue;
    table.byte_of_index[idx] = static_cast<uint8_t>(b);
    table.index_of_byte[b] = idx++;
    table.symbol_of_byte[b] = utf8_2byte(next_cp++);
  }
  return table;
}

// ---- pre-tokenization of the training corpus ------------------------------------------------

enum class ByteClass { kSpace, kDigit, kLetter, kPunct };

ByteClass classify(unsigned char c) {
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') {
    return ByteClass::kSpace;
  }
  if (c >= '0' && c <= '9') return ByteClass::kDigit;
  // Bytes of multi-byte UTF-8 count as letters so CJK runs stay together.
  if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || c == '_' || c >= 0x80) {
    return ByteClass::kLetter;
  }
  return ByteClass::kPunct;
}

// GPT-2-like split: ` ?letters+`, ` ?punct+`, digit runs of at most 3, and whitespace runs
// that leave a final single space to start the next word (as `\s+(?!\S)` does). Returns the
// distinct pieces with their counts; std::map keeps the order stable.
std::map<std::string, int64_t> pretokenize(std::string_view text) {
  constexpr size_t kMaxDigitRun = 3;  // as DeepSeek's \p{N}{1,3}
  std::map<std::string, int64_t> counts;
  const size_t n = text.size();
  auto cls = [&](size_t i) { return classify(static_cast<unsigned char>(text[i])); };
  size_t i = 0;
  while (i < n) {
    const size_t start = i;
    if (cls(i) == ByteClass::kSpace) {
      size_t end = i;
      while (end < n && cls(end) == ByteClass::kSpace) ++end;
      // A space just before a word or punctuation run belongs to that run.
      const bool next_takes_space =
          end < n && text[end - 1] == ' ' && cls(end) != ByteClass::kDigit;
      if (next_takes_space) --end;
      if (end > start) {
        ++counts[std::string(text.substr(start, end - start))];
        i = end;
        continue;
      }
      ++i;  // the lone space starts the next piece
    }
    const ByteClass c = cls(i);
    size_t end = i;
    if (c == ByteClass::kDigit) {
      while (end < n && end - i < kMaxDigitRun && cls(end) == ByteClass::kDigit) ++end;
    } else {
      while (end < n && cls(end) == c) ++end;
    }
    ++counts[std::string(text.substr(start, end - start))];
    i = end;
  }
  return counts;
}

// ---- BPE training -------------------------------------------------------------------------

struct Word {
  std::vector<int32_t> symbols;  // token ids
  int64_t count;
};

uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

// Learns up to `budget` merges, appending each merged token to `tokens` (so its id is
// 259 + rank). A pair whose concatenation already is a token (two pairs can spell the same
// string, "ab c" and "a bc") or is one of the added tokens' contents (ASCII ones such as
// "<think>") is never chosen: every id must have distinct contents, and id = 259 + rank must
// hold. Re-counts all pairs after each merge; the corpus is small enough that this is fast.
std::vector<std::pair<int32_t, int32_t>> learn_merges(
    std::vector<std::string>& tokens, std::vector<Word> words, int64_t budget,
    const std::unordered_set<std::string>& forbidden) {
  std::unordered_set<std::string> existing(tokens.begin(), tokens.end());
  std::unordered_set<uint64_t> rejected;
  std::vector<std::pair<int32_t, int32_t>> merges;
  std::unordered_map<uint64_t, int64_t> pair_counts;
  while (static_cast<int64_t>(merges.size()) < budget) {
    pair_counts.clear();
    for (const Word& w : words) {
      for (size_t k = 0; k + 1 < w.symbols.size(); ++k) {
        pair_counts[pair_key(w.symbols[k], w.symbols[k + 1])] += w.count;
      }
    }
    // Most frequent first; ties by the smaller (left, right) string pair. The hash map's
    // iteration order does not matter because this order is total.
    int64_t best_count = 0;
    int32_t best_left = -1;
    int32_t best_right = -1;
    for (const auto& [key, count] : pair_counts) {
      if (count < kMinMergeCount || count < best_count) continue;
      const auto left = static_cast<int32_t>(key >> 32);
      const auto right = static_cast<int32_t>(key & 0xFFFFFFFFu);
      if (count == best_count && std::tie(tokens[left], tokens[right]) >=
                                     std::tie(tokens[best_left], tokens[best_right])) {
        continue;
      }
      if (rejected.contains(key)) continue;
      const std::string merged = tokens[left] + tokens[right];
      if (existing.contains(merged) || forbidden.contains(merged)) {
        rejected.insert(key);
        continue;
      }
      best_count = count;
      best_left = left;
      best_right = right;
    }
    if (best_left < 0) break;  // no pair left with count >= kMinMergeCount

    const auto new_id = static_cast<int32_t>(tokens.size());
    tokens.push_back(tokens[best_left] + tokens[best_right]);
    existing.insert(tokens.back());
    merges.emplace_back(best_left, best_right);
    for (Word& w : words) {
      size_t out = 0;
      for (size_t k = 0; k < w.symbols.size();) {
        if (k + 1 < w.symbols.size() && w.symbols[k] == best_left &&
            w.symbols[k + 1] == best_right) {
          w.symbols[out++] = new_id;
          k += 2;
        } else {
          w.symbols[out++] = w.symbols[k++];
        }
      }
      w.symbols.resize(out);
    }
  }
  return merges;
}

// ---- JSON assembly ------------------------------------------------------------------------

// Copies a prebuilt object and sets two fields: ~128k of these are made for the real vocabulary,
// and copying is several times faster than building each from an initializer list.
class AddedTokenMaker {
 public:
  AddedTokenMaker() {
    for (const TokenFlags flags :
         {TokenFlags::kControl, TokenFlags::kText, TokenFlags::kSpecialNormalized}) {
      templates_[static_cast<size_t>(flags)] = json{{"id", 0},
                                                    {"content", ""},
                                                    {"single_word", false},
                                                    {"lstrip", false},
                                                    {"rstrip", false},
                                                    {"normalized", flags != TokenFlags::kControl},
                                                    {"special", flags != TokenFlags::kText}};
    }
  }

  json make(int64_t id, std::string_view content, TokenFlags flags) const {
    json token = templates_[static_cast<size_t>(flags)];
    token["id"] = id;
    token["content"] = content;
    return token;
  }

 private:
  std::array<json, 3> templates_;
};

// The special block at the top of the vocabulary, in id order.
std::vector<std::pair<std::string, TokenFlags>> special_block(int64_t vocab_size) {
  const bool real = vocab_size == kDsv4VocabSize;
  const int64_t num_placeholders = real ? kDsv4NumPlaceholders : kSmallNumPlaceholders;
  const int64_t num_mm_spans = real ? kDsv4NumMmSpans : kSmallNumMmSpans;
  std::vector<std::pair<std::string, TokenFlags>> block;
  for (int64_t k = 0; k < num_placeholders; ++k) {
    block.emplace_back(fmt::format("<｜place▁holder▁no▁{}｜>", k), TokenFlags::kControl);
  }
  for (const NamedToken& t : kNamedTokens) block.emplace_back(t.content, t.flags);
  for (int64_t k = 0; k < num_mm_spans; ++k) {
    block.emplace_back(fmt::format("<|place_holder_mm_span_{:04d}|>", kFirstMmSpanNumber + k),
                       TokenFlags::kControl);
  }
  for (const NamedToken& t : kImageTokens) block.emplace_back(t.content, t.flags);
  return block;
}

}  // namespace

std::string_view tokenizer_training_corpus() {
  return kCorpus;
}

json make_tokenizer_json(int64_t vocab_size) {
  const auto block = special_block(vocab_size);
  const auto block_size = static_cast<int64_t>(block.size());
  MOERUN_CHECK(vocab_size >= kFirstMergeId + block_size,
               "tokenizer vocab_size {} is too small: need at least {} ({} BOS/EOS/pad + {} byte "
               "tokens + {} special tokens)",
               vocab_size, kFirstMergeId + block_size, kNumLeadingTokens, kNumByteTokens,
               block_size);
  MOERUN_CHECK(vocab_size <= kMaxTokenizerVocabSize,
               "tokenizer vocab_size {} is too large: at most {}", vocab_size,
               kMaxTokenizerVocabSize);
  const int64_t block_start = vocab_size - block_size;

  // tokens[id] for ids 0..258, then one per merge as they are learned.
  const ByteSymbols bytes = make_byte_symbols();
  std::vector<std::string> tokens;
  for (const NamedToken& t : kLeadingTokens) tokens.emplace_back(t.content);
  for (int idx = 0; idx < kNumByteTokens; ++idx) {
    tokens.push_back(bytes.symbol_of_byte[bytes.byte_of_index[idx]]);
  }

  std::vector<Word> words;
  for (const auto& [piece, count] : pretokenize(kCorpus)) {
    Word w{{}, count};
    for (const char ch : piece) {
      w.symbols.push_back(static_cast<int32_t>(
          kNumLeadingTokens + bytes.index_of_byte[static_cast<unsigned char>(ch)]));
    }
    words.push_back(std::move(w));
  }
  std::unordered_set<std::string> forbidden;
  for (const auto& entry : block) forbidden.insert(entry.first);
  const auto merges =
      learn_merges(tokens, std::move(words), block_start - kFirstMergeId, forbidden);
  // Ids the corpus could not fill with merges become plain vocabulary entries that no merge
  // produces (so BPE never emits them), keeping added_tokens at the real file's size
  // (1,283 entries for the full vocabulary) instead of ~128k.
  const auto num_merge_tokens = static_cast<int64_t>(tokens.size());
  for (int64_t id = num_merge_tokens; id < block_start; ++id) {
    tokens.push_back(fmt::format("<reserved_{}>", id - num_merge_tokens));
  }
  const auto num_model_tokens = static_cast<int64_t>(tokens.size());

  json vocab = json::object();
  for (int64_t id = 0; id < num_model_tokens; ++id) vocab[tokens[id]] = id;
  MOERUN_CHECK(static_cast<int64_t>(vocab.size()) == num_model_tokens,
               "tokenizer vocabulary has duplicate entries ({} distinct of {})", vocab.size(),
               num_model_tokens);
  json merges_json = json::array();
  for (const auto& [left, right] : merges) {
    merges_json.push_back(tokens[left] + " " + tokens[right]);
  }

  // As in the fixture, only ids 0..2 are in both lists; the rest of added_tokens is not in
  // model.vocab.
  const AddedTokenMaker maker;
  json added = json::array();
  added.get_ref<json::array_t&>().reserve(
      static_cast<size_t>(vocab_size - num_model_tokens + kNumLeadingTokens));
  for (int64_t id = 0; id < kNumLeadingTokens; ++id) {
    added.push_back(maker.make(id, kLeadingTokens[id].content, kLeadingTokens[id].flags));
  }
  for (int64_t k = 0; k < block_size; ++k) {
    added.push_back(maker.make(block_start + k, block[k].first, block[k].second));
  }

  json model = {{"type", "BPE"},
                {"dropout", nullptr},
                {"unk_token", nullptr},
                {"continuing_subword_prefix", nullptr},
                {"end_of_word_suffix", nullptr},
                {"fuse_unk", false},
                {"byte_fallback", false},
                {"vocab", std::move(vocab)},
                {"merges", std::move(merges_json)}};

  json out = json::parse(kPipelineJson);
  out["version"] = "1.0";
  out["truncation"] = nullptr;
  out["padding"] = nullptr;
  out["added_tokens"] = std::move(added);
  out["model"] = std::move(model);
  return out;
}

json make_tokenizer_config_json() {
  return json::parse(kTokenizerConfigJson);
}

}  // namespace moerun::mkmodel
