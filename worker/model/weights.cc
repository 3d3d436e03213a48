// Loading ModelWeights from a released-format checkpoint (see weights.h).
#include "worker/model/weights.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstring>

#include "common/error.h"
#include "common/numfmt.h"
#include "kernels/cpu/weight_decode.h"

namespace moerun::model {

namespace {
// Once a matrix has been copied into its packed form, the checkpoint pages it came from are
// dropped from this process (they are clean file pages; touching them again would re-read
// them), so resident memory is about one copy of the weights, not two.
void release_mapped(const void* data, int64_t bytes) {
  static const uintptr_t page = static_cast<uintptr_t>(::sysconf(_SC_PAGESIZE));
  const uintptr_t begin = (reinterpret_cast<uintptr_t>(data) + page - 1) / page * page;
  const uintptr_t end =
      (reinterpret_cast<uintptr_t>(data) + static_cast<uintptr_t>(bytes)) / page * page;
  if (end > begin) ::madvise(reinterpret_cast<void*>(begin), end - begin, MADV_DONTNEED);
}
}  // namespace

class WeightLoader {
 public:
  WeightLoader(ModelWeights& w, kernels::Kernels& kernels) : w_(w), kernels_(kernels) {}

  const TensorInfo& info(const std::string& name) { return w_.checkpoint_.info(name); }
  std::span<const std::byte> bytes(const std::string& name) { return w_.checkpoint_.data(name); }

  // Small BF16 / F32 tensors → fp32 vector.
  std::vector<float> floats(const std::string& name) {
    const TensorInfo& ti = info(name);
    const auto raw = bytes(name);
    std::vector<float> out(static_cast<size_t>(ti.numel()));
    if (ti.dtype == DType::kBF16) {
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t b;
        std::memcpy(&b, raw.data() + 2 * i, 2);
        out[i] = numfmt::bf16_to_f32(b);
      }
    } else {
      MOERUN_CHECK(ti.dtype == DType::kF32, "{}: expected BF16 or F32, found {}", name,
                   dtype_name(ti.dtype));
      std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
    }
    return out;
  }

  Linear linear(const std::string& base, kernels::WeightFormat format) {
    const std::string wname = base + ".weight";
    const TensorInfo& ti = info(wname);
    Linear lin;
    lin.view.format = format;
    lin.view.rows = ti.shape.at(0);
    lin.view.cols = format == kernels::WeightFormat::kFp4 ? 2 * ti.shape.at(1) : ti.shape.at(1);
    lin.view.data = bytes(wname).data();
    if (format == kernels::WeightFormat::kFp8 || format == kernels::WeightFormat::kFp4)
      lin.view.scales = reinterpret_cast<const uint8_t*>(bytes(base + ".scale").data());
    // bf16 matrices are read in place; alignment of 2 is all they need, and safetensors
    // offsets from the writer are always even.
    MOERUN_CHECK(format != kernels::WeightFormat::kBf16 ||
                     reinterpret_cast<uintptr_t>(lin.view.data) % 2 == 0,
                 "{}: BF16 data is not 2-byte aligned in its shard", wname);
    lin.packed = kernels_.pack(lin.view);
    if (lin.packed) {
      release_mapped(lin.view.data, kernels::weight_data_bytes(lin.view));
      if (lin.view.scales) release_mapped(lin.view.scales, kernels::weight_scale_bytes(lin.view));
    }
    return lin;
  }

  // F32 matrices (mHC projections) are copied so that they are 4-byte aligned.
  Linear f32_linear(const std::string& name) {
    const TensorInfo& ti = info(name);
    auto storage = std::make_unique<std::vector<float>>(floats(name));
    Linear lin;
    lin.view.format = kernels::WeightFormat::kF32;
    lin.view.rows = ti.shape.at(0);
    lin.view.cols = ti.shape.at(1);
    lin.view.data = storage->data();
    w_.f32_storage_.push_back(std::move(storage));
    lin.packed = kernels_.pack(lin.view);
    return lin;
  }

  HcParams hc(const std::string& prefix) {
    HcParams p;
    p.fn = f32_linear(prefix + "_fn");
    p.scale = floats(prefix + "_scale");
    p.base = floats(prefix + "_base");
    return p;
  }

  CompressorWeights compressor(const std::string& p, int64_t ratio, int64_t dim) {
    CompressorWeights c;
    c.ratio = ratio;
    c.dim = dim;
    c.overlap = ratio == 4;
    c.wkv = linear(p + "wkv", kernels::WeightFormat::kBf16);
    c.wgate = linear(p + "wgate", kernels::WeightFormat::kBf16);
    c.ape = floats(p + "ape");
    c.norm = floats(p + "norm.weight");
    return c;
  }

  std::unique_ptr<LayerWeights> layer(int64_t l) {
    const ModelConfig& c = w_.config_;
    const std::string p = CheckpointSchema(c).layer_prefix(l);
    auto lw = std::make_unique<LayerWeights>();
    lw->layer = l;
    lw->hc_attn = hc(p + "hc_attn");
    lw->hc_ffn = hc(p + "hc_ffn");
    lw->attn_norm = floats(p + "attn_norm.weight");
    lw->ffn_norm = floats(p + "ffn_norm.weight");
    const std::string a = p + "attn.";
    using kernels::WeightFormat;
    AttentionWeights& at = lw->attn;
    at.wq_a = linear(a + "wq_a", WeightFormat::kFp8);
    at.wq_b = linear(a + "wq_b", WeightFormat::kFp8);
    at.wkv = linear(a + "wkv", WeightFormat::kFp8);
    at.wo_a = linear(a + "wo_a", WeightFormat::kFp8);
    at.wo_b = linear(a + "wo_b", WeightFormat::kFp8);
    at.q_norm = floats(a + "q_norm.weight");
    at.kv_norm = floats(a + "kv_norm.weight");
    at.sink = floats(a + "attn_sink");
    if (c.has_compressor(l))
      at.compressor = compressor(a + "compressor.", c.compress_ratio(l), c.head_dim);
    if (c.has_indexer(l)) {
      IndexerWeights ix;
      ix.wq_b = linear(a + "indexer.wq_b", WeightFormat::kFp8);
      ix.weights_proj = linear(a + "indexer.weights_proj", WeightFormat::kBf16);
      ix.compressor = compressor(a + "indexer.compressor.", c.compress_ratio(l), c.index_head_dim);
      at.indexer = std::move(ix);
    }
    const std::string f = p + "ffn.";
    MoeWeights& moe = lw->ffn;
    moe.gate = linear(f + "gate", WeightFormat::kBf16);
    if (c.is_hash_layer(l)) {
      moe.hash = hash_table(f + "gate.tid2eid");
    } else {
      moe.bias = floats(f + "gate.bias");
    }
    moe.experts.resize(static_cast<size_t>(c.n_routed_experts));
    for (int64_t e = w_.expert_begin; e < w_.expert_end; ++e) {
      const std::string ep = fmt::format("{}experts.{}.", f, e);
      ExpertWeights& ex = moe.experts[static_cast<size_t>(e)];
      ex.w1 = linear(ep + "w1", WeightFormat::kFp4);
      ex.w2 = linear(ep + "w2", WeightFormat::kFp4);
      ex.w3 = linear(ep + "w3", WeightFormat::kFp4);
    }
    moe.shared.w1 = linear(f + "shared_experts.w1", WeightFormat::kFp8);
    moe.shared.w2 = linear(f + "shared_experts.w2", WeightFormat::kFp8);
    moe.shared.w3 = linear(f + "shared_experts.w3", WeightFormat::kFp8);
    if (c.is_mtp_layer(l)) {
      lw->e_proj = linear(p + "e_proj", WeightFormat::kFp8);
      lw->h_proj = linear(p + "h_proj", WeightFormat::kFp8);
      lw->enorm = floats(p + "enorm.weight");
      lw->hnorm = floats(p + "hnorm.weight");
      lw->norm = floats(p + "norm.weight");
      lw->hc_head = hc(p + "hc_head");
    }
    return lw;
  }

  // tid2eid I64 [vocab, cols] → int32 [vocab, k], the first k columns (4Expert slicing).
  std::vector<int32_t> hash_table(const std::string& name) {
    const ModelConfig& c = w_.config_;
    const TensorInfo& ti = info(name);
    const int64_t rows = ti.shape.at(0), cols = ti.shape.at(1), k = c.num_experts_per_tok;
    MOERUN_CHECK(cols >= k,
                 "{} has {} columns but {} experts per token were asked for: a hash table "
                 "narrower than k cannot route",
                 name, cols, k);
    const auto raw = bytes(name);
    std::vector<int32_t> out(static_cast<size_t>(rows * k));
    for (int64_t r = 0; r < rows; ++r)
      for (int64_t j = 0; j < k; ++j) {
        int64_t v;
        std::memcpy(&v, raw.data() + 8 * (r * cols + j), 8);
        MOERUN_CHECK(v >= 0 && v < c.n_routed_experts,
                     "{}[{}][{}] = {} is not an expert id (0..{})", name, r, j, v,
                     c.n_routed_experts - 1);
        out[static_cast<size_t>(r * k + j)] = static_cast<int32_t>(v);
      }
    return out;
  }

 private:
  ModelWeights& w_;
  kernels::Kernels& kernels_;
};

std::unique_ptr<ModelWeights> ModelWeights::load(const std::filesystem::path& dir,
                                                 kernels::Kernels& kernels,
                                                 int64_t experts_per_token, const LoadRange& range,
                                                 const std::filesystem::path& config_json) {
  std::unique_ptr<ModelWeights> w(new ModelWeights());
  const ModelConfig file_config =
      ModelConfig::load(config_json.empty() ? dir / "config.json" : config_json);
  w->checkpoint_ = Checkpoint::open(dir);
  CheckpointSchema(file_config).require_match(w->checkpoint_);
  w->config_ =
      experts_per_token > 0 ? file_config.with_experts_per_tok(experts_per_token) : file_config;
  const ModelConfig& c = w->config_;
  w->range_ = range;
  if (w->range_.layer_end < 0) w->range_.layer_end = c.num_layers_total();
  if (w->range_.expert_end < 0) w->range_.expert_end = c.n_routed_experts;
  MOERUN_CHECK(0 <= w->range_.layer_begin && w->range_.layer_begin <= w->range_.layer_end &&
                   w->range_.layer_end <= c.num_layers_total(),
               "layer range [{}, {}) is not inside 0..{}", w->range_.layer_begin,
               w->range_.layer_end, c.num_layers_total());
  MOERUN_CHECK(0 <= w->range_.expert_begin && w->range_.expert_begin <= w->range_.expert_end &&
                   w->range_.expert_end <= c.n_routed_experts,
               "expert range [{}, {}) is not inside 0..{}", w->range_.expert_begin,
               w->range_.expert_end, c.n_routed_experts);
  w->expert_begin = w->range_.expert_begin;
  w->expert_end = w->range_.expert_end;

  WeightLoader loader(*w, kernels);
  if (w->range_.embedding || w->range_.layer_end > c.num_hidden_layers)
    w->embed = reinterpret_cast<const uint16_t*>(w->checkpoint_.data("embed.weight").data());
  const bool need_head = w->range_.head || w->range_.layer_end > c.num_hidden_layers;
  if (need_head) w->head = loader.linear("head", kernels::WeightFormat::kBf16);
  if (w->range_.head) {
    w->norm = loader.floats("norm.weight");
    w->hc_head = loader.hc("hc_head");
  }
  w->layers_.resize(static_cast<size_t>(c.num_layers_total()));
  for (int64_t l = w->range_.layer_begin; l < w->range_.layer_end; ++l)
    w->layers_[static_cast<size_t>(l)] = loader.layer(l);
  return w;
}

std::vector<float> ModelWeights::embedding_row(int32_t token) const {
  MOERUN_CHECK(token >= 0 && token < config_.vocab_size, "embedding: token {} outside 0..{}", token,
               config_.vocab_size - 1);
  MOERUN_CHECK(embed != nullptr, "this process holds no embedding table");
  const int64_t d = config_.hidden_size;
  std::vector<float> row(static_cast<size_t>(d));
  for (int64_t q = 0; q < d; ++q) row[q] = numfmt::bf16_to_f32(embed[token * d + q]);
  return row;
}

}  // namespace moerun::model
