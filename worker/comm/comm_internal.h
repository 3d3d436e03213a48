// Internal to worker/comm (include it only from worker/comm/*.cc; not part of any module's
// interface): the pieces the mpi transport (transport_mpi.cc), the nccl transport
// (transport_nccl.cc) and the control plane (control.cc) share — world-rank lookup for the
// watchdog's messages, the argument checks common to both transports, the timer behind
// Transport::wait_seconds(), the free-list of point-to-point slots, and MPI requests completed
// through the Watchdog.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include <fmt/format.h>
#include <mpi.h>

#include "common/check_mpi.h"
#include "common/error.h"
#include "worker/comm/transport.h"
#include "worker/comm/watchdog.h"

namespace moerun::comm::detail {

// out[i] ← world rank of group rank ranks[i] of `comm` (n entries each).
inline void translate_to_world(MPI_Comm comm, int n, const int* ranks, int* out) {
  MPI_Group group = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
  MOERUN_CHECK_MPI(MPI_Comm_group(comm, &group));
  MOERUN_CHECK_MPI(MPI_Comm_group(MPI_COMM_WORLD, &world));
  MOERUN_CHECK_MPI(MPI_Group_translate_ranks(group, n, ranks, world, out));
  MOERUN_CHECK_MPI(MPI_Group_free(&group));
  MOERUN_CHECK_MPI(MPI_Group_free(&world));
}

// [size] world rank of every rank of `comm`, for the watchdog's messages.
inline std::vector<int> world_ranks_of(MPI_Comm comm, int size) {
  std::vector<int> ranks(static_cast<size_t>(size)), out(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) ranks[static_cast<size_t>(r)] = r;
  translate_to_world(comm, size, ranks.data(), out.data());
  return out;
}

// World rank of one group rank of `comm` (MPI_UNDEFINED if it has none).
inline int world_rank_of(MPI_Comm comm, int group_rank) {
  int out = MPI_UNDEFINED;
  translate_to_world(comm, 1, &group_rank, &out);
  return out;
}

// `group_rank`'s entry of a world_ranks_of() table, the rank checked against the group.
inline int checked_world_rank(const std::vector<int>& world_ranks, int group_rank) {
  MOERUN_CHECK(group_rank >= 0 && static_cast<size_t>(group_rank) < world_ranks.size(),
               "group rank {} outside [0, {})", group_rank, world_ranks.size());
  return world_ranks[static_cast<size_t>(group_rank)];
}

// A per-peer span argument of a transport collective has one entry per rank of the group.
inline void check_span(size_t n, int group_size, std::string_view what) {
  MOERUN_CHECK(n == static_cast<size_t>(group_size), "{}: {} entries for a group of {} ranks", what,
               n, group_size);
}

// isend/irecv: the peer lies in the group and the tag below the runtime's reserved ones.
inline void check_peer_and_tag(int peer, int tag, int group_size, std::string_view what) {
  MOERUN_CHECK(peer >= 0 && peer < group_size, "{}: peer {} outside the group [0, {})", what, peer,
               group_size);
  MOERUN_CHECK(tag >= 0 && tag < kUserTagLimit,
               "{}: tag {} outside [0, {}) (higher tags are reserved for the runtime)", what, tag,
               kUserTagLimit);
}

// Adds the wall time of a blocking call to a counter, also when the call throws.
class WaitTimer {
 public:
  explicit WaitTimer(double& total) : total_(total), start_(std::chrono::steady_clock::now()) {}
  ~WaitTimer() {
    total_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  }
  WaitTimer(const WaitTimer&) = delete;
  WaitTimer& operator=(const WaitTimer&) = delete;

 private:
  double& total_;
  std::chrono::steady_clock::time_point start_;
};

// The transports' point-to-point operations in flight, indexed by PendingOp::slot; freed
// slots are reused. `Slot{}` is a free slot.
template <class Slot>
class SlotTable {
 public:
  int64_t take(const Slot& s) {
    int64_t slot;
    if (!free_.empty()) {
      slot = free_.back();
      free_.pop_back();
    } else {
      slot = static_cast<int64_t>(slots_.size());
      slots_.emplace_back();
    }
    slots_[static_cast<size_t>(slot)] = s;
    return slot;
  }
  void release(int64_t slot) {
    slots_[static_cast<size_t>(slot)] = Slot{};
    free_.push_back(slot);
  }
  Slot& operator[](int64_t slot) { return slots_[static_cast<size_t>(slot)]; }
  int64_t size() const { return static_cast<int64_t>(slots_.size()); }
  void clear() { slots_.clear(); }

 private:
  std::vector<Slot> slots_;
  std::vector<int64_t> free_;
};

// Outstanding MPI requests of one wait, each with its group peer and the exact size a receive
// must have (-1: not checked, as for sends).
struct Requests {
  std::vector<MPI_Request> reqs;
  std::vector<int> peers;
  std::vector<int64_t> expected_bytes;
  // Appends a request (MPI_REQUEST_NULL until the caller posts it there).
  MPI_Request* add(int peer, int64_t expected = -1) {
    reqs.push_back(MPI_REQUEST_NULL);
    peers.push_back(peer);
    expected_bytes.push_back(expected);
    return &reqs.back();
  }
};

// Completes every request of `r` through the watchdog, checks that each receive got exactly
// the bytes expected, and calls `on_done(index)` (when set) as each completes. Errors and an
// expiry name peers by `world_rank(group rank)`.
inline void wait_requests(Requests& r, std::string_view what,
                          const std::function<int(int)>& world_rank,
                          const std::function<void(size_t)>& on_done = {}) {
  const int n = static_cast<int>(r.reqs.size());
  std::vector<int> indices(r.reqs.size());
  std::vector<MPI_Status> statuses(r.reqs.size());
  int remaining = n;
  auto poll = [&] {
    if (remaining == 0) return true;
    int completed = 0;
    MOERUN_CHECK_MPI(MPI_Testsome(n, r.reqs.data(), &completed, indices.data(), statuses.data()));
    if (completed == MPI_UNDEFINED) completed = 0;
    remaining -= completed;
    // Every completion is recorded before any size error is raised: MPI has freed those
    // requests, and the caller's bookkeeping must not keep their stale handles.
    std::string size_error;
    for (int k = 0; k < completed; ++k) {
      const size_t i = static_cast<size_t>(indices[static_cast<size_t>(k)]);
      if (on_done) on_done(i);
      if (r.expected_bytes[i] < 0 || !size_error.empty()) continue;
      int got = 0;
      MOERUN_CHECK_MPI(MPI_Get_count(&statuses[static_cast<size_t>(k)], MPI_BYTE, &got));
      if (got != r.expected_bytes[i]) {
        size_error = fmt::format("{}: received {} bytes from world rank {} but expected {}", what,
                                 got, world_rank(r.peers[i]), r.expected_bytes[i]);
      }
    }
    MOERUN_CHECK(size_error.empty(), "{}", size_error);
    return remaining == 0;
  };
  auto pending = [&] {
    std::vector<int> out;
    for (size_t i = 0; i < r.reqs.size(); ++i) {
      if (r.reqs[i] != MPI_REQUEST_NULL) out.push_back(world_rank(r.peers[i]));
    }
    return out;
  };
  Watchdog::instance().wait(poll, what, pending);
}

}  // namespace moerun::comm::detail
