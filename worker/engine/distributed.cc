// The distributed engine's leader side and lifecycle (see distributed.h): start-up and layout
// checks, the leader's capacity mirror and request validation, commands, and the followers'
// loop. What a rank does for each command is in distributed_rank.cc.
#include "worker/engine/distributed.h"

#include <algorithm>
#include <cstdio>
#include <numeric>
#include <set>

#include "common/check_mpi.h"
#include "common/error.h"
#include "worker/comm/control.h"
#include "worker/engine/distributed_rank.h"
#include "worker/engine/remote_observer.h"
#include "worker/engine/wire.h"

namespace moerun::engine {
namespace {

constexpr double kStartupDeadlineS = 1800.0;
constexpr double kIdleDeadlineS = 1e9;  // a follower waiting for work: no deadline

// Sets the watchdog's deadline for a scope, restoring it after.
class DeadlineOverride {
 public:
  explicit DeadlineOverride(double seconds) : saved_(comm::Watchdog::instance().deadline()) {
    comm::Watchdog::instance().set_deadline(seconds);
  }
  ~DeadlineOverride() { comm::Watchdog::instance().set_deadline(saved_); }
  DeadlineOverride(const DeadlineOverride&) = delete;
  DeadlineOverride& operator=(const DeadlineOverride&) = delete;

 private:
  double saved_;
};

// Every rank learns whether every rank got through start-up; the ones that did not throw
// their own error, the others name them.
void agree_on_startup(MPI_Comm world, const std::string& error) {
  int size = 0;
  MOERUN_CHECK_MPI(MPI_Comm_size(world, &size));
  std::vector<uint8_t> mine(error.begin(), error.end());
  std::vector<std::vector<uint8_t>> all = comm::gather_bytes(world, 0, mine, "start-up");
  std::vector<uint8_t> summary;
  if (!all.empty()) {
    std::string failed;
    for (size_t r = 0; r < all.size(); ++r)
      if (!all[r].empty())
        failed += fmt::format("{}rank {}: {}", failed.empty() ? "" : "; ", r,
                              std::string(all[r].begin(), all[r].end()));
    summary.assign(failed.begin(), failed.end());
  }
  comm::broadcast_bytes(world, 0, summary, "start-up");
  if (!error.empty()) throw Error(error);  // as thrown on this rank (it names where)
  if (!summary.empty())
    MOERUN_THROW("start-up failed on other ranks: {}", std::string(summary.begin(), summary.end()));
}

}  // namespace

DistributedEngine::DistributedEngine(const ClusterOptions& options, MPI_Comm world)
    : options_(options), world_(world) {
  int size = 0;
  MOERUN_CHECK_MPI(MPI_Comm_rank(world_, &rank_));
  MOERUN_CHECK_MPI(MPI_Comm_size(world_, &size));
  comm::Watchdog::instance().set_world_rank(rank_);
  set_process_rank(rank_);  // error and log lines name the rank from here on
  std::string error;
  try {
    const EngineOptions& eo = options_.engine;
    const ModelConfig file =
        ModelConfig::load(eo.config.empty() ? eo.checkpoint / "config.json" : eo.config);
    config_ = eo.experts_per_token > 0 ? file.with_experts_per_tok(eo.experts_per_token) : file;
    layout_ = plan_layout(config_, options_.pp, options_.ep, options_.stage_layers);
    MOERUN_CHECK(layout_.world_size() == size,
                 "layout pp={} × ep={} needs {} ranks, but this job has {} (mpirun -np {})",
                 options_.pp, options_.ep, layout_.world_size(), size, layout_.world_size());
    MOERUN_CHECK(options_.micro_batches >= 0, "micro_batches {} must be >= 0 (0: pp)",
                 options_.micro_batches);
    if (options_.micro_batches == 0) options_.micro_batches = options_.pp;
    options_.engine = resolve_options(options_.engine, config_);
    setup_rank();
  } catch (const std::exception& e) {
    error = e.what();
    if (error.empty()) error = "unknown error";
  }
  {
    // Loading a rank's share of a large checkpoint can take minutes: the start-up agreement
    // waits at least kStartupDeadlineS for the slowest rank.
    const DeadlineOverride longer(
        std::max(comm::Watchdog::instance().deadline(), kStartupDeadlineS));
    comm::Watchdog::Scope scope("start-up");
    agree_on_startup(world_, error);
  }

  const EngineOptions& eo = options_.engine;
  slots_per_column_ = eo.max_sequences;
  blocks_per_column_ = eo.kv_blocks;
  block_tokens_ = eo.block_tokens;
  columns_.assign(static_cast<size_t>(options_.ep), {slots_per_column_, blocks_per_column_});
}

DistributedEngine::~DistributedEngine() {
  if (!is_leader() || shut_down_) return;
  try {
    shutdown();
  } catch (const std::exception& e) {
    std::fprintf(stderr, "moerun: shutting the cluster down failed: %s\n", e.what());
  }
}

void DistributedEngine::require_leader(const char* what) const {
  MOERUN_CHECK(is_leader(), "{} is for the leader (rank 0); rank {} serves", what, rank_);
  MOERUN_CHECK(!shut_down_, "{}: the cluster has been shut down", what);
}

std::vector<std::vector<uint8_t>> DistributedEngine::command(const Command& c) {
  std::vector<uint8_t> bytes = encode_command(c);
  comm::broadcast_bytes(world_, 0, bytes, "command");
  std::vector<uint8_t> reply;
  try {
    reply = execute(c);
  } catch (const std::exception& e) {
    // The other ranks are inside the same command: they cannot be left behind.
    std::fprintf(stderr, "moerun: rank %d failed in %s: %s\n", rank_,
                 c.kind == CommandKind::kStep ? "a step" : "a command", e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  const comm::Watchdog::Scope scope("results");
  return comm::gather_bytes(world_, 0, reply, "results");
}

void DistributedEngine::serve() {
  MOERUN_CHECK(!is_leader(), "serve() is for ranks other than the leader");
  for (;;) {
    std::vector<uint8_t> bytes;
    {
      // Waiting for work is not waiting for a peer in a step: no deadline (a dead leader
      // ends the job through mpirun).
      const DeadlineOverride unbounded(kIdleDeadlineS);
      comm::Watchdog::Scope scope("waiting for the leader's next command");
      comm::broadcast_bytes(world_, 0, bytes, "command");
    }
    Command c;
    std::vector<uint8_t> reply;
    try {
      c = decode_command(bytes);
      reply = execute(c);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "moerun: rank %d failed in command %d: %s\n", rank_,
                   static_cast<int>(c.kind), e.what());
      std::fflush(stderr);
      MPI_Abort(MPI_COMM_WORLD, 1);
    }
    {
      const comm::Watchdog::Scope scope("results");
      comm::gather_bytes(world_, 0, reply, "results");
    }
    if (c.kind == CommandKind::kShutdown) return;
  }
}

void DistributedEngine::shutdown() {
  require_leader("shutdown");
  Command c;
  c.kind = CommandKind::kShutdown;
  command(c);
  shut_down_ = true;
}

std::vector<RankStats> DistributedEngine::stats() {
  require_leader("stats");
  Command c;
  c.kind = CommandKind::kStats;
  std::vector<RankStats> out;
  for (const auto& reply : command(c)) {
    ByteReader r(reply);
    out.push_back(r.get<RankStats>());
  }
  return out;
}

Capacity DistributedEngine::capacity() const {
  Capacity cap;
  cap.max_sequences = slots_per_column_ * options_.ep;
  cap.block_tokens = block_tokens_;
  cap.kv_blocks = blocks_per_column_ * options_.ep;
  for (const ColumnInfo& col : columns_) {
    cap.free_sequences += col.free_slots;
    cap.free_kv_blocks += col.free_blocks;
  }
  cap.max_context = options_.engine.max_context;
  cap.max_batch_tokens = options_.engine.max_batch_tokens;
  // Rank 0 holds stage 0's share; the other stages' pools hold their own layers.
  cap.kv_bytes = self_->pool->bytes() * options_.ep;  // stage 0 only
  return cap;
}

SeqId DistributedEngine::add_sequence() {
  require_leader("add_sequence");
  // The column with the most free slots (the lowest on ties) takes the sequence.
  int32_t best = -1;
  for (size_t d = 0; d < columns_.size(); ++d)
    if (columns_[d].free_slots > 0 &&
        (best < 0 || columns_[d].free_slots > columns_[best].free_slots))
      best = static_cast<int32_t>(d);
  MOERUN_CHECK(best >= 0, "all {} sequence slots are in use ({} per column × {} columns)",
               slots_per_column_ * options_.ep, slots_per_column_, options_.ep);
  Command c;
  c.kind = CommandKind::kAddSequence;
  c.seq = next_id_++;
  c.column = best;
  command(c);
  columns_[best].free_slots--;
  seqs_[c.seq] = {best, 0};
  return c.seq;
}

void DistributedEngine::free_sequence(SeqId seq) {
  require_leader("free_sequence");
  auto it = seqs_.find(seq);
  MOERUN_CHECK(it != seqs_.end(), "free_sequence: unknown sequence id {}", seq);
  Command c;
  c.kind = CommandKind::kFreeSequence;
  c.seq = seq;
  c.column = it->second.column;
  command(c);
  ColumnInfo& col = columns_[it->second.column];
  col.free_slots++;
  col.free_blocks += self_->pool->blocks_for(it->second.length);
  seqs_.erase(it);
}

int64_t DistributedEngine::length(SeqId seq) const {
  auto it = seqs_.find(seq);
  MOERUN_CHECK(it != seqs_.end(), "length: unknown sequence id {}", seq);
  return it->second.length;
}

std::vector<StepResult> DistributedEngine::step(const std::vector<StepRequest>& requests,
                                                model::ForwardObserver* obs) {
  require_leader("step");
  const EngineOptions& eo = options_.engine;
  // ---- validate everything before any rank changes state --------------------------------
  MOERUN_CHECK(!requests.empty(), "step: no requests");
  std::set<SeqId> seen;
  std::vector<int64_t> col_tokens(columns_.size(), 0), col_blocks(columns_.size(), 0);
  for (const StepRequest& r : requests) {
    auto it = seqs_.find(r.seq);
    MOERUN_CHECK(it != seqs_.end(), "step: unknown sequence id {}", r.seq);
    MOERUN_CHECK(seen.insert(r.seq).second, "step: sequence {} appears twice in one step", r.seq);
    check_request_tokens(r, it->second.length, config_, eo);
    const int64_t end = it->second.length + static_cast<int64_t>(r.tokens.size());
    const size_t d = static_cast<size_t>(it->second.column);
    col_tokens[d] += static_cast<int64_t>(r.tokens.size());
    col_blocks[d] += self_->pool->blocks_for(end) - self_->pool->blocks_for(it->second.length);
  }
  for (size_t d = 0; d < columns_.size(); ++d) {
    MOERUN_CHECK(col_tokens[d] <= eo.max_batch_tokens,
                 "step: {} tokens for column {} in one step, over max_batch_tokens {}",
                 col_tokens[d], d, eo.max_batch_tokens);
    MOERUN_CHECK(col_blocks[d] <= columns_[d].free_blocks,
                 "step: column {} needs {} more KV blocks of {} tokens, {} of {} free", d,
                 col_blocks[d], block_tokens_, columns_[d].free_blocks, blocks_per_column_);
  }

  // ---- the plan: per column, prompt rows first, split into micro-batches by tokens -------
  Command c;
  c.kind = CommandKind::kStep;
  c.step = step_counter_++;
  c.observe = obs != nullptr;
  int64_t busiest = 0;
  std::vector<size_t> order(requests.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_partition(order.begin(), order.end(),
                        [&](size_t i) { return requests[i].phase == kernels::RowPhase::kPrefill; });
  std::vector<std::vector<size_t>> by_column(columns_.size());
  for (size_t i : order)
    by_column[static_cast<size_t>(seqs_.at(requests[i].seq).column)].push_back(i);
  for (const auto& list : by_column) busiest = std::max<int64_t>(busiest, list.size());
  c.micro_batches = static_cast<int32_t>(std::clamp<int64_t>(busiest, 1, options_.micro_batches));
  for (size_t d = 0; d < by_column.size(); ++d) {
    int64_t done = 0;
    for (size_t i : by_column[d]) {
      const StepRequest& r = requests[i];
      PlanRequest q;
      q.seq = r.seq;
      q.start = seqs_.at(r.seq).length;
      q.column = static_cast<int32_t>(d);
      // Micro-batch of the request's first token: equal shares of the column's tokens.
      q.micro_batch =
          static_cast<int32_t>(done * c.micro_batches / std::max<int64_t>(col_tokens[d], 1));
      q.num_tokens = static_cast<int32_t>(r.tokens.size());
      q.all_logits = r.all_logits;
      q.prefill = r.phase == kernels::RowPhase::kPrefill;
      q.return_logits = r.return_logits;
      q.has_sampling = r.sampling.has_value();
      if (r.sampling) q.sampling = *r.sampling;
      c.requests.push_back(q);
      c.tokens.insert(c.tokens.end(), r.tokens.begin(), r.tokens.end());
      done += q.num_tokens;
    }
  }
  // Prompt rows must come first inside each micro-batch: a prefill request never follows a
  // decode one in its column's order, and micro-batch indices never decrease along it.

  const std::vector<std::vector<uint8_t>> replies = command(c);

  // ---- results (from the last stage) and observations (from every rank) -----------------
  std::map<SeqId, StepResult> by_seq;
  const int64_t vocab = config_.vocab_size;
  for (const auto& reply : replies) {
    ByteReader rd(reply);
    if (reply.empty()) continue;
    const auto n = rd.get<int64_t>();
    for (int64_t i = 0; i < n; ++i) {
      StepResult res = decode_result(rd);
      MOERUN_CHECK(
          res.logits.empty() || static_cast<int64_t>(res.logits.size()) == res.rows * vocab,
          "step: sequence {} came back with {} logits for {} rows", res.seq, res.logits.size(),
          res.rows);
      by_seq[res.seq] = std::move(res);
    }
    if (obs)
      replay_observations(rd, *obs, config_.hc_mult * config_.hidden_size, config_.hidden_size);
  }
  std::vector<StepResult> out;
  for (const StepRequest& r : requests) {
    auto it = by_seq.find(r.seq);
    MOERUN_CHECK(it != by_seq.end(), "step: no result came back for sequence {}", r.seq);
    out.push_back(std::move(it->second));
    seqs_.at(r.seq).length += static_cast<int64_t>(r.tokens.size());
  }
  for (size_t d = 0; d < columns_.size(); ++d) columns_[d].free_blocks -= col_blocks[d];
  return out;
}

std::vector<float> DistributedEngine::run_isolated(int64_t layer, std::span<const float> h_in,
                                                   std::span<const int32_t> tokens, bool mtp) {
  require_leader("an isolated block run");
  check_isolated_run(layer, static_cast<int64_t>(h_in.size()), tokens, config_, options_.engine);
  MOERUN_CHECK(
      columns_[0].free_slots > 0 &&
          self_->pool->blocks_for(static_cast<int64_t>(tokens.size())) <= columns_[0].free_blocks,
      "isolated run: column 0 has no free sequence slot or KV blocks for {} tokens", tokens.size());
  Command c;
  c.kind = CommandKind::kIsolated;
  c.layer = layer;
  c.mtp = mtp;
  c.tokens.assign(tokens.begin(), tokens.end());
  c.h.assign(h_in.begin(), h_in.end());
  std::vector<float> out;
  for (const auto& reply : command(c)) {
    if (reply.empty()) continue;
    ByteReader rd(reply);
    out = rd.get_array<float>();
  }
  MOERUN_CHECK(out.size() == h_in.size(), "isolated run: {} values came back, expected {}",
               out.size(), h_in.size());
  return out;
}

std::vector<float> DistributedEngine::run_block_isolated(int64_t layer, std::span<const float> h_in,
                                                         std::span<const int32_t> tokens) {
  return run_isolated(layer, h_in, tokens, false);
}

std::vector<float> DistributedEngine::run_mtp_isolated(std::span<const float> h_main,
                                                       std::span<const int32_t> next_tokens) {
  MOERUN_CHECK(config_.num_nextn_predict_layers > 0, "the model has no MTP block");
  return run_isolated(config_.num_hidden_layers, h_main, next_tokens, true);
}

std::vector<float> DistributedEngine::embedding(int32_t token) const {
  require_leader("embedding");
  return self_->weights->embedding_row(token);
}

}  // namespace moerun::engine
