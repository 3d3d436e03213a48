// The leader's commands to every rank of a cluster (architecture §1): the step plan and the
// few others (sequence added or freed, an isolated block run, statistics, shutdown). Rank 0
// encodes a Command and broadcasts it; every rank decodes it and does its part.
#pragma once

#include <cstdint>
#include <span>
#include <type_traits>
#include <vector>

#include "kernels/kernels.h"
#include "worker/engine/step_engine.h"
#include "worker/engine/wire.h"

namespace moerun::engine {

enum class CommandKind : int32_t {
  kAddSequence = 1,  // seq → a slot on every rank of `column`
  kFreeSequence,     // seq's slot and blocks back to the pools of its column
  kStep,             // run `requests`
  kIsolated,         // run one block alone (golden checks): layer, tokens, h
  kStats,            // every rank reports its counters
  kShutdown,
};

// One sequence's share of a step.
struct PlanRequest {
  int64_t seq = -1;
  int64_t start = 0;        // position of the first new token (the sequence's length)
  int32_t column = 0;       // the data-parallel column that owns the sequence
  int32_t micro_batch = 0;  // 0 .. Command::micro_batches − 1
  int32_t num_tokens = 0;   // new tokens (their ids are in Command::tokens, in request order)
  uint8_t all_logits = 0;
  uint8_t prefill = 1;  // prompt rows (kernels::RowPhase::kPrefill)
  uint8_t return_logits = 1;
  uint8_t has_sampling = 0;
  kernels::SamplingParams sampling;
};
static_assert(std::is_trivially_copyable_v<PlanRequest>);

// A command's fixed part: it travels as one block of bytes (laid out without padding).
struct CommandHeader {
  CommandKind kind = CommandKind::kShutdown;
  int32_t column = -1;        // kAddSequence / kFreeSequence
  int64_t step = 0;           // a counter of kStep commands, for messages
  int64_t seq = -1;           // kAddSequence / kFreeSequence
  int64_t layer = -1;         // kIsolated (column 0 of the owning stage runs it on `tokens`)
  int32_t micro_batches = 1;  // kStep
  uint8_t observe = 0;        // kStep: ship ForwardObserver records to the leader
  uint8_t mtp = 0;            // kIsolated: the MTP block, its input built from h first
  uint8_t reserved[2] = {0, 0};
};
static_assert(std::has_unique_object_representations_v<CommandHeader>);

struct Command : CommandHeader {
  std::vector<PlanRequest> requests;  // kStep: per column in micro-batch order, prefill first
  std::vector<int32_t> tokens;        // kStep: all requests' new tokens, concatenated
  std::vector<float> h;               // kIsolated: [rows, hc, dim]
};

std::vector<uint8_t> encode_command(const Command& c);
// Throws moerun::Error on a malformed message.
Command decode_command(std::span<const uint8_t> bytes);

// One sequence's result of a step, as the last stage sends it to the leader.
void encode_result(ByteWriter& out, SeqId seq, const StepResult& r);
StepResult decode_result(ByteReader& in);  // throws on a truncated message

}  // namespace moerun::engine
