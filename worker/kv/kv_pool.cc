// The KV pool (see kv_pool.h): layout arithmetic, slot and block bookkeeping. Block ids are
// handed out lowest first and returned in reverse, so a freed sequence's blocks are reused first.
#include "worker/kv/kv_pool.h"

#include <algorithm>
#include <numeric>

#include "common/error.h"

namespace moerun::kv {

KvLayout::KvLayout(const ModelConfig& config, int64_t block_tokens, int64_t layer_begin,
                   int64_t layer_end)
    : block_tokens_(block_tokens),
      window_(config.sliding_window),
      head_dim_(config.head_dim),
      index_head_dim_(config.index_head_dim) {
  for (int64_t l = 0; l < config.num_layers_total(); ++l) {
    const int64_t r = config.compress_ratio(l);
    MOERUN_CHECK(r == 0 || block_tokens % r == 0,
                 "KV block of {} tokens is not a multiple of layer {}'s compress ratio {}",
                 block_tokens, l, r);
  }
  if (layer_end < 0) layer_end = config.num_layers_total();
  MOERUN_CHECK(
      0 <= layer_begin && layer_begin <= layer_end && layer_end <= config.num_layers_total(),
      "KV layers [{}, {}) are not inside 0..{}", layer_begin, layer_end, config.num_layers_total());
  int64_t slot = 0;
  int64_t block = 0;
  for (int64_t l = 0; l < config.num_layers_total(); ++l) {
    LayerKvLayout ly;
    ly.ratio = config.compress_ratio(l);
    ly.overlap = config.has_indexer(l);
    ly.held = l >= layer_begin && l < layer_end;
    if (!ly.held) {  // another pipeline stage's layer: no storage here
      layers_.push_back(ly);
      continue;
    }
    ly.window = slot;
    slot += window_ * head_dim_;
    if (ly.ratio > 0) {
      ly.state_rows = ly.overlap ? 2 * ly.ratio : ly.ratio;
      ly.comp_width = config.compressor_width(l, head_dim_);
      ly.comp_kv = slot;
      slot += ly.state_rows * ly.comp_width;
      ly.comp_score = slot;
      slot += ly.state_rows * ly.comp_width;
      ly.rows_per_block = block_tokens / ly.ratio;
      ly.comp_rows = block;
      block += ly.rows_per_block * head_dim_;
      if (ly.overlap) {
        ly.idx_width = config.compressor_width(l, index_head_dim_);
        ly.idx_kv = slot;
        slot += ly.state_rows * ly.idx_width;
        ly.idx_score = slot;
        slot += ly.state_rows * ly.idx_width;
        ly.idx_rows = block;
        block += ly.rows_per_block * index_head_dim_;
      }
    }
    layers_.push_back(ly);
  }
  mtp_hidden_ = slot;
  slot += config.hc_dim();
  slot_floats_ = slot;
  block_floats_ = block;
}

int64_t KvLayout::default_block_tokens(const ModelConfig& config, int64_t min_tokens) {
  int64_t lcm = 1;
  for (int64_t l = 0; l < config.num_layers_total(); ++l)
    if (const int64_t r = config.compress_ratio(l); r > 0) lcm = std::lcm(lcm, r);
  return (std::max(min_tokens, lcm) + lcm - 1) / lcm * lcm;
}

KvPool::KvPool(KvLayout layout, int64_t max_sequences, int64_t num_blocks)
    : layout_(std::move(layout)), num_blocks_(num_blocks) {
  MOERUN_CHECK(max_sequences > 0, "KV pool needs at least one sequence slot (got {})",
               max_sequences);
  MOERUN_CHECK(num_blocks >= 0, "KV pool block count {} is negative", num_blocks);
  slots_.assign(static_cast<size_t>(max_sequences * layout_.slot_floats()), 0.0f);
  blocks_.assign(static_cast<size_t>(num_blocks * layout_.block_floats()), 0.0f);
  slot_free_.assign(static_cast<size_t>(max_sequences), true);
  free_blocks_.resize(static_cast<size_t>(num_blocks));
  // Hand out low block ids first (pop_back takes the last element).
  std::iota(free_blocks_.rbegin(), free_blocks_.rend(), 0);
}

int64_t KvPool::free_slots() const {
  return std::count(slot_free_.begin(), slot_free_.end(), true);
}

int64_t KvPool::bytes() const {
  return static_cast<int64_t>((slots_.size() + blocks_.size()) * sizeof(float));
}

int64_t KvPool::blocks_for(int64_t length) const {
  return (length + layout_.block_tokens() - 1) / layout_.block_tokens();
}

SequenceKv KvPool::acquire() {
  auto it = std::find(slot_free_.begin(), slot_free_.end(), true);
  MOERUN_CHECK(it != slot_free_.end(),
               "all {} sequence slots of the KV pool are in use (raise max_sequences)",
               slot_free_.size());
  *it = false;
  SequenceKv seq;
  seq.slot = static_cast<int32_t>(it - slot_free_.begin());
  return seq;
}

void KvPool::reserve(SequenceKv& seq, int64_t length) {
  const int64_t need = blocks_for(length) - static_cast<int64_t>(seq.blocks.size());
  if (need <= 0) return;
  MOERUN_CHECK(need <= free_blocks(),
               "KV pool exhausted: {} more blocks of {} tokens needed to reach {} positions, "
               "{} of {} free",
               need, layout_.block_tokens(), length, free_blocks(), num_blocks_);
  for (int64_t i = 0; i < need; ++i) {
    seq.blocks.push_back(free_blocks_.back());
    free_blocks_.pop_back();
  }
}

void KvPool::release(SequenceKv& seq) {
  if (seq.slot >= 0) slot_free_[static_cast<size_t>(seq.slot)] = true;
  for (auto it = seq.blocks.rbegin(); it != seq.blocks.rend(); ++it) free_blocks_.push_back(*it);
  seq = SequenceKv{};
}

float* KvPool::block_data(const SequenceKv& seq, int64_t layer, int64_t j, int64_t* row_in_block) {
  const LayerKvLayout& ly = layout_.layer(layer);
  const int64_t b = j / ly.rows_per_block;
  MOERUN_CHECK(b < static_cast<int64_t>(seq.blocks.size()),
               "compressed row {} of layer {} lies past the sequence's {} reserved blocks", j,
               layer, seq.blocks.size());
  *row_in_block = j % ly.rows_per_block;
  return blocks_.data() + seq.blocks[static_cast<size_t>(b)] * layout_.block_floats();
}

float* KvPool::comp_row(const SequenceKv& seq, int64_t layer, int64_t j) {
  int64_t r = 0;
  float* base = block_data(seq, layer, j, &r);
  return base + layout_.layer(layer).comp_rows + r * layout_.head_dim();
}

float* KvPool::idx_row(const SequenceKv& seq, int64_t layer, int64_t j) {
  int64_t r = 0;
  float* base = block_data(seq, layer, j, &r);
  return base + layout_.layer(layer).idx_rows + r * layout_.index_head_dim();
}

}  // namespace moerun::kv
