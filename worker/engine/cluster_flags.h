// The command-line and file settings of a cluster shared by the programs that run one
// (moerun-worker, moerun-replay --layout): the layout (--layout pp=P,ep=E or a configs/ JSON
// file with --cluster), stage layer counts, transport, micro-batches, the watchdog deadline
// and fault injection. Flags override the file.
#pragma once

#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <CLI/CLI.hpp>

#include "worker/engine/distributed.h"

namespace moerun::engine {

struct ClusterFlags {
  std::string layout;        // "pp=2,ep=2"
  std::string cluster_file;  // configs/*.json
  std::vector<int64_t> stage_layers;
  std::string transport;
  int64_t micro_batches = -1;
  double deadline_s = 0.0;
  std::string fault;
  bool given() const { return !layout.empty() || !cluster_file.empty(); }
};

void add_cluster_flags(CLI::App& app, ClusterFlags& flags);

// The cluster settings from the file (if any) then the flags, applied to `options` (its
// `engine` part is left alone); sets the watchdog's deadline. Throws moerun::Error naming a
// bad value. Without --layout or --cluster the layout is pp=1, ep=1.
void apply_cluster_flags(const ClusterFlags& flags, ClusterOptions& options);

// The body of a cluster program: initialises MPI, builds the DistributedEngine on every rank,
// runs `leader` on rank 0 while the other ranks serve, shuts the cluster down and finalises
// MPI. `make_options` runs on every rank after MPI_Init. Errors are printed as
// "<program>: <message>" (start-up errors, which every rank shares, by rank 0 only). Returns
// the process exit status: 0, or 1 after an error.
int run_cluster_program(std::string_view program,
                        const std::function<ClusterOptions()>& make_options,
                        const std::function<void(DistributedEngine&)>& leader);

}  // namespace moerun::engine
