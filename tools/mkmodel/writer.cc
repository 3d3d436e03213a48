#include "tools/mkmodel/writer.h"

#include <fstream>
#include <map>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/safetensors.h"
#include "tools/mkmodel/tokenizer_gen.h"
#include "tools/mkmodel/weights.h"

namespace moerun::mkmodel {
namespace {

void write_json(const std::filesystem::path& path, const nlohmann::json& j) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  MOERUN_CHECK(f.good(), "cannot create {}", path.string());
  f << j.dump(2, ' ', false) << "\n";
  f.close();
  MOERUN_CHECK(f.good(), "cannot write {}", path.string());
}

bool is_scale(const TensorSpec& t) {
  return t.format == TensorFormat::kFp8Scale || t.format == TensorFormat::kFp4Scale;
}

}  // namespace

std::vector<std::vector<const TensorSpec*>> assign_shards(const CheckpointSchema& schema,
                                                          int64_t num_shards) {
  const ModelConfig& c = schema.config();
  const bool has_mtp = c.num_nextn_predict_layers > 0;
  MOERUN_CHECK(num_shards >= (has_mtp ? 2 : 1),
               "{} shard(s) requested; need at least {} (MTP tensors get the last shard)",
               num_shards, has_mtp ? 2 : 1);
  std::vector<const TensorSpec*> main, mtp;
  uint64_t main_bytes = 0;
  for (const TensorSpec& t : schema.tensors()) {
    if (t.layer >= c.num_hidden_layers) {
      mtp.push_back(&t);
    } else {
      main.push_back(&t);
      main_bytes += t.nbytes();
    }
  }
  const int64_t main_shards = has_mtp ? num_shards - 1 : num_shards;
  MOERUN_CHECK(static_cast<size_t>(main_shards) <= main.size(),
               "{} shards requested for only {} tensors", num_shards, main.size());
  std::vector<std::vector<const TensorSpec*>> shards(static_cast<size_t>(num_shards));
  // Close shard i once the running total passes (i+1)/main_shards of the bytes, keeping
  // enough tensors for the shards still to fill.
  uint64_t running = 0;
  size_t shard = 0;
  for (size_t i = 0; i < main.size(); ++i) {
    const size_t remaining_tensors = main.size() - i;
    const size_t remaining_shards = static_cast<size_t>(main_shards) - shard;
    if (!shards[shard].empty() && shard + 1 < static_cast<size_t>(main_shards) &&
        !is_scale(*main[i]) &&
        (running * static_cast<uint64_t>(main_shards) >= (shard + 1) * main_bytes ||
         remaining_tensors < remaining_shards)) {
      ++shard;
    }
    shards[shard].push_back(main[i]);
    running += main[i]->nbytes();
  }
  if (has_mtp) shards.back() = std::move(mtp);
  for (size_t s = 0; s < shards.size(); ++s)
    MOERUN_CHECK(!shards[s].empty(), "shard {} of {} would be empty", s + 1, num_shards);
  return shards;
}

CheckpointWriteResult write_checkpoint(const ModelConfig& config,
                                       const CheckpointWriteOptions& options,
                                       const std::filesystem::path& dir) {
  const CheckpointSchema schema(config);
  std::filesystem::create_directories(dir);
  for (const char* existing : {"config.json", "model.safetensors.index.json", "model.safetensors"})
    MOERUN_CHECK(!std::filesystem::exists(dir / existing),
                 "{} already holds a checkpoint ({} exists); choose an empty directory",
                 dir.string(), existing);

  const auto shards = assign_shards(schema, options.num_shards);
  std::map<std::string, std::string> weight_map;
  CheckpointWriteResult result;
  result.num_shards = options.num_shards;
  for (size_t s = 0; s < shards.size(); ++s) {
    const std::string file =
        fmt::format("model-{:05d}-of-{:05d}.safetensors", s + 1, shards.size());
    SafetensorsWriter writer;
    writer.set_metadata("format", "pt");
    // Values are drawn in parallel (each tensor depends only on seed and name); a quantized
    // weight yields its scale too, and assign_shards keeps the pair in one shard.
    std::map<std::string, std::vector<std::byte>> bytes;
    if (!options.sparse) {
      const auto& specs = shards[s];
      std::vector<std::map<std::string, std::vector<std::byte>>> parts(specs.size());
#pragma omp parallel for schedule(dynamic)
      for (size_t i = 0; i < specs.size(); ++i) {
        if (!is_scale(*specs[i])) parts[i] = generate_tensor(schema, *specs[i], options.seed);
      }
      for (auto& part : parts) bytes.merge(part);
    }
    for (const TensorSpec* t : shards[s]) {
      if (options.sparse) {
        writer.add_hole(t->name, t->dtype, t->shape);
      } else {
        const auto it = bytes.find(t->name);
        MOERUN_CHECK(it != bytes.end(), "tensor '{}' was not generated with shard {}", t->name,
                     s + 1);
        writer.add(t->name, t->dtype, t->shape, it->second);
        bytes.erase(it);
      }
      weight_map.emplace(t->name, file);
      result.num_tensors += 1;
      result.tensor_bytes += t->nbytes();
    }
    writer.write(dir / file);
  }
  write_safetensors_index(dir, weight_map, result.tensor_bytes);
  write_json(dir / "config.json", config.to_json());
  write_json(dir / "tokenizer.json", make_tokenizer_json(config.vocab_size));
  write_json(dir / "tokenizer_config.json", make_tokenizer_config_json());
  return result;
}

}  // namespace moerun::mkmodel
