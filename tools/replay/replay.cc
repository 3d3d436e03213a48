// Golden replay (see replay.h). A Recorder observes the engine's forward passes and files
// every intermediate value by position; the tensors are then cut to the golden's shapes.
#include "tools/replay/replay.h"

#include <algorithm>
#include <cstring>
#include <fstream>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/safetensors.h"
#include "worker/engine/engine.h"

namespace moerun::replay {
namespace {

using nlohmann::json;

class Recorder : public model::ForwardObserver {
 public:
  Recorder(const ModelConfig& c, int64_t total)
      : L_(c.num_hidden_layers),
        hc_(c.hc_mult),
        d_(c.hidden_size),
        k_(c.num_experts_per_tok),
        topk_(c.index_topk),
        T_(total) {
    residual.assign(static_cast<size_t>(T_ * L_ * hc_ * d_), 0.0f);
    head_in.assign(static_cast<size_t>(T_ * d_), 0.0f);
    router_ids.assign(static_cast<size_t>(T_ * L_ * k_), -1);
    router_w.assign(static_cast<size_t>(T_ * L_ * k_), 0.0f);
    mtp_ids.assign(static_cast<size_t>(T_ * k_), -1);
    mtp_w.assign(static_cast<size_t>(T_ * k_), 0.0f);
    mtp_in.assign(static_cast<size_t>(T_ * hc_ * d_), 0.0f);
    mtp_out.assign(static_cast<size_t>(T_ * hc_ * d_), 0.0f);
    for (int64_t l = 0; l < L_; ++l)
      if (c.has_indexer(l)) indexer_sel[l].assign(static_cast<size_t>(T_ * topk_), -1);
  }

  void block_output(int64_t layer, const model::StepBatch& b, const float* h) override {
    const int64_t n = hc_ * d_;
    for (int64_t i = 0; i < b.rows(); ++i) {
      const int64_t p = b.positions[i];
      float* dst = layer < L_ ? residual.data() + (p * L_ + layer) * n : mtp_out.data() + p * n;
      std::memcpy(dst, h + i * n, sizeof(float) * n);
    }
  }
  void router(int64_t layer, const model::StepBatch& b, const int32_t* ids, const float* w,
              int64_t k) override {
    for (int64_t i = 0; i < b.rows(); ++i) {
      const int64_t p = b.positions[i];
      const int64_t off = layer < L_ ? (p * L_ + layer) * k : p * k;
      std::copy(ids + i * k, ids + (i + 1) * k, (layer < L_ ? router_ids : mtp_ids).begin() + off);
      std::copy(w + i * k, w + (i + 1) * k, (layer < L_ ? router_w : mtp_w).begin() + off);
    }
  }
  void indexer(int64_t layer, const model::StepBatch& b, int64_t row, const int32_t* chosen,
               int64_t n) override {
    auto& sel = indexer_sel.at(layer);
    const int64_t p = b.positions[row];
    std::fill(sel.begin() + p * topk_, sel.begin() + (p + 1) * topk_, -1);
    std::copy(chosen, chosen + n, sel.begin() + p * topk_);
  }
  void head_input(bool mtp, const model::StepBatch& b, const float* y) override {
    if (mtp) return;
    for (int64_t i = 0; i < b.rows(); ++i)
      std::memcpy(head_in.data() + b.positions[i] * d_, y + i * d_, sizeof(float) * d_);
  }
  void mtp_input(const model::StepBatch& b, const float* x) override {
    const int64_t n = hc_ * d_;
    for (int64_t i = 0; i < b.rows(); ++i)
      std::memcpy(mtp_in.data() + b.positions[i] * n, x + i * n, sizeof(float) * n);
  }

  int64_t L_, hc_, d_, k_, topk_, T_;
  std::vector<float> residual, head_in, router_w, mtp_w, mtp_in, mtp_out;
  std::vector<int32_t> router_ids, mtp_ids;
  std::map<int64_t, std::vector<int32_t>> indexer_sel;
};

Tensor f32_tensor(std::vector<int64_t> shape, std::vector<float> v) {
  Tensor t;
  t.shape = std::move(shape);
  t.f32 = std::move(v);
  return t;
}
Tensor i32_tensor(std::vector<int64_t> shape, std::vector<int32_t> v) {
  Tensor t;
  t.shape = std::move(shape);
  t.i32 = std::move(v);
  return t;
}
// Rows [begin, end) of a row-major array whose rows hold `row` elements.
template <class T>
std::vector<T> rows_of(const std::vector<T>& v, int64_t begin, int64_t end, int64_t row) {
  return std::vector<T>(v.begin() + begin * row, v.begin() + end * row);
}

std::vector<int32_t> int_list(const json& j, const std::string& key, const std::string& where) {
  MOERUN_CHECK(j.contains(key) && j[key].is_array(), "{}: '{}' missing or not a list", where, key);
  std::vector<int32_t> out;
  for (const auto& v : j[key]) {
    MOERUN_CHECK(v.is_number_integer(), "{}: '{}' holds a non-integer", where, key);
    out.push_back(v.get<int32_t>());
  }
  return out;
}

std::vector<float> read_f32(const SafetensorsFile& f, const std::string& name,
                            const std::vector<int64_t>& shape) {
  const TensorInfo* ti = f.find(name);
  MOERUN_CHECK(ti != nullptr, "{}: no tensor {}", f.path().string(), name);
  MOERUN_CHECK(ti->dtype == DType::kF32 && ti->shape == shape, "{}: {} is {}, expected F32 {}",
               f.path().string(), name, dtype_name(ti->dtype), fmt::join(shape, "x"));
  const auto raw = f.data(*ti);
  std::vector<float> out(static_cast<size_t>(ti->numel()));
  std::memcpy(out.data(), raw.data(), out.size() * sizeof(float));
  return out;
}

}  // namespace

namespace {

json read_meta(const std::filesystem::path& golden_dir) {
  const auto meta_path = golden_dir / "golden.json";
  std::ifstream in(meta_path);
  MOERUN_CHECK(in.good(), "cannot read {}", meta_path.string());
  json meta;
  try {
    meta = json::parse(in);
  } catch (const json::exception& e) {
    MOERUN_THROW("{}: invalid JSON: {}", meta_path.string(), e.what());
  }
  MOERUN_CHECK(meta.contains("sequences") && meta["sequences"].is_array(),
               "{}: no 'sequences' list", meta_path.string());
  return meta;
}

}  // namespace

engine::EngineOptions replay_engine_options(const ReplayOptions& opt) {
  const json meta = read_meta(opt.golden_dir);
  engine::EngineOptions eo;
  eo.checkpoint = opt.checkpoint.empty()
                      ? opt.golden_dir / meta.value("checkpoint_dir", std::string("checkpoint"))
                      : opt.checkpoint;
  eo.config = opt.config;
  eo.kernels = opt.kernels;
  eo.num_threads = opt.num_threads;
  eo.experts_per_token = opt.experts_per_token;
  eo.max_sequences = 2;  // one replayed sequence + one for isolated runs
  eo.mtp = true;
  return eo;
}

std::map<std::string, Tensor> run_replay(const ReplayOptions& opt, engine::StepEngine& eng) {
  const json meta = read_meta(opt.golden_dir);
  const auto meta_path = opt.golden_dir / "golden.json";
  const ModelConfig& c = eng.config();
  const int64_t L = c.num_hidden_layers, hc = c.hc_mult, d = c.hidden_size, V = c.vocab_size;
  const int64_t k = c.num_experts_per_tok;
  const bool has_mtp = c.num_nextn_predict_layers > 0;

  std::unique_ptr<SafetensorsFile> golden_file;
  const auto gpath = opt.golden_dir / meta.value("golden_file", std::string("golden.safetensors"));
  if (std::filesystem::exists(gpath))
    golden_file = std::make_unique<SafetensorsFile>(SafetensorsFile::open(gpath));

  std::map<std::string, Tensor> out;
  for (const json& s : meta["sequences"]) {
    const std::string name = s.at("name").get<std::string>();
    const std::string where = meta_path.string() + " " + name;
    const std::vector<int32_t> prompt = int_list(s, "prompt_tokens", where);
    const std::vector<int32_t> decode = int_list(s, "decode_tokens", where);
    MOERUN_CHECK(!prompt.empty(), "{}: empty prompt", where);
    std::vector<int32_t> tokens = prompt;
    tokens.insert(tokens.end(), decode.begin(), decode.end());
    const int64_t n = static_cast<int64_t>(prompt.size()), K = static_cast<int64_t>(decode.size());
    const int64_t T = n + K;

    Recorder rec(c, T);
    const engine::SeqId id = eng.add_sequence();
    std::vector<float> logits, mtp_logits;
    const int64_t chunk = opt.prefill_chunk > 0 ? opt.prefill_chunk : n;
    for (int64_t b = 0; b < n; b += chunk) {
      engine::StepRequest r;
      r.seq = id;
      r.tokens.assign(prompt.begin() + b, prompt.begin() + std::min(n, b + chunk));
      r.all_logits = true;  // the head input of every prompt position is a golden tensor
      const auto res = eng.step({r}, &rec);
      if (b + chunk >= n) logits.insert(logits.end(), res[0].logits.end() - V, res[0].logits.end());
    }
    for (int64_t t = 0; t < K; ++t) {
      engine::StepRequest r;
      r.seq = id;
      r.tokens = {decode[t]};
      r.phase = kernels::RowPhase::kDecode;
      const auto res = eng.step({r}, &rec);
      logits.insert(logits.end(), res[0].logits.begin(), res[0].logits.end());
      if (has_mtp) {
        MOERUN_CHECK(res[0].mtp_rows == 1 && res[0].mtp_first_position == n - 1 + t,
                     "{}: decode step {} ran MTP for {} rows at {}", where, t, res[0].mtp_rows,
                     res[0].mtp_first_position);
        mtp_logits.insert(mtp_logits.end(), res[0].mtp_logits.begin(), res[0].mtp_logits.end());
      }
    }
    eng.free_sequence(id);

    out[name + ".logits"] = f32_tensor({K + 1, V}, std::move(logits));
    if (has_mtp && K > 0) {
      out[name + ".mtp_logits"] = f32_tensor({K, V}, std::move(mtp_logits));
      out[name + ".mtp_router_ids"] = i32_tensor({T - 1, k}, rows_of(rec.mtp_ids, 0, T - 1, k));
      out[name + ".mtp_router_weights"] = f32_tensor({T - 1, k}, rows_of(rec.mtp_w, 0, T - 1, k));
    }
    out[name + ".router_ids"] = i32_tensor({T, L, k}, rec.router_ids);
    out[name + ".router_weights"] = f32_tensor({T, L, k}, rec.router_w);
    for (const auto& [layer, sel] : rec.indexer_sel)
      out[fmt::format("{}.indexer.layer{}", name, layer)] = i32_tensor({T, c.index_topk}, sel);
    if (s.contains("residual_positions"))
      for (int32_t p : int_list(s, "residual_positions", where)) {
        MOERUN_CHECK(p >= 0 && p < T, "{}: residual position {} outside 0..{}", where, p, T - 1);
        out[fmt::format("{}.residual.pos{}", name, p)] =
            f32_tensor({L, hc, d}, rows_of(rec.residual, p * L, (p + 1) * L, hc * d));
        out[fmt::format("{}.head_in.pos{}", name, p)] =
            f32_tensor({d}, rows_of(rec.head_in, p, p + 1, d));
      }

    const int64_t m = s.value("prefill_stream_positions", int64_t{0});
    if (m <= 0) continue;
    MOERUN_CHECK(m <= n && m < T, "{}: prefill_stream_positions {} exceeds the prompt", where, m);
    // prefill.residual: index 0 = the embedding (block 0's input), l+1 = after block l.
    std::vector<float> pre(static_cast<size_t>((L + 1) * m * hc * d));
    for (int64_t p = 0; p < m; ++p) {
      const std::vector<float> e = eng.embedding(tokens[p]);
      for (int64_t j = 0; j < hc; ++j)
        std::copy(e.begin(), e.end(), pre.begin() + (p * hc + j) * d);
    }
    for (int64_t l = 0; l < L; ++l)
      for (int64_t p = 0; p < m; ++p)
        std::memcpy(pre.data() + (((l + 1) * m + p) * hc) * d,
                    rec.residual.data() + (p * L + l) * hc * d, sizeof(float) * hc * d);
    out[name + ".prefill.residual"] = f32_tensor({L + 1, m, hc, d}, pre);
    out[name + ".prefill.head_in"] = f32_tensor({m, d}, rows_of(rec.head_in, 0, m, d));
    if (has_mtp) {
      out[name + ".prefill.mtp_in"] = f32_tensor({m, hc, d}, rows_of(rec.mtp_in, 0, m, hc * d));
      out[name + ".prefill.mtp_out"] = f32_tensor({m, hc, d}, rows_of(rec.mtp_out, 0, m, hc * d));
    }

    // Isolated runs start from the golden's own streams, so they measure one block at a time.
    if (!golden_file) continue;
    const std::string gname = name + ".prefill.residual";
    if (golden_file->find(gname) == nullptr) continue;
    const std::vector<float> gres = read_f32(*golden_file, gname, {L + 1, m, hc, d});
    const std::span<const int32_t> toks(tokens.data(), static_cast<size_t>(m));
    std::vector<float> iso;
    for (int64_t l = 0; l < L; ++l) {
      const auto o = eng.run_block_isolated(
          l, std::span<const float>(gres.data() + l * m * hc * d, static_cast<size_t>(m * hc * d)),
          toks);
      iso.insert(iso.end(), o.begin(), o.end());
    }
    out[name + ".prefill.isolated_block_out"] = f32_tensor({L, m, hc, d}, std::move(iso));
    if (has_mtp)
      out[name + ".prefill.isolated_mtp_out"] = f32_tensor(
          {m, hc, d},
          eng.run_mtp_isolated(
              std::span<const float>(gres.data() + L * m * hc * d, static_cast<size_t>(m * hc * d)),
              std::span<const int32_t>(tokens.data() + 1, static_cast<size_t>(m))));
  }
  return out;
}

void write_tensors(const std::map<std::string, Tensor>& tensors,
                   const std::filesystem::path& path) {
  SafetensorsWriter w;
  for (const auto& [name, t] : tensors) {
    if (!t.i32.empty()) {
      w.add(name, DType::kI32, t.shape, std::as_bytes(std::span(t.i32)));
    } else {
      w.add(name, DType::kF32, t.shape, std::as_bytes(std::span(t.f32)));
    }
  }
  w.write(path);
}

}  // namespace moerun::replay
