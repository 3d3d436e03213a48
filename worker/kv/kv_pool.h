// Per-sequence model state of DeepSeek-V4 (spec §2.11), kept in memory whose size is known
// up front so that admission is exact:
//   - a *slot* per running sequence (fixed size): every layer's sliding-window ring
//     [window, head_dim], the compressors' running projections (the last 2r tokens for
//     overlapping ratio-4 compression, r tokens otherwise, kv and score of width coff·Dc),
//     the same for each indexer's compressor, and the MTP block's pending hidden stream;
//   - *blocks* of `block_tokens` positions (a multiple of every compress ratio, so no
//     compressed row straddles two blocks): the compressed KV rows [block_tokens/r, head_dim]
//     of every compressed layer and the indexer's keys [block_tokens/4, index_head_dim] of
//     every CSA layer. A sequence of length L holds ceil(L / block_tokens) blocks.
// Values are fp32 holding bf16 (or FP8/FP4-simulated) values, exactly as the model computes
// them. Nothing here is thread-safe; the engine owns the pool.
#pragma once

#include <cstdint>
#include <vector>

#include "common/model_config.h"

namespace moerun::kv {

struct LayerKvLayout {
  int64_t ratio = 0;       // compress ratio (0 = window only)
  bool overlap = false;    // ratio-4 overlapping compression (also: has an indexer)
  bool held = true;        // storage in this pool (false: another pipeline stage's layer)
  int64_t state_rows = 0;  // compressor ring rows: 2r (overlap) or r
  int64_t comp_width = 0;  // coff · head_dim
  int64_t idx_width = 0;   // coff · index_head_dim (indexer compressor), 0 without indexer
  // Offsets in floats inside a slot.
  int64_t window = 0;      // [window, head_dim]
  int64_t comp_kv = 0;     // [state_rows, comp_width]
  int64_t comp_score = 0;  // [state_rows, comp_width]
  int64_t idx_kv = 0;      // [state_rows(=8), idx_width]
  int64_t idx_score = 0;
  // Offsets in floats inside a block.
  int64_t rows_per_block = 0;  // block_tokens / ratio
  int64_t comp_rows = 0;       // [rows_per_block, head_dim]
  int64_t idx_rows = 0;        // [rows_per_block, index_head_dim]
};

class KvLayout {
 public:
  // Storage for layers [layer_begin, layer_end) (-1: through the last MTP layer) — a pipeline
  // stage holds only its own layers' state; the MTP pending stream is always there.
  KvLayout(const ModelConfig& config, int64_t block_tokens, int64_t layer_begin = 0,
           int64_t layer_end = -1);
  // The smallest multiple of every compress ratio that is ≥ min_tokens.
  static int64_t default_block_tokens(const ModelConfig& config, int64_t min_tokens = 64);

  int64_t block_tokens() const { return block_tokens_; }
  int64_t slot_floats() const { return slot_floats_; }
  int64_t block_floats() const { return block_floats_; }
  int64_t mtp_hidden() const { return mtp_hidden_; }  // slot offset of [hc · dim]
  const LayerKvLayout& layer(int64_t l) const { return layers_[static_cast<size_t>(l)]; }
  int64_t num_layers() const { return static_cast<int64_t>(layers_.size()); }
  int64_t window() const { return window_; }
  int64_t head_dim() const { return head_dim_; }
  int64_t index_head_dim() const { return index_head_dim_; }

 private:
  std::vector<LayerKvLayout> layers_;
  int64_t block_tokens_ = 0;
  int64_t slot_floats_ = 0;
  int64_t block_floats_ = 0;
  int64_t mtp_hidden_ = 0;
  int64_t window_ = 0;
  int64_t head_dim_ = 0;
  int64_t index_head_dim_ = 0;
};

// One sequence's handle into the pool.
struct SequenceKv {
  int32_t slot = -1;
  std::vector<int32_t> blocks;  // block ids covering positions [i·block_tokens, (i+1)·...)
  int64_t length = 0;           // positions processed (the next position)
  bool mtp_pending = false;     // the slot's MTP hidden stream holds position length − 1
};

class KvPool {
 public:
  KvPool(KvLayout layout, int64_t max_sequences, int64_t num_blocks);

  const KvLayout& layout() const { return layout_; }
  int64_t max_sequences() const { return static_cast<int64_t>(slot_free_.size()); }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t free_slots() const;
  int64_t free_blocks() const { return static_cast<int64_t>(free_blocks_.size()); }
  int64_t bytes() const;
  // Blocks a sequence needs to hold `length` positions.
  int64_t blocks_for(int64_t length) const;

  // Takes a free slot; throws moerun::Error when all max_sequences slots are in use.
  SequenceKv acquire();
  // Grows seq's block table to cover `length` positions; throws (changing nothing) when the
  // pool has too few free blocks.
  void reserve(SequenceKv& seq, int64_t length);
  // Returns the slot and every block of seq to the pool and resets seq.
  void release(SequenceKv& seq);

  float* slot(const SequenceKv& seq) { return slot_data(seq.slot); }
  // Compressed row j of layer l (main compressor) / of its indexer.
  float* comp_row(const SequenceKv& seq, int64_t layer, int64_t j);
  float* idx_row(const SequenceKv& seq, int64_t layer, int64_t j);

 private:
  float* slot_data(int32_t slot) { return slots_.data() + slot * layout_.slot_floats(); }
  float* block_data(const SequenceKv& seq, int64_t layer, int64_t j, int64_t* row_in_block);

  KvLayout layout_;
  int64_t num_blocks_ = 0;
  std::vector<float> slots_;
  std::vector<float> blocks_;
  std::vector<bool> slot_free_;
  std::vector<int32_t> free_blocks_;
};

}  // namespace moerun::kv
