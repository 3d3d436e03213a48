// Wire formats of commands (a fixed header, then the arrays in declaration order) and of
// step results.
#include "worker/engine/plan.h"

#include "common/error.h"
#include "worker/engine/wire.h"

namespace moerun::engine {
std::vector<uint8_t> encode_command(const Command& c) {
  ByteWriter w;
  w.put(static_cast<const CommandHeader&>(c));
  w.put_array(c.requests);
  w.put_array(c.tokens);
  w.put_array(c.h);
  return std::move(w.bytes());
}

Command decode_command(std::span<const uint8_t> bytes) {
  ByteReader r(bytes);
  Command c;
  static_cast<CommandHeader&>(c) = r.get<CommandHeader>();
  MOERUN_CHECK(c.kind >= CommandKind::kAddSequence && c.kind <= CommandKind::kShutdown,
               "command: unknown kind {}", static_cast<int32_t>(c.kind));
  c.requests = r.get_array<PlanRequest>();
  c.tokens = r.get_array<int32_t>();
  c.h = r.get_array<float>();
  MOERUN_CHECK(r.done(), "command: {} trailing bytes", r.remaining());
  int64_t total = 0;
  for (const PlanRequest& q : c.requests) {
    MOERUN_CHECK(q.num_tokens >= 0, "command: request with {} tokens", q.num_tokens);
    total += q.num_tokens;
  }
  MOERUN_CHECK(c.kind != CommandKind::kStep || total == static_cast<int64_t>(c.tokens.size()),
               "command: requests hold {} tokens but {} were sent", total, c.tokens.size());
  return c;
}

namespace {

struct ResultHeader {
  int64_t seq;
  int64_t first_position, rows;
  int64_t mtp_first_position, mtp_rows;
  int32_t token;
  int32_t reserved;
};
static_assert(std::has_unique_object_representations_v<ResultHeader>);

}  // namespace

void encode_result(ByteWriter& out, SeqId seq, const StepResult& r) {
  out.put(
      ResultHeader{seq, r.first_position, r.rows, r.mtp_first_position, r.mtp_rows, r.token, 0});
  out.put_array(r.logits);
  out.put_array(r.mtp_logits);
}

StepResult decode_result(ByteReader& in) {
  const auto h = in.get<ResultHeader>();
  StepResult r;
  r.seq = h.seq;
  r.first_position = h.first_position;
  r.rows = h.rows;
  r.mtp_first_position = h.mtp_first_position;
  r.mtp_rows = h.mtp_rows;
  r.token = h.token;
  r.logits = in.get_array<float>();
  r.mtp_logits = in.get_array<float>();
  return r;
}

}  // namespace moerun::engine
