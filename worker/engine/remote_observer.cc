// Observer records: a kind tag, the layer (or flag), the rows' tokens and positions, then the
// values. An end tag closes a rank's stream.
#include "worker/engine/remote_observer.h"

#include "common/error.h"

namespace moerun::engine {
namespace {

enum class Rec : int32_t { kEnd = 0, kBlock, kRouter, kIndexer, kHead, kMtpInput };

model::StepBatch read_rows(ByteReader& in) {
  model::StepBatch b;
  b.tokens = in.get_array<int32_t>();
  b.positions = in.get_array<int32_t>();
  MOERUN_CHECK(b.tokens.size() == b.positions.size(), "observer record: {} tokens, {} positions",
               b.tokens.size(), b.positions.size());
  return b;
}

// Values of `per_row` elements for each row of `b`.
template <class T>
std::vector<T> read_values(ByteReader& in, const model::StepBatch& b, int64_t per_row) {
  std::vector<T> v = in.get_array<T>();
  MOERUN_CHECK(static_cast<int64_t>(v.size()) == b.rows() * per_row,
               "observer record: {} values for {} rows of {}", v.size(), b.rows(), per_row);
  return v;
}

}  // namespace

void RecordingObserver::rows(const model::StepBatch& batch) {
  out_.put_array(batch.tokens);
  out_.put_array(batch.positions);
}

void RecordingObserver::block_output(int64_t layer, const model::StepBatch& batch, const float* h) {
  if (batch.rows() == 0) return;
  out_.put(Rec::kBlock);
  out_.put(layer);
  rows(batch);
  out_.put_array(std::span<const float>(h, static_cast<size_t>(batch.rows() * hc_dim_)));
}

void RecordingObserver::router(int64_t layer, const model::StepBatch& batch, const int32_t* ids,
                               const float* weights, int64_t k) {
  if (batch.rows() == 0) return;
  out_.put(Rec::kRouter);
  out_.put(layer);
  out_.put(k);
  rows(batch);
  const auto n = static_cast<size_t>(batch.rows() * k);
  out_.put_array(std::span<const int32_t>(ids, n));
  out_.put_array(std::span<const float>(weights, n));
}

void RecordingObserver::indexer(int64_t layer, const model::StepBatch& batch, int64_t row,
                                const int32_t* chosen, int64_t n) {
  out_.put(Rec::kIndexer);
  out_.put(layer);
  model::StepBatch one;
  one.tokens = {batch.tokens[row]};
  one.positions = {batch.positions[row]};
  rows(one);
  out_.put_array(std::span<const int32_t>(chosen, static_cast<size_t>(n)));
}

void RecordingObserver::head_input(bool mtp, const model::StepBatch& batch, const float* y) {
  if (batch.rows() == 0) return;
  out_.put(Rec::kHead);
  out_.put<int64_t>(mtp ? 1 : 0);
  rows(batch);
  out_.put_array(std::span<const float>(y, static_cast<size_t>(batch.rows() * dim_)));
}

void RecordingObserver::mtp_input(const model::StepBatch& batch, const float* x) {
  if (batch.rows() == 0) return;
  out_.put(Rec::kMtpInput);
  out_.put<int64_t>(0);
  rows(batch);
  out_.put_array(std::span<const float>(x, static_cast<size_t>(batch.rows() * hc_dim_)));
}

void RecordingObserver::finish() {
  out_.put(Rec::kEnd);
}

void replay_observations(ByteReader& in, model::ForwardObserver& obs, int64_t hc_dim, int64_t dim) {
  for (;;) {
    const auto kind = in.get<Rec>();
    if (kind == Rec::kEnd) return;
    const auto layer = in.get<int64_t>();
    switch (kind) {
      case Rec::kBlock: {
        const model::StepBatch b = read_rows(in);
        const auto h = read_values<float>(in, b, hc_dim);
        obs.block_output(layer, b, h.data());
        break;
      }
      case Rec::kRouter: {
        const auto k = in.get<int64_t>();
        const model::StepBatch b = read_rows(in);
        const auto ids = read_values<int32_t>(in, b, k);
        const auto w = read_values<float>(in, b, k);
        obs.router(layer, b, ids.data(), w.data(), k);
        break;
      }
      case Rec::kIndexer: {
        const model::StepBatch b = read_rows(in);
        const auto chosen = in.get_array<int32_t>();
        obs.indexer(layer, b, 0, chosen.data(), static_cast<int64_t>(chosen.size()));
        break;
      }
      case Rec::kHead: {
        const model::StepBatch b = read_rows(in);
        const auto y = read_values<float>(in, b, dim);
        obs.head_input(layer != 0, b, y.data());
        break;
      }
      case Rec::kMtpInput: {
        const model::StepBatch b = read_rows(in);
        const auto x = read_values<float>(in, b, hc_dim);
        obs.mtp_input(b, x.data());
        break;
      }
      default:
        MOERUN_THROW("observer record: unknown kind {}", static_cast<int32_t>(kind));
    }
  }
}

}  // namespace moerun::engine
