// The distributed engine: one mpirun job of pp × ep ranks serving the StepEngine interface
// from its leader (rank 0). Every rank constructs it with the same options (collective);
// rank 0 then calls the StepEngine methods, each of which becomes a Command broadcast to all
// ranks (plan.h), while every other rank sits in serve() executing commands until shutdown.
//
// Rank (stage s, column d) = s·ep + d holds the layers of stage s (the MTP block and the head
// on the last stage, the embedding on the first — and the last when it runs MTP), experts
// [d·E/ep, (d+1)·E/ep) of those layers, and the KV state of column d's sequences for them. In
// a step, each column runs its own sequences (data-parallel attention) split into
// micro-batches; every MoE layer exchanges tokens among the ep ranks of the stage
// (comm::Dispatcher); stage s hands the bf16 residual stream with tokens and positions to
// (s+1, d); the last stage runs the head, sampling and MTP, and everything the leader needs
// (results, observer records) is gathered to it at the end of the step. The leader validates
// every request against an exact mirror of each column's capacity before broadcasting, so the
// ranks never disagree. Results are bit-identical to the single-process Engine for every
// layout (tests/mpi).
#pragma once

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <mpi.h>

#include "worker/comm/dispatch.h"
#include "worker/comm/transport.h"
#include "worker/comm/watchdog.h"
#include "worker/engine/engine.h"
#include "worker/engine/plan.h"
#include "worker/engine/step_engine.h"
#include "worker/layout.h"

namespace moerun::engine {

struct ClusterOptions {
  // Per rank: kernels, threads, the checkpoint; sequence slots and KV blocks per column.
  EngineOptions engine;
  int64_t pp = 1;
  int64_t ep = 1;
  std::vector<int64_t> stage_layers;  // main layers per stage; empty: balanced by cost
  comm::TransportKind transport = comm::TransportKind::kMpi;
  int64_t micro_batches = 0;  // per step and column; 0: pp
  std::optional<comm::FaultSpec> fault;
};

// Per-rank counters (kStats).
struct RankStats {
  int32_t rank = 0;
  int64_t steps = 0;
  double step_seconds = 0.0;     // inside kStep commands
  double comm_seconds = 0.0;     // of which waiting in the data plane (dispatch/combine, hand-off)
  comm::ExchangeStats exchange;  // its Dispatcher's counters (zero with ep = 1)
  int64_t pipeline_sent = 0;     // bytes of hand-offs to the next stage
  int64_t resident_bytes = 0;    // the process's resident memory when asked
  int64_t expert_begin = 0, expert_end = 0;  // the routed experts this rank holds
  int64_t layer_begin = 0, layer_end = 0;    // its layers (main and MTP)
};
static_assert(std::is_trivially_copyable_v<RankStats>);  // sent to the leader as bytes

class DistributedEngine : public StepEngine {
 public:
  // Collective over `world` (the job's communicator; its size must be pp·ep). Bad layouts
  // throw the same moerun::Error on every rank before anything is loaded.
  DistributedEngine(const ClusterOptions& options, MPI_Comm world);
  ~DistributedEngine() override;  // the leader shuts the cluster down
  DistributedEngine(const DistributedEngine&) = delete;
  DistributedEngine& operator=(const DistributedEngine&) = delete;

  bool is_leader() const { return rank_ == 0; }
  int rank() const { return rank_; }
  const ParallelLayout& layout() const { return layout_; }
  // Followers: executes the leader's commands until shutdown(). A failure on any rank ends
  // the job (MPI_Abort) with a message: the ranks could not stay in lockstep.
  void serve();
  // Leader: ends serve() on every rank (idempotent; the destructor calls it).
  void shutdown();
  // Leader: every rank's counters (collective over the cluster).
  std::vector<RankStats> stats();

  // StepEngine, on the leader only (elsewhere they throw).
  const ModelConfig& config() const override { return config_; }
  Capacity capacity() const override;
  SeqId add_sequence() override;
  void free_sequence(SeqId seq) override;
  int64_t length(SeqId seq) const override;
  std::vector<StepResult> step(const std::vector<StepRequest>& requests,
                               model::ForwardObserver* obs = nullptr) override;
  std::vector<float> run_block_isolated(int64_t layer, std::span<const float> h_in,
                                        std::span<const int32_t> tokens) override;
  std::vector<float> run_mtp_isolated(std::span<const float> h_main,
                                      std::span<const int32_t> next_tokens) override;
  std::vector<float> embedding(int32_t token) const override;

 private:
  struct Rank;  // this rank's model, KV and communication (stage_runner.cc)
  // The leader's mirror of a sequence and of a column.
  struct SeqInfo {
    int32_t column = 0;
    int64_t length = 0;
  };
  struct ColumnInfo {
    int64_t free_slots = 0;
    int64_t free_blocks = 0;
  };
  void require_leader(const char* what) const;
  // This rank's weights, KV pool, communicators and dispatcher (distributed_rank.cc).
  void setup_rank();
  // This rank's part of a kStep / kIsolated command; the reply goes to the leader.
  std::vector<uint8_t> run_step_part(const Command& c);
  std::vector<uint8_t> run_isolated_part(const Command& c);
  // Leader: broadcasts `c`, runs this rank's part, gathers every rank's reply.
  std::vector<std::vector<uint8_t>> command(const Command& c);
  // Any rank: this rank's part of a command; its reply goes to the leader.
  std::vector<uint8_t> execute(const Command& c);
  std::vector<float> run_isolated(int64_t layer, std::span<const float> h_in,
                                  std::span<const int32_t> tokens, bool mtp);

  ClusterOptions options_;
  MPI_Comm world_ = MPI_COMM_NULL;
  int rank_ = 0;
  ModelConfig config_;
  ParallelLayout layout_;
  std::unique_ptr<Rank> self_;
  bool shut_down_ = false;
  int64_t step_counter_ = 0;
  // Leader only.
  std::map<SeqId, SeqInfo> seqs_;
  std::vector<ColumnInfo> columns_;
  SeqId next_id_ = 0;
  int64_t blocks_per_column_ = 0, slots_per_column_ = 0, block_tokens_ = 0;
};

}  // namespace moerun::engine
