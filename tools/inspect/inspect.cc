#include "tools/inspect/inspect.h"

#include <chrono>
#include <iterator>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/model_config.h"
#include "common/safetensors.h"
#include "worker/layout.h"

namespace moerun::inspect {

Report inspect_checkpoint(const std::filesystem::path& dir,
                          std::optional<std::pair<int64_t, int64_t>> layout) {
  Report r;
  r.dir = dir;
  const ModelConfig config = ModelConfig::load(dir / "config.json");
  const auto t0 = std::chrono::steady_clock::now();
  const Checkpoint ckpt = Checkpoint::open(dir);
  r.header_parse_ms =
      std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  const CheckpointSchema schema(config);
  r.schema = schema.check(ckpt);
  r.num_shards = static_cast<int64_t>(ckpt.shards().size());
  r.num_tensors = static_cast<int64_t>(ckpt.num_tensors());
  r.total_bytes = ckpt.total_bytes();

  for (const auto& shard : ckpt.shards()) {
    for (const TensorInfo& t : shard.tensors()) {
      auto& [count, bytes] = r.by_dtype[std::string(dtype_name(t.dtype))];
      count += 1;
      bytes += t.nbytes();
      if (const TensorSpec* spec = schema.find(t.name)) {
        if (spec->format == TensorFormat::kHashTable && t.shape.size() == 2)
          r.hash_table_width = t.shape[1];
        // Count weights from the checkpoint's own shapes (the schema decides the format).
        const int64_t n =
            spec->dtype == t.dtype && spec->shape == t.shape ? spec->num_weights() : 0;
        r.parameters += n;
        if (spec->layer < config.num_hidden_layers) r.parameters_without_mtp += n;
      }
    }
  }
  for (int64_t l = 0; l < config.num_layers_total(); ++l) {
    if (config.is_mtp_layer(l)) {
      r.layers_by_kind["MTP"] += 1;
    } else {
      r.layers_by_kind[std::string(attention_kind_name(config.attention_kind(l)))] += 1;
    }
    if (config.is_hash_layer(l)) r.hash_layers.push_back(l);
  }
  r.n_routed_experts = config.n_routed_experts;
  r.n_shared_experts = config.n_shared_experts;
  r.experts_per_token = config.num_experts_per_tok;

  if (layout) {
    const ParallelLayout plan = plan_layout(config, layout->first, layout->second);
    std::vector<bool> owned(schema.tensors().size(), false);
    for (int64_t rank = 0; rank < plan.world_size(); ++rank) {
      const RankSelection sel = plan.selection(rank, config);
      RankPlan p;
      p.rank = rank;
      p.stage = plan.stage_of(rank);
      p.column = plan.column_of(rank);
      p.layer_begin = sel.layer_begin;
      p.layer_end = sel.layer_end;
      p.expert_begin = sel.expert_begin;
      p.expert_end = sel.expert_end;
      p.embedding = sel.embedding;
      p.head = sel.head;
      for (size_t i = 0; i < schema.tensors().size(); ++i) {
        const TensorSpec& t = schema.tensors()[i];
        if (!sel.holds(t)) continue;
        // Bytes as stored in this checkpoint (a mis-shaped tensor counts what is there).
        const Checkpoint::Entry* e = ckpt.find(t.name);
        const uint64_t bytes = e ? e->info->nbytes() : 0;
        p.num_tensors += 1;
        p.bytes += bytes;
        if (t.role == TensorRole::kRoutedExpert) p.expert_bytes += bytes;
        if (!owned[i]) {
          owned[i] = true;
          p.owned_bytes += bytes;
        }
      }
      r.ranks.push_back(p);
    }
  }
  return r;
}

nlohmann::json Report::to_json() const {
  nlohmann::json j;
  j["dir"] = dir.string();
  j["num_shards"] = num_shards;
  j["num_tensors"] = num_tensors;
  j["total_bytes"] = total_bytes;
  j["header_parse_ms"] = header_parse_ms;
  j["schema_ok"] = schema.ok();
  j["missing"] = schema.missing;
  j["unexpected"] = schema.unexpected;
  j["mismatched"] = nlohmann::json::array();
  for (const auto& m : schema.mismatched)
    j["mismatched"].push_back({{"name", m.name}, {"expected", m.expected}, {"actual", m.actual}});
  for (const auto& [dtype, cb] : by_dtype)
    j["by_dtype"][dtype] = {{"tensors", cb.first}, {"bytes", cb.second}};
  j["parameters"] = parameters;
  j["parameters_without_mtp"] = parameters_without_mtp;
  j["layers_by_kind"] = layers_by_kind;
  j["hash_layers"] = hash_layers;
  j["n_routed_experts"] = n_routed_experts;
  j["n_shared_experts"] = n_shared_experts;
  j["experts_per_token"] = experts_per_token;
  j["hash_table_width"] = hash_table_width;
  j["ranks"] = nlohmann::json::array();
  for (const RankPlan& p : ranks) {
    j["ranks"].push_back({{"rank", p.rank},
                          {"stage", p.stage},
                          {"column", p.column},
                          {"layers", {p.layer_begin, p.layer_end}},
                          {"experts", {p.expert_begin, p.expert_end}},
                          {"embedding", p.embedding},
                          {"head", p.head},
                          {"tensors", p.num_tensors},
                          {"bytes", p.bytes},
                          {"expert_bytes", p.expert_bytes},
                          {"owned_bytes", p.owned_bytes}});
  }
  return j;
}

namespace {
std::string human_bytes(uint64_t bytes) {  // binary units, 3 significant-ish digits
  static constexpr const char* kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB"};
  double v = static_cast<double>(bytes);
  size_t u = 0;
  while (v >= 1024.0 && u + 1 < std::size(kUnits)) {
    v /= 1024.0;
    ++u;
  }
  return u == 0 ? fmt::format("{} B", bytes) : fmt::format("{:.2f} {}", v, kUnits[u]);
}
std::string grouped(int64_t n) {  // 290942289362 → "290,942,289,362"
  std::string s = std::to_string(n < 0 ? -n : n), out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (i > 0 && (s.size() - i) % 3 == 0) out += ',';
    out += s[i];
  }
  return n < 0 ? "-" + out : out;
}
}  // namespace

std::string Report::to_text() const {
  std::string out;
  out += fmt::format("checkpoint   {}\n", dir.string());
  out += fmt::format("shards       {} ({} tensors, {} bytes = {}; headers parsed in {:.1f} ms)\n",
                     num_shards, grouped(num_tensors), grouped(static_cast<int64_t>(total_bytes)),
                     human_bytes(total_bytes), header_parse_ms);
  out += fmt::format("schema       {}\n",
                     schema.ok() ? "OK: every tensor present with the expected dtype and shape"
                                 : "MISMATCH\n" + schema.describe());
  out += fmt::format(
      "parameters   {} ({} without MTP; FP4 values counted one each, scales "
      "and tid2eid excluded)\n",
      grouped(parameters), grouped(parameters_without_mtp));
  out += "bytes        ";
  bool first = true;
  for (const auto& [dtype, cb] : by_dtype) {
    out += fmt::format("{}{} {} tensors {}", first ? "" : "\n             ", dtype,
                       grouped(cb.first), human_bytes(cb.second));
    first = false;
  }
  out += "\nlayers       ";
  first = true;
  for (const auto& [kind, n] : layers_by_kind) {
    out += fmt::format("{}{} {}", first ? "" : ", ", kind, n);
    first = false;
  }
  out += fmt::format("\nexperts      {} routed + {} shared, top-{} per token\n", n_routed_experts,
                     n_shared_experts, experts_per_token);
  out += fmt::format("hash layers  [{}] (tid2eid width {})\n", fmt::join(hash_layers, ", "),
                     hash_table_width);
  if (!ranks.empty()) {
    out += fmt::format("\n{:>5} {:>5} {:>6} {:>11} {:>11} {:>5} {:>4} {:>8} {:>12} {:>12} {:>12}\n",
                       "rank", "stage", "column", "layers", "experts", "embed", "head", "tensors",
                       "loads", "experts", "owned");
    uint64_t loads = 0, owned = 0;
    for (const RankPlan& p : ranks) {
      out += fmt::format(
          "{:>5} {:>5} {:>6} {:>11} {:>11} {:>5} {:>4} {:>8} {:>12} {:>12} {:>12}\n", p.rank,
          p.stage, p.column, fmt::format("[{},{})", p.layer_begin, p.layer_end),
          fmt::format("[{},{})", p.expert_begin, p.expert_end), p.embedding ? "yes" : "-",
          p.head ? "yes" : "-", p.num_tensors, human_bytes(p.bytes), human_bytes(p.expert_bytes),
          human_bytes(p.owned_bytes));
      loads += p.bytes;
      owned += p.owned_bytes;
    }
    out += fmt::format(
        "total: ranks load {} (dense weights replicated per column); owned bytes "
        "sum to {} = {} the checkpoint\n",
        human_bytes(loads), human_bytes(owned), owned == total_bytes ? "all of" : "NOT");
  }
  return out;
}

}  // namespace moerun::inspect
