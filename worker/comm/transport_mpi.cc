// The `mpi` transport (architecture §3): host memory, every exchange built from MPI_Isend /
// MPI_Irecv so that a wait past its deadline can name exactly the peers (world ranks) whose
// messages are still outstanding — a blocking MPI_Alltoallv could only say "somebody".
//
// Tags: callers' isend/irecv use [0, kUserTagLimit); the transports' own collectives use
// kUserTagLimit + [0, 8) and the control plane (control.cc) kUserTagLimit + [8, 16), so the
// three kinds of message never match each other on a shared communicator.
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "common/check_mpi.h"
#include "common/error.h"
#include "worker/comm/transport.h"
#include "worker/comm/watchdog.h"

namespace moerun::comm {
namespace {

constexpr int kTagCounts = kUserTagLimit + 0;
constexpr int kTagAlltoallv = kUserTagLimit + 1;
constexpr int kLastReservedTag = kUserTagLimit + 15;  // highest tag the runtime uses
constexpr std::align_val_t kHostAlignment{64};        // cache line; enough for AVX-512 loads

class HostBuffer final : public Buffer {
 public:
  explicit HostBuffer(size_t bytes) {
    bytes_ = bytes;
    if (bytes > 0) data_ = ::operator new(bytes, kHostAlignment);
  }
  ~HostBuffer() override {
    if (data_ != nullptr) ::operator delete(data_, kHostAlignment);
  }
};

// MPI counts are int: one message carries at most INT_MAX bytes.
int message_bytes(int64_t bytes, std::string_view what, int peer) {
  MOERUN_CHECK(bytes >= 0 && bytes <= INT_MAX,
               "mpi transport: {} of {} bytes with group rank {} does not fit one MPI message "
               "(0 to {} bytes)",
               what, bytes, peer, INT_MAX);
  return static_cast<int>(bytes);
}

// World rank of every rank of `comm`, for the watchdog's messages.
std::vector<int> world_ranks_of(MPI_Comm comm, int size) {
  MPI_Group group = MPI_GROUP_NULL, world = MPI_GROUP_NULL;
  MOERUN_CHECK_MPI(MPI_Comm_group(comm, &group));
  MOERUN_CHECK_MPI(MPI_Comm_group(MPI_COMM_WORLD, &world));
  std::vector<int> ranks(static_cast<size_t>(size)), out(static_cast<size_t>(size));
  for (int r = 0; r < size; ++r) ranks[static_cast<size_t>(r)] = r;
  MOERUN_CHECK_MPI(MPI_Group_translate_ranks(group, size, ranks.data(), world, out.data()));
  MOERUN_CHECK_MPI(MPI_Group_free(&group));
  MOERUN_CHECK_MPI(MPI_Group_free(&world));
  return out;
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

class MpiTransport final : public Transport {
 public:
  explicit MpiTransport(MPI_Comm comm) : comm_(comm) {
    MOERUN_CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
    MOERUN_CHECK_MPI(MPI_Comm_size(comm_, &size_));
    world_ranks_ = world_ranks_of(comm_, size_);
    int* tag_ub = nullptr;
    int flag = 0;
    // MPI_TAG_UB is attached to MPI_COMM_WORLD only (and holds for every communicator).
    MOERUN_CHECK_MPI(MPI_Comm_get_attr(MPI_COMM_WORLD, MPI_TAG_UB, &tag_ub, &flag));
    MOERUN_CHECK(flag && *tag_ub >= kLastReservedTag,
                 "mpi transport: this MPI's largest tag ({}) is below the {} the runtime needs",
                 flag ? *tag_ub : -1, kLastReservedTag);
  }

  ~MpiTransport() override = default;

  TransportKind kind() const override { return TransportKind::kMpi; }
  MemorySpace memory() const override { return MemorySpace::kHost; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int world_rank(int group_rank) const override {
    MOERUN_CHECK(group_rank >= 0 && group_rank < size_, "group rank {} outside [0, {})", group_rank,
                 size_);
    return world_ranks_[static_cast<size_t>(group_rank)];
  }
  MPI_Comm comm() const override { return comm_; }

  std::unique_ptr<Buffer> alloc(size_t bytes) override {
    return std::make_unique<HostBuffer>(bytes);
  }
  void to_host(void* host_dst, const void* src, size_t bytes) override {
    if (bytes > 0) std::memcpy(host_dst, src, bytes);
  }
  void from_host(void* dst, const void* host_src, size_t bytes) override {
    if (bytes > 0) std::memcpy(dst, host_src, bytes);
  }

  void exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv) override {
    check_span(send.size(), "exchange_counts send");
    check_span(recv.size(), "exchange_counts recv");
    WaitTimer timer(wait_seconds_);
    Requests reqs;
    for (int i = 1; i < size_; ++i) {  // start at the next rank so that not everyone hits rank 0
      const int p = (rank_ + i) % size_;
      reqs.add(p, static_cast<int64_t>(sizeof(int64_t)));
      MOERUN_CHECK_MPI(MPI_Irecv(&recv[static_cast<size_t>(p)], 1, MPI_INT64_T, p, kTagCounts,
                                 comm_, &reqs.reqs.back()));
    }
    for (int i = 1; i < size_; ++i) {
      const int p = (rank_ + i) % size_;
      reqs.add(p, -1);
      MOERUN_CHECK_MPI(MPI_Isend(&send[static_cast<size_t>(p)], 1, MPI_INT64_T, p, kTagCounts,
                                 comm_, &reqs.reqs.back()));
    }
    recv[static_cast<size_t>(rank_)] = send[static_cast<size_t>(rank_)];
    wait_requests(reqs, "exchange_counts", {});
  }

  void alltoallv(const void* send, std::span<const int64_t> send_bytes,
                 std::span<const int64_t> send_off, void* recv, std::span<const int64_t> recv_bytes,
                 std::span<const int64_t> recv_off) override {
    check_span(send_bytes.size(), "alltoallv send_bytes");
    check_span(send_off.size(), "alltoallv send_off");
    check_span(recv_bytes.size(), "alltoallv recv_bytes");
    check_span(recv_off.size(), "alltoallv recv_off");
    for (int p = 0; p < size_; ++p) {
      const size_t i = static_cast<size_t>(p);
      message_bytes(send_bytes[i], "alltoallv send", p);
      message_bytes(recv_bytes[i], "alltoallv receive", p);
      MOERUN_CHECK(send_off[i] >= 0 && recv_off[i] >= 0,
                   "alltoallv: negative offset for group rank {} (send {}, recv {})", p,
                   send_off[i], recv_off[i]);
    }
    const size_t self = static_cast<size_t>(rank_);
    MOERUN_CHECK(send_bytes[self] == recv_bytes[self],
                 "alltoallv: this rank sends itself {} bytes but expects {}", send_bytes[self],
                 recv_bytes[self]);
    WaitTimer timer(wait_seconds_);
    const auto* src = static_cast<const uint8_t*>(send);
    auto* dst = static_cast<uint8_t*>(recv);
    Requests reqs;
    for (int i = 1; i < size_; ++i) {
      const int p = (rank_ + i) % size_;
      const int n = static_cast<int>(recv_bytes[static_cast<size_t>(p)]);
      if (n == 0) continue;
      reqs.add(p, n);
      MOERUN_CHECK_MPI(MPI_Irecv(dst + recv_off[static_cast<size_t>(p)], n, MPI_BYTE, p,
                                 kTagAlltoallv, comm_, &reqs.reqs.back()));
    }
    for (int i = 1; i < size_; ++i) {
      const int p = (rank_ + i) % size_;
      const int n = static_cast<int>(send_bytes[static_cast<size_t>(p)]);
      if (n == 0) continue;
      reqs.add(p, -1);
      MOERUN_CHECK_MPI(MPI_Isend(src + send_off[static_cast<size_t>(p)], n, MPI_BYTE, p,
                                 kTagAlltoallv, comm_, &reqs.reqs.back()));
    }
    if (send_bytes[self] > 0) {
      std::memcpy(dst + recv_off[self], src + send_off[self],
                  static_cast<size_t>(send_bytes[self]));
    }
    wait_requests(reqs, "alltoallv", {});
  }

  PendingOp isend(int peer, const void* buf, size_t bytes, int tag) override {
    const int n = check_p2p(peer, bytes, tag, "isend");
    const int64_t slot = take_slot(peer, -1);
    MOERUN_CHECK_MPI(
        MPI_Isend(buf, n, MPI_BYTE, peer, tag, comm_, &slots_[static_cast<size_t>(slot)].req));
    return PendingOp{peer, true, slot};
  }

  PendingOp irecv(int peer, void* buf, size_t bytes, int tag) override {
    const int n = check_p2p(peer, bytes, tag, "irecv");
    const int64_t slot = take_slot(peer, n);
    MOERUN_CHECK_MPI(
        MPI_Irecv(buf, n, MPI_BYTE, peer, tag, comm_, &slots_[static_cast<size_t>(slot)].req));
    return PendingOp{peer, false, slot};
  }

  void wait(std::span<PendingOp> ops) override {
    WaitTimer timer(wait_seconds_);
    Requests reqs;
    std::vector<size_t> op_of;  // request index → index in `ops`
    for (size_t i = 0; i < ops.size(); ++i) {
      const int64_t slot = ops[i].slot;
      if (slot < 0) continue;  // completed by an earlier wait
      MOERUN_CHECK(slot < static_cast<int64_t>(slots_.size()) &&
                       slots_[static_cast<size_t>(slot)].req != MPI_REQUEST_NULL,
                   "wait: operation {} (slot {}, peer {}) was not posted on this transport", i,
                   slot, ops[i].peer);
      const Slot& s = slots_[static_cast<size_t>(slot)];
      reqs.add(s.peer, s.expected_bytes);
      reqs.reqs.back() = s.req;
      op_of.push_back(i);
    }
    // Each completed request leaves its slot at once, so a wait that throws (a test's expiry
    // handler) leaves the remaining operations waitable again.
    wait_requests(reqs, "point-to-point messages", [&](size_t r) {
      PendingOp& op = ops[op_of[r]];
      slots_[static_cast<size_t>(op.slot)].req = MPI_REQUEST_NULL;
      free_slots_.push_back(op.slot);
      op.slot = -1;
    });
  }

  double wait_seconds() const override { return wait_seconds_; }

 private:
  // Outstanding requests of one wait, each with its group peer and, for receives, the exact
  // size expected (-1 for sends).
  struct Requests {
    std::vector<MPI_Request> reqs;
    std::vector<int> peers;
    std::vector<int64_t> expected_bytes;
    void add(int peer, int64_t expected) {
      reqs.push_back(MPI_REQUEST_NULL);
      peers.push_back(peer);
      expected_bytes.push_back(expected);
    }
  };
  struct Slot {
    MPI_Request req = MPI_REQUEST_NULL;
    int peer = -1;
    int64_t expected_bytes = -1;
  };

  void check_span(size_t n, std::string_view what) const {
    MOERUN_CHECK(n == static_cast<size_t>(size_), "{}: {} entries for a group of {} ranks", what, n,
                 size_);
  }

  int check_p2p(int peer, size_t bytes, int tag, std::string_view what) const {
    MOERUN_CHECK(peer >= 0 && peer < size_, "{}: peer {} outside the group [0, {})", what, peer,
                 size_);
    MOERUN_CHECK(tag >= 0 && tag < kUserTagLimit,
                 "{}: tag {} outside [0, {}) (higher tags are reserved for the runtime)", what, tag,
                 kUserTagLimit);
    MOERUN_CHECK(bytes <= static_cast<size_t>(INT_MAX),
                 "{}: {} bytes to group rank {} do not fit one MPI message (0 to {} bytes)", what,
                 bytes, peer, INT_MAX);
    return static_cast<int>(bytes);
  }

  int64_t take_slot(int peer, int64_t expected) {
    int64_t slot;
    if (!free_slots_.empty()) {
      slot = free_slots_.back();
      free_slots_.pop_back();
    } else {
      slot = static_cast<int64_t>(slots_.size());
      slots_.emplace_back();
    }
    slots_[static_cast<size_t>(slot)] = Slot{MPI_REQUEST_NULL, peer, expected};
    return slot;
  }

  // Completes every request of `r` through the watchdog, checks that each receive got exactly
  // the bytes expected, and calls `on_done(index)` as each completes.
  void wait_requests(Requests& r, std::string_view what,
                     const std::function<void(size_t)>& on_done) {
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
          size_error =
              fmt::format("{}: received {} bytes from world rank {} but expected {}", what, got,
                          world_ranks_[static_cast<size_t>(r.peers[i])], r.expected_bytes[i]);
        }
      }
      MOERUN_CHECK(size_error.empty(), "{}", size_error);
      return remaining == 0;
    };
    auto pending = [&] {
      std::vector<int> out;
      for (size_t i = 0; i < r.reqs.size(); ++i) {
        if (r.reqs[i] != MPI_REQUEST_NULL) {
          out.push_back(world_ranks_[static_cast<size_t>(r.peers[i])]);
        }
      }
      return out;
    };
    Watchdog::instance().wait(poll, what, pending);
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> world_ranks_;  // [size] world rank of each group rank
  std::vector<Slot> slots_;       // isend/irecv in flight, indexed by PendingOp::slot
  std::vector<int64_t> free_slots_;
  double wait_seconds_ = 0;
};

}  // namespace

namespace detail {
std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm) {
  return std::make_unique<MpiTransport>(comm);
}
}  // namespace detail

}  // namespace moerun::comm
