// Cluster settings from a configs/ JSON file and flags (see cluster_flags.h).
#include "worker/engine/cluster_flags.h"

#include <mpi.h>
#include <cstdio>
#include <fstream>
#include <memory>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace moerun::engine {

void add_cluster_flags(CLI::App& app, ClusterFlags& f) {
  app.add_option("--layout", f.layout, "Parallel layout, e.g. pp=2,ep=4 (ranks = pp·ep)");
  app.add_option("--cluster", f.cluster_file,
                 "Cluster layout JSON (configs/cluster-*.json); flags override it");
  app.add_option("--stage-layers", f.stage_layers,
                 "Main layers per pipeline stage (default: balanced by cost)");
  app.add_option("--transport", f.transport, "Data-plane transport: mpi | nccl");
  app.add_option("--micro-batches", f.micro_batches,
                 "Micro-batches per step and column (default: pp)");
  app.add_option("--deadline", f.deadline_s,
                 "Seconds any rank waits for a peer before the job is aborted (default 120)");
  app.add_option("--fault", f.fault,
                 "Fault injection for tests: rank=R,layer=L,action=stall|exit[,step=S]");
}

void apply_cluster_flags(const ClusterFlags& f, ClusterOptions& o) {
  using nlohmann::json;
  if (!f.cluster_file.empty()) {
    std::ifstream in(f.cluster_file);
    MOERUN_CHECK(in.good(), "cannot read cluster layout {}", f.cluster_file);
    json j;
    try {
      j = json::parse(in);
    } catch (const json::exception& e) {
      MOERUN_THROW("{}: invalid JSON: {}", f.cluster_file, e.what());
    }
    MOERUN_CHECK(j.is_object(), "{}: expected a JSON object", f.cluster_file);
    for (const auto& [key, value] : j.items()) {
      auto integer = [&, k = key, v = value] {
        MOERUN_CHECK(v.is_number_integer() && v.get<int64_t>() >= 0,
                     "{}: '{}' must be a non-negative integer, got {}", f.cluster_file, k,
                     v.dump());
        return v.get<int64_t>();
      };
      if (key == "pp") {
        o.pp = integer();
      } else if (key == "ep") {
        o.ep = integer();
      } else if (key == "micro_batches") {
        o.micro_batches = integer();
      } else if (key == "stage_layers") {
        MOERUN_CHECK(value.is_array(), "{}: 'stage_layers' must be a list of integers",
                     f.cluster_file);
        o.stage_layers.clear();
        for (const auto& v : value) {
          MOERUN_CHECK(v.is_number_integer(), "{}: 'stage_layers' holds {}", f.cluster_file,
                       v.dump());
          o.stage_layers.push_back(v.get<int64_t>());
        }
      } else if (key == "transport") {
        MOERUN_CHECK(value.is_string(), "{}: 'transport' must be \"mpi\" or \"nccl\"",
                     f.cluster_file);
        o.transport = comm::parse_transport_kind(value.get<std::string>());
      } else if (key == "deadline_s") {
        MOERUN_CHECK(value.is_number() && value.get<double>() > 0,
                     "{}: 'deadline_s' must be a positive number, got {}", f.cluster_file,
                     value.dump());
        comm::Watchdog::instance().set_deadline(value.get<double>());
      } else {
        MOERUN_THROW(
            "{}: unknown key '{}' (allowed: pp, ep, stage_layers, transport, "
            "micro_batches, deadline_s)",
            f.cluster_file, key);
      }
    }
  }
  if (!f.layout.empty()) std::tie(o.pp, o.ep) = parse_layout_spec(f.layout);
  if (!f.stage_layers.empty()) o.stage_layers = f.stage_layers;
  if (!f.transport.empty()) o.transport = comm::parse_transport_kind(f.transport);
  if (f.micro_batches >= 0) o.micro_batches = f.micro_batches;
  if (f.deadline_s != 0.0) {
    MOERUN_CHECK(f.deadline_s > 0, "--deadline {} must be a positive number of seconds",
                 f.deadline_s);
    comm::Watchdog::instance().set_deadline(f.deadline_s);
  }
  if (!f.fault.empty()) {
    o.fault = comm::parse_fault_spec(f.fault);
  } else {
    o.fault = comm::fault_from_env();
  }
}

int run_cluster_program(std::string_view program,
                        const std::function<ClusterOptions()>& make_options,
                        const std::function<void(DistributedEngine&)>& leader) {
  MPI_Init(nullptr, nullptr);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  int status = 0;
  std::unique_ptr<DistributedEngine> eng;
  try {
    eng = std::make_unique<DistributedEngine>(make_options(), MPI_COMM_WORLD);
  } catch (const std::exception& e) {
    // Start-up errors are agreed on by every rank: one message is enough.
    if (rank == 0)
      std::fprintf(stderr, "%.*s: %s\n", static_cast<int>(program.size()), program.data(),
                   e.what());
    status = 1;
  }
  if (eng) {
    try {
      if (eng->is_leader()) {
        leader(*eng);
        eng->shutdown();
      } else {
        eng->serve();
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "%.*s: rank %d: %s\n", static_cast<int>(program.size()), program.data(),
                   rank, e.what());
      status = 1;
    }
    eng.reset();  // the leader's destructor releases the followers if leader() threw
  }
  MPI_Finalize();
  return status;
}

}  // namespace moerun::engine
