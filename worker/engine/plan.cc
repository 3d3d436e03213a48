// Command wire format: a fixed header, then the arrays in declaration order.
#include "worker/engine/plan.h"

#include "common/error.h"
#include "worker/engine/wire.h"

namespace moerun::engine {
namespace {

struct Header {
  CommandKind kind;
  int32_t column;
  int64_t step;
  int64_t seq;
  int64_t layer;
  int32_t micro_batches;
  uint8_t observe;
  uint8_t mtp;
};
static_assert(std::is_trivially_copyable_v<Header>);

}  // namespace

std::vector<uint8_t> encode_command(const Command& c) {
  ByteWriter w;
  Header h{};
  h.kind = c.kind;
  h.column = c.column;
  h.step = c.step;
  h.seq = c.seq;
  h.layer = c.layer;
  h.micro_batches = c.micro_batches;
  h.observe = c.observe;
  h.mtp = c.mtp;
  w.put(h);
  w.put_array(c.requests);
  w.put_array(c.tokens);
  w.put_array(c.h);
  return std::move(w.bytes());
}

Command decode_command(std::span<const uint8_t> bytes) {
  ByteReader r(bytes);
  const auto h = r.get<Header>();
  MOERUN_CHECK(h.kind >= CommandKind::kAddSequence && h.kind <= CommandKind::kShutdown,
               "command: unknown kind {}", static_cast<int32_t>(h.kind));
  Command c;
  c.kind = h.kind;
  c.column = h.column;
  c.step = h.step;
  c.seq = h.seq;
  c.layer = h.layer;
  c.micro_batches = h.micro_batches;
  c.observe = h.observe;
  c.mtp = h.mtp;
  c.requests = r.get_array<PlanRequest>();
  c.tokens = r.get_array<int32_t>();
  c.h = r.get_array<float>();
  MOERUN_CHECK(r.done(), "command: {} trailing bytes", bytes.size());
  int64_t total = 0;
  for (const PlanRequest& q : c.requests) {
    MOERUN_CHECK(q.num_tokens >= 0, "command: request with {} tokens", q.num_tokens);
    total += q.num_tokens;
  }
  MOERUN_CHECK(c.kind != CommandKind::kStep || total == static_cast<int64_t>(c.tokens.size()),
               "command: requests hold {} tokens but {} were sent", total, c.tokens.size());
  return c;
}

}  // namespace moerun::engine
