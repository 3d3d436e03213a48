// Synthetic DeepSeek-shaped tokenizer for the checkpoints moerun-mkmodel writes.
//
// A synthetic checkpoint needs a Hugging Face `tokenizer.json` whose id layout is DeepSeek's,
// so the runtime's tokenizer, chat encoder and stop-token logic run on it unchanged (model
// spec §4.1). The structure follows ../shared/golden/tokenizer-small/tokenizer.json:
//   ids 0..2                    BOS, EOS, pad (in model.vocab and in added_tokens)
//   ids 3..258                  the 256 byte symbols in GPT-2 bytes_to_unicode order
//   ids 259..259+num_merges-1   one token per BPE merge, id = 259 + merge rank, learned from
//                               a small built-in corpus (tokenizer_training_corpus())
//   then                        plain vocabulary entries <reserved_N> (no merge produces
//                               them) filling any ids the corpus could not fill with merges
//   top of the vocabulary       the DeepSeek-V4 special block (placeholders, chat, tool,
//                               V4 named tokens, mm spans, image/table/grounding tokens),
//                               ending at vocab_size - 1
// With vocab_size == kDsv4VocabSize the special ids are exactly the real model's
// (<｜User｜> 128803, <think> 128821, ...). Output is deterministic.
#pragma once

#include <cstdint>
#include <string_view>

#include <nlohmann/json_fwd.hpp>

namespace moerun::mkmodel {

// The real DeepSeek-V4-Flash vocabulary: 800 placeholders and 415 mm-span tokens, so the
// special block is 1280 ids at 128000..129279.
inline constexpr int64_t kDsv4VocabSize = 129280;
// Any other size gets the fixture's small block: 10 placeholders, 5 mm spans (80 ids).
// The smallest vocabulary is 3 + 256 + 80 = 339 (no merges at all).
inline constexpr int64_t kMinTokenizerVocabSize = 339;
// Every id becomes a JSON object; far beyond any real vocabulary the file would be gigabytes.
inline constexpr int64_t kMaxTokenizerVocabSize = int64_t{1} << 20;

// tokenizer.json with exactly vocab_size ids, each 0..vocab_size-1 assigned once across
// model.vocab and added_tokens. Throws moerun::Error unless
// kMinTokenizerVocabSize <= vocab_size <= kMaxTokenizerVocabSize.
nlohmann::json make_tokenizer_json(int64_t vocab_size);

// tokenizer_config.json: the same content as DeepSeek-V4-Flash's (PreTrainedTokenizerFast,
// no BOS/EOS added); only transformers-style loaders read it.
nlohmann::json make_tokenizer_config_json();

// The text the merges are learned from (mixed English, C++, Python, JSON, CJK; UTF-8).
// Exposed so tests can check the merges really compress it.
std::string_view tokenizer_training_corpus();

}  // namespace moerun::mkmodel
