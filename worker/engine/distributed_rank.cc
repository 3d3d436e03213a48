// What one rank of the distributed engine does (see distributed.h): it loads its share of the
// checkpoint, and for each command runs its part — for a step: its column's micro-batches
// through its stage's layers, receiving the residual stream from the previous stage and
// handing it to the next, exchanging expert tokens with the other columns at every MoE
// layer; on the last stage also the head, sampling and the MTP block.
#include <chrono>
#include <cstring>
#include <memory>

#include "common/check_mpi.h"
#include "common/error.h"
#include "common/numfmt.h"
#include "common/process_stats.h"
#include "worker/comm/watchdog.h"
#include "worker/engine/distributed_rank.h"
#include "worker/engine/remote_observer.h"
#include "worker/engine/step_tail.h"
#include "worker/engine/wire.h"

namespace moerun::engine {
namespace {

constexpr int kHandOffTagBase = 100;  // + micro-batch index

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The hand-off of one micro-batch between stages: token ids [rows] and positions [rows]
// (int32), then the residual stream [rows, hc, dim] as bf16 — exact, the stream is bf16.
size_t hand_off_bytes(int64_t rows, int64_t hc_dim) {
  return static_cast<size_t>(rows) * (2 * sizeof(int32_t) + hc_dim * sizeof(uint16_t));
}

void pack_hand_off(const model::StepBatch& b, const float* h, int64_t hc_dim, uint8_t* out) {
  const size_t rows = static_cast<size_t>(b.rows());
  std::memcpy(out, b.tokens.data(), rows * sizeof(int32_t));
  std::memcpy(out + rows * sizeof(int32_t), b.positions.data(), rows * sizeof(int32_t));
  auto* bf = reinterpret_cast<uint16_t*>(out + rows * 2 * sizeof(int32_t));
  const int64_t bad = numfmt::f32_to_bf16_exact(h, b.rows() * hc_dim, bf);
  MOERUN_CHECK(bad < 0, "hand-off: residual stream value {} (index {}) is not bf16", h[bad], bad);
}

void unpack_hand_off(const model::StepBatch& b, const uint8_t* in, int64_t hc_dim, float* h) {
  const size_t rows = static_cast<size_t>(b.rows());
  std::vector<int32_t> tokens(rows), positions(rows);
  std::memcpy(tokens.data(), in, rows * sizeof(int32_t));
  std::memcpy(positions.data(), in + rows * sizeof(int32_t), rows * sizeof(int32_t));
  MOERUN_CHECK(tokens == b.tokens && positions == b.positions,
               "hand-off: the previous stage sent other tokens or positions than the plan says");
  const auto* bf = reinterpret_cast<const uint16_t*>(in + rows * 2 * sizeof(int32_t));
  numfmt::bf16_to_f32(bf, b.rows() * hc_dim, h);
}

}  // namespace

void DistributedEngine::setup_rank() {
  self_ = std::make_unique<Rank>();
  Rank& r = *self_;
  const EngineOptions& eo = options_.engine;
  r.stage = layout_.stage_of(rank_);
  r.column = layout_.column_of(rank_);
  r.first = r.stage == 0;
  r.last = r.stage == layout_.pp - 1;
  const RankSelection sel = layout_.selection(rank_, config_);
  r.layer_begin = sel.layer_begin;
  r.main_end = std::min<int64_t>(sel.layer_end, config_.num_hidden_layers);

  model::LoadRange range;
  range.layer_begin = sel.layer_begin;
  range.layer_end = sel.layer_end;
  range.expert_begin = sel.expert_begin;
  range.expert_end = sel.expert_end;
  range.embedding = sel.embedding;
  range.head = sel.head;
  r.kernels = kernels::make_kernels(eo.kernels, eo.num_threads);
  r.weights =
      model::ModelWeights::load(eo.checkpoint, *r.kernels, eo.experts_per_token, range, eo.config);
  r.pool = std::make_unique<kv::KvPool>(
      kv::KvLayout(config_, eo.block_tokens, sel.layer_begin, sel.layer_end), eo.max_sequences,
      eo.kv_blocks);
  r.model = std::make_unique<model::Model>(*r.weights, *r.kernels, *r.pool, eo.max_context);

  MOERUN_CHECK_MPI(
      MPI_Comm_split(world_, static_cast<int>(r.stage), static_cast<int>(r.column), &r.stage_comm));
  if (layout_.ep > 1) {
    r.stage_transport = comm::make_transport(options_.transport, r.stage_comm);
    comm::ExpertPlacement placement;
    placement.num_experts = config_.n_routed_experts;
    placement.ranks = static_cast<int>(layout_.ep);
    r.dispatcher = std::make_unique<comm::Dispatcher>(*r.stage_transport, placement);
    r.dispatcher->set_threads(eo.num_threads);
    r.model->set_dispatcher(r.dispatcher.get(), static_cast<int>(r.column));
  }
  if (layout_.pp > 1) r.pipe_transport = comm::make_transport(options_.transport, world_);
  r.stats.rank = rank_;
}

std::vector<uint8_t> DistributedEngine::execute(const Command& c) {
  Rank& r = *self_;
  switch (c.kind) {
    case CommandKind::kAddSequence:
      if (c.column == r.column) {
        MOERUN_CHECK(!r.seqs.count(c.seq), "sequence {} added twice", c.seq);
        r.seqs.emplace(c.seq, r.pool->acquire());
      }
      return {};
    case CommandKind::kFreeSequence:
      if (c.column == r.column) {
        auto it = r.seqs.find(c.seq);
        MOERUN_CHECK(it != r.seqs.end(), "free: sequence {} is not on rank {}", c.seq, rank_);
        r.pool->release(it->second);
        r.seqs.erase(it);
      }
      return {};
    case CommandKind::kStep:
      return run_step_part(c);
    case CommandKind::kIsolated:
      return run_isolated_part(c);
    case CommandKind::kStats: {
      ByteWriter w;
      RankStats s = r.stats;
      s.resident_bytes = resident_bytes();
      s.expert_begin = r.weights->expert_begin;
      s.expert_end = r.weights->expert_end;
      s.layer_begin = layout_.stage_layers[r.stage].first;
      s.layer_end = layout_.stage_layers[r.stage].second;
      if (r.dispatcher) s.exchange = r.dispatcher->stats();
      w.put(s);
      return std::move(w.bytes());
    }
    case CommandKind::kShutdown:
      return {};
  }
  MOERUN_THROW("unknown command {}", static_cast<int>(c.kind));
}

std::vector<uint8_t> DistributedEngine::run_step_part(const Command& c) {
  Rank& r = *self_;
  const auto t0 = std::chrono::steady_clock::now();
  auto comm_total = [&] {
    return (r.stage_transport ? r.stage_transport->wait_seconds() : 0.0) +
           (r.pipe_transport ? r.pipe_transport->wait_seconds() : 0.0);
  };
  const double comm0 = comm_total();
  const int64_t hc = config_.hc_mult, d = config_.hidden_size, hc_dim = hc * d;
  const int64_t M = c.micro_batches;
  comm::WaitSite& site = comm::Watchdog::instance().site();
  site.step = c.step;

  // This column's requests by micro-batch, with their token offsets in c.tokens.
  std::vector<std::vector<size_t>> mb(static_cast<size_t>(M));
  std::vector<int64_t> offset(c.requests.size());
  int64_t off = 0;
  for (size_t i = 0; i < c.requests.size(); ++i) {
    const PlanRequest& q = c.requests[i];
    offset[i] = off;
    off += q.num_tokens;
    if (q.column != r.column) continue;
    MOERUN_CHECK(q.micro_batch >= 0 && q.micro_batch < M, "plan: micro-batch {} of {}",
                 q.micro_batch, M);
    auto it = r.seqs.find(q.seq);
    MOERUN_CHECK(it != r.seqs.end(), "plan: sequence {} is not on rank {}", q.seq, rank_);
    MOERUN_CHECK(it->second.length == q.start, "plan: sequence {} is at {} here, the plan says {}",
                 q.seq, it->second.length, q.start);
    mb[static_cast<size_t>(q.micro_batch)].push_back(i);
  }

  ByteWriter results, records;
  RecordingObserver recorder(records, hc_dim, d);
  model::ForwardObserver* obs = c.observe ? &recorder : nullptr;
  int64_t num_results = 0;

  // Batches (KV reserved: the leader checked the capacity) and the receives, posted early.
  std::vector<model::StepBatch> batches(static_cast<size_t>(M));
  for (int64_t m = 0; m < M; ++m) {
    model::StepBatch& b = batches[m];
    for (size_t i : mb[m]) {
      const PlanRequest& q = c.requests[i];
      kv::SequenceKv& kv = r.seqs.at(q.seq);
      r.pool->reserve(kv, q.start + q.num_tokens);
      b.add(&kv, q.start,
            std::span<const int32_t>(c.tokens).subspan(static_cast<size_t>(offset[i]),
                                                       static_cast<size_t>(q.num_tokens)),
            q.prefill != 0);
    }
  }
  const int prev = r.first ? -1 : static_cast<int>(layout_.rank_of(r.stage - 1, r.column));
  const int next = r.last ? -1 : static_cast<int>(layout_.rank_of(r.stage + 1, r.column));
  // Hand-offs are packed in host memory; a device transport (nccl) moves them through
  // buffers of its own.
  const bool staged = r.pipe_transport && r.pipe_transport->memory() == comm::MemorySpace::kDevice;
  std::vector<std::vector<uint8_t>> inbox(static_cast<size_t>(M)), outbox(static_cast<size_t>(M));
  std::vector<std::unique_ptr<comm::Buffer>> dev_in(static_cast<size_t>(M)),
      dev_out(static_cast<size_t>(M));
  std::vector<comm::PendingOp> recvs(static_cast<size_t>(M)), sends;
  for (int64_t m = 0; m < M; ++m) {
    if (r.first || batches[m].rows() == 0) continue;
    inbox[m].resize(hand_off_bytes(batches[m].rows(), hc_dim));
    void* dst = inbox[m].data();
    if (staged) {
      dev_in[m] = r.pipe_transport->alloc(inbox[m].size());
      dst = dev_in[m]->data();
    }
    recvs[m] =
        r.pipe_transport->irecv(prev, dst, inbox[m].size(), kHandOffTagBase + static_cast<int>(m));
  }

  for (int64_t m = 0; m < M; ++m) {
    model::StepBatch& b = batches[m];
    std::vector<float> h(static_cast<size_t>(b.rows() * hc_dim));
    if (b.rows() > 0) {
      if (r.first) {
        r.model->embed(b, h.data(), hc);
      } else {
        comm::Watchdog::Scope scope("pipeline receive", r.layer_begin);
        r.pipe_transport->wait(std::span<comm::PendingOp>(&recvs[m], 1));
        if (staged) r.pipe_transport->to_host(inbox[m].data(), dev_in[m]->data(), inbox[m].size());
        unpack_hand_off(b, inbox[m].data(), hc_dim, h.data());
      }
    }
    for (int64_t l = r.layer_begin; l < r.main_end; ++l) {
      site.layer = l;
      comm::fault_point(options_.fault, rank_, c.step, l);
      r.model->run_layers(b, h.data(), l, l + 1, obs);
    }
    if (!r.last) {
      if (b.rows() > 0) {
        outbox[m].resize(hand_off_bytes(b.rows(), hc_dim));
        pack_hand_off(b, h.data(), hc_dim, outbox[m].data());
        const void* src = outbox[m].data();
        if (staged) {
          dev_out[m] = r.pipe_transport->alloc(outbox[m].size());
          r.pipe_transport->from_host(dev_out[m]->data(), src, outbox[m].size());
          src = dev_out[m]->data();
        }
        sends.push_back(r.pipe_transport->isend(next, src, outbox[m].size(),
                                                kHandOffTagBase + static_cast<int>(m)));
        r.stats.pipeline_sent += static_cast<int64_t>(outbox[m].size());
      }
      continue;
    }
    // Last stage: head, sampling, MTP.
    std::vector<TailRequest> tail;
    for (size_t i : mb[m]) {
      const PlanRequest& q = c.requests[i];
      TailRequest t;
      t.all_logits = q.all_logits;
      t.return_logits = q.return_logits;
      t.prefill = q.prefill;
      if (q.has_sampling) t.sampling = q.sampling;
      tail.push_back(t);
    }
    site.layer = config_.num_hidden_layers;
    std::vector<StepResult> res;
    run_step_tail(*r.model, *r.pool, b, h.data(), tail, options_.engine.mtp, res, obs);
    for (size_t j = 0; j < res.size(); ++j) {
      encode_result(results, c.requests[mb[m][j]].seq, res[j]);
      ++num_results;
    }
  }
  if (!sends.empty()) {
    comm::Watchdog::Scope scope("pipeline send", r.main_end - 1);
    r.pipe_transport->wait(sends);
  }
  for (const auto& list : mb)
    for (size_t i : list) r.seqs.at(c.requests[i].seq).length += c.requests[i].num_tokens;
  site.layer = -1;

  r.stats.steps++;
  r.stats.step_seconds += seconds_since(t0);
  r.stats.comm_seconds += comm_total() - comm0;
  if (num_results == 0 && !c.observe) return {};
  ByteWriter out;
  out.put<int64_t>(num_results);
  std::vector<uint8_t>& body = out.bytes();
  body.insert(body.end(), results.bytes().begin(), results.bytes().end());
  if (c.observe) {
    recorder.finish();
    body.insert(body.end(), records.bytes().begin(), records.bytes().end());
  }
  return std::move(body);
}

std::vector<uint8_t> DistributedEngine::run_isolated_part(const Command& c) {
  Rank& r = *self_;
  const int64_t stage_end = layout_.stage_layers[r.stage].second;
  if (c.layer < r.layer_begin || c.layer >= stage_end) return {};
  comm::WaitSite& site = comm::Watchdog::instance().site();
  site.layer = c.layer;
  const int64_t hc = config_.hc_mult, n = static_cast<int64_t>(c.tokens.size());
  model::StepBatch b;
  std::vector<float> h;
  kv::SequenceKv tmp;
  if (r.column == 0) {  // column 0 computes; the others take part in the expert exchange
    tmp = r.pool->acquire();
    r.pool->reserve(tmp, n);
    b.add(&tmp, 0, c.tokens, true);
    h = c.h;
    if (c.mtp) {
      std::vector<float> x(h.size());
      r.model->mtp_input(b, h.data(), c.layer, x.data());
      h.swap(x);
    }
  }
  MOERUN_CHECK(static_cast<int64_t>(h.size()) == b.rows() * hc * config_.hidden_size,
               "isolated run: stream of {} values for {} rows", h.size(), b.rows());
  r.model->run_layers(b, h.data(), c.layer, c.layer + 1, nullptr);
  site.layer = -1;
  if (r.column != 0) return {};
  r.pool->release(tmp);
  ByteWriter out;
  out.put_array(h);
  return std::move(out.bytes());
}

}  // namespace moerun::engine
