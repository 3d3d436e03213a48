// moerun-replay --golden DIR --out FILE.safetensors [--kernels reference|optimized]
//               [--experts-per-token K] [--checkpoint DIR] [--config FILE]
//               [--prefill-chunk N] [--threads N]
//               [--layout pp=P,ep=E | --cluster FILE] [cluster options]
//
// Runs a golden folder's sequences and writes the golden tensors it produces; check them with
// ../shared/golden/compare.py. With --layout (under mpirun, pp·ep ranks) the sequences run
// on a cluster and the leader writes the file — byte for byte the one a single process
// writes. Exit status 0 on success, 1 on any error (message on stderr), 2 for usage errors.
#include <cstdio>
#include <string>

#include <CLI/CLI.hpp>

#include "tools/replay/replay.h"
#include "worker/engine/cluster_flags.h"

int main(int argc, char** argv) {
  CLI::App app{"Replay a DeepSeek-V4 golden folder through the moerun engine"};
  moerun::replay::ReplayOptions opt;
  moerun::engine::ClusterFlags cluster;
  std::string golden, out, kernels = "optimized", checkpoint, config;
  app.add_option("--golden", golden, "Golden folder (golden.json + checkpoint/)")->required();
  app.add_option("--out", out, "Output safetensors file")->required();
  app.add_option("--kernels", kernels, "Kernel set")
      ->check(CLI::IsMember({"reference", "optimized"}));
  app.add_option("--experts-per-token", opt.experts_per_token,
                 "Override num_experts_per_tok (hash tables sliced to their first K columns)")
      ->check(CLI::PositiveNumber);
  app.add_option("--checkpoint", checkpoint, "Checkpoint folder (default: the golden's)");
  app.add_option("--config", config, "config.json to use instead of the checkpoint's");
  app.add_option("--prefill-chunk", opt.prefill_chunk,
                 "Prefill in chunks of N tokens (default: one step)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--threads", opt.num_threads, "Kernel threads (default: OpenMP's)");
  moerun::engine::add_cluster_flags(app, cluster);
  CLI11_PARSE(app, argc, argv);
  opt.golden_dir = golden;
  opt.checkpoint = checkpoint;
  opt.config = config;
  auto replay = [&](moerun::engine::StepEngine& eng) {
    const auto tensors = moerun::replay::run_replay(opt, eng);
    moerun::replay::write_tensors(tensors, out);
    std::fprintf(stderr, "moerun-replay: wrote %zu tensors to %s\n", tensors.size(), out.c_str());
  };
  try {
    opt.kernels = moerun::kernels::parse_kernel_impl(kernels);
    if (!cluster.given()) {
      moerun::engine::Engine eng(moerun::replay::replay_engine_options(opt));
      replay(eng);
      return 0;
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moerun-replay: %s\n", e.what());
    return 1;
  }
  return moerun::engine::run_cluster_program(
      "moerun-replay",
      [&] {
        moerun::engine::ClusterOptions co;
        co.engine = moerun::replay::replay_engine_options(opt);
        moerun::engine::apply_cluster_flags(cluster, co);
        return co;
      },
      replay);
}
