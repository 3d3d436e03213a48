// ForwardObserver records made on any rank of a cluster and replayed on the leader, so a
// tool observing a distributed step (moerun-replay) sees the same calls with the same values
// as in one process. A replayed call's StepBatch carries the rows' tokens and positions only
// (no KV handles or segments); calls arrive grouped by rank, not in the single-process order.
#pragma once

#include <span>

#include "worker/engine/wire.h"
#include "worker/model/model.h"

namespace moerun::engine {

// Serializes every observer call into `out`.
class RecordingObserver : public model::ForwardObserver {
 public:
  // `hc_dim` = hc · dim (a residual stream row), `dim` = hidden size (a head input row).
  RecordingObserver(ByteWriter& out, int64_t hc_dim, int64_t dim)
      : out_(out), hc_dim_(hc_dim), dim_(dim) {}
  void block_output(int64_t layer, const model::StepBatch& batch, const float* h) override;
  void router(int64_t layer, const model::StepBatch& batch, const int32_t* ids,
              const float* weights, int64_t k) override;
  void indexer(int64_t layer, const model::StepBatch& batch, int64_t row, const int32_t* chosen,
               int64_t n) override;
  void head_input(bool mtp, const model::StepBatch& batch, const float* y) override;
  void mtp_input(const model::StepBatch& batch, const float* x) override;
  // Closes the record stream.
  void finish();

 private:
  void rows(const model::StepBatch& batch);
  ByteWriter& out_;
  int64_t hc_dim_ = 0, dim_ = 0;
};

// Replays the records `RecordingObserver` wrote (up to its finish mark) into `obs`, reading
// from `in`. `hc_dim` = hc · dim, `dim` = hidden size.
void replay_observations(ByteReader& in, model::ForwardObserver& obs, int64_t hc_dim, int64_t dim);

}  // namespace moerun::engine
