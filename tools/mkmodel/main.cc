// moerun-mkmodel --preset tiny|small|flash [--sparse] [--seed N] [--experts-per-token K] --out DIR
//
// Writes a DeepSeek-V4 checkpoint directory in the released layout with deterministic random
// weights (tiny: seconds, a few MB; small: hundreds of MB, for benchmarks), or with --sparse
// the tensor table alone as sparse files (the full-size flash skeleton: 69,187 tensors,
// 160 GB of holes) for loading, sharding and memory-planning tests at full scale.
#include <chrono>
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>
#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/log.h"
#include "common/model_config.h"
#include "tools/mkmodel/presets.h"
#include "tools/mkmodel/writer.h"

namespace {

struct Preset {
  const char* name;
  const char* config_json;
  int64_t num_shards;
  bool needs_sparse;  // too large to write with data
};

constexpr Preset kPresets[] = {
    {"tiny", moerun::mkmodel::presets::kTiny, 3, false},
    {"small", moerun::mkmodel::presets::kSmall, 4, false},
    {"flash", moerun::mkmodel::presets::kFlash, 46, true},
};

int run(int argc, char** argv) {
  CLI::App app{"Write a synthetic DeepSeek-V4 checkpoint in the released format"};
  std::string preset_name, out;
  uint64_t seed = 1234;
  bool sparse = false;
  int64_t experts_per_token = 0;
  int64_t num_shards = 0;
  app.add_option("--preset", preset_name, "Model size")
      ->required()
      ->check(CLI::IsMember({"tiny", "small", "flash"}));
  app.add_option("--out", out, "Output directory (created; must not hold a checkpoint)")
      ->required();
  app.add_option("--seed", seed, "Seed of the random weights");
  app.add_flag("--sparse", sparse, "Leave data regions as holes (headers and shapes only)");
  app.add_option("--experts-per-token", experts_per_token,
                 "Override num_experts_per_tok (tid2eid tables get that many columns)")
      ->check(CLI::PositiveNumber);
  app.add_option("--shards", num_shards, "Number of shard files (default: per preset)")
      ->check(CLI::PositiveNumber);
  CLI11_PARSE(app, argc, argv);

  const Preset* preset = nullptr;
  for (const Preset& p : kPresets)
    if (preset_name == p.name) preset = &p;
  if (preset->needs_sparse && !sparse) {
    std::fprintf(stderr,
                 "moerun-mkmodel: preset '%s' is full size (about 160 GB of weights); "
                 "add --sparse to write its skeleton\n",
                 preset->name);
    return 2;
  }
  moerun::ModelConfig config = moerun::ModelConfig::from_json(
      nlohmann::json::parse(preset->config_json), std::string("preset ") + preset->name);
  if (experts_per_token > 0) config = config.with_experts_per_tok(experts_per_token);

  moerun::mkmodel::CheckpointWriteOptions options;
  options.seed = seed;
  options.sparse = sparse;
  options.num_shards = num_shards > 0 ? num_shards : preset->num_shards;
  const auto t0 = std::chrono::steady_clock::now();
  const auto result = moerun::mkmodel::write_checkpoint(config, options, out);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  spdlog::info("wrote {} ({}{}): {} tensors, {:.1f} MB of tensor data in {} shards, {:.2f} s", out,
               preset->name, sparse ? ", sparse" : "", result.num_tensors,
               static_cast<double>(result.tensor_bytes) / 1e6, result.num_shards, seconds);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  moerun::log::init();
  try {
    return run(argc, argv);
  } catch (const moerun::Error& e) {
    std::fprintf(stderr, "moerun-mkmodel: %s\n", e.what());
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moerun-mkmodel: error: %s\n", e.what());
  }
  return 1;
}
