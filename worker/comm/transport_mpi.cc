// The `mpi` transport (architecture §3): host memory, every exchange built from MPI_Isend /
// MPI_Irecv so that a wait past its deadline can name exactly the peers (world ranks) whose
// messages are still outstanding — a blocking MPI_Alltoallv could only say "somebody".
//
// Tags: callers' isend/irecv use [0, kUserTagLimit); the transports' own collectives use
// kUserTagLimit + [0, 8) and the control plane (control.cc) kUserTagLimit + [8, 16), so the
// three kinds of message never match each other on a shared communicator.
#include <climits>
#include <cstring>
#include <functional>
#include <new>
#include <string>
#include <vector>

#include "common/check_mpi.h"
#include "common/error.h"
#include "worker/comm/comm_internal.h"
#include "worker/comm/transport.h"

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

class MpiTransport final : public Transport {
 public:
  explicit MpiTransport(MPI_Comm comm) : comm_(comm) {
    MOERUN_CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
    MOERUN_CHECK_MPI(MPI_Comm_size(comm_, &size_));
    world_ranks_ = detail::world_ranks_of(comm_, size_);
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
    return detail::checked_world_rank(world_ranks_, group_rank);
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
    detail::check_span(send.size(), size_, "exchange_counts send");
    detail::check_span(recv.size(), size_, "exchange_counts recv");
    detail::WaitTimer timer(wait_seconds_);
    detail::Requests reqs;
    for (int i = 1; i < size_; ++i) {  // start at the next rank so that not everyone hits rank 0
      const int p = (rank_ + i) % size_;
      MOERUN_CHECK_MPI(MPI_Irecv(&recv[static_cast<size_t>(p)], 1, MPI_INT64_T, p, kTagCounts,
                                 comm_, reqs.add(p, static_cast<int64_t>(sizeof(int64_t)))));
    }
    for (int i = 1; i < size_; ++i) {
      const int p = (rank_ + i) % size_;
      MOERUN_CHECK_MPI(MPI_Isend(&send[static_cast<size_t>(p)], 1, MPI_INT64_T, p, kTagCounts,
                                 comm_, reqs.add(p)));
    }
    recv[static_cast<size_t>(rank_)] = send[static_cast<size_t>(rank_)];
    wait_requests(reqs, "exchange_counts");
  }

  void alltoallv(const void* send, std::span<const int64_t> send_bytes,
                 std::span<const int64_t> send_off, void* recv, std::span<const int64_t> recv_bytes,
                 std::span<const int64_t> recv_off) override {
    detail::check_span(send_bytes.size(), size_, "alltoallv send_bytes");
    detail::check_span(send_off.size(), size_, "alltoallv send_off");
    detail::check_span(recv_bytes.size(), size_, "alltoallv recv_bytes");
    detail::check_span(recv_off.size(), size_, "alltoallv recv_off");
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
    detail::WaitTimer timer(wait_seconds_);
    const auto* src = static_cast<const uint8_t*>(send);
    auto* dst = static_cast<uint8_t*>(recv);
    detail::Requests reqs;
    for (int i = 1; i < size_; ++i) {
      const int p = (rank_ + i) % size_;
      const int n = static_cast<int>(recv_bytes[static_cast<size_t>(p)]);
      if (n == 0) continue;
      MOERUN_CHECK_MPI(MPI_Irecv(dst + recv_off[static_cast<size_t>(p)], n, MPI_BYTE, p,
                                 kTagAlltoallv, comm_, reqs.add(p, n)));
    }
    for (int i = 1; i < size_; ++i) {
      const int p = (rank_ + i) % size_;
      const int n = static_cast<int>(send_bytes[static_cast<size_t>(p)]);
      if (n == 0) continue;
      MOERUN_CHECK_MPI(MPI_Isend(src + send_off[static_cast<size_t>(p)], n, MPI_BYTE, p,
                                 kTagAlltoallv, comm_, reqs.add(p)));
    }
    if (send_bytes[self] > 0) {
      std::memcpy(dst + recv_off[self], src + send_off[self],
                  static_cast<size_t>(send_bytes[self]));
    }
    wait_requests(reqs, "alltoallv");
  }

  PendingOp isend(int peer, const void* buf, size_t bytes, int tag) override {
    const int n = check_p2p(peer, bytes, tag, "isend");
    const int64_t slot = slots_.take(Slot{MPI_REQUEST_NULL, peer, -1});
    MOERUN_CHECK_MPI(MPI_Isend(buf, n, MPI_BYTE, peer, tag, comm_, &slots_[slot].req));
    return PendingOp{peer, true, slot};
  }

  PendingOp irecv(int peer, void* buf, size_t bytes, int tag) override {
    const int n = check_p2p(peer, bytes, tag, "irecv");
    const int64_t slot = slots_.take(Slot{MPI_REQUEST_NULL, peer, n});
    MOERUN_CHECK_MPI(MPI_Irecv(buf, n, MPI_BYTE, peer, tag, comm_, &slots_[slot].req));
    return PendingOp{peer, false, slot};
  }

  void wait(std::span<PendingOp> ops) override {
    detail::WaitTimer timer(wait_seconds_);
    detail::Requests reqs;
    std::vector<size_t> op_of;  // request index → index in `ops`
    for (size_t i = 0; i < ops.size(); ++i) {
      const int64_t slot = ops[i].slot;
      if (slot < 0) continue;  // completed by an earlier wait
      MOERUN_CHECK(slot < slots_.size() && slots_[slot].req != MPI_REQUEST_NULL,
                   "wait: operation {} (slot {}, peer {}) was not posted on this transport", i,
                   slot, ops[i].peer);
      const Slot& s = slots_[slot];
      *reqs.add(s.peer, s.expected_bytes) = s.req;
      op_of.push_back(i);
    }
    // Each completed request leaves its slot at once, so a wait that throws (a test's expiry
    // handler) leaves the remaining operations waitable again.
    wait_requests(reqs, "point-to-point messages", [&](size_t r) {
      PendingOp& op = ops[op_of[r]];
      slots_.release(op.slot);
      op.slot = -1;
    });
  }

  double wait_seconds() const override { return wait_seconds_; }

 private:
  struct Slot {
    MPI_Request req = MPI_REQUEST_NULL;
    int peer = -1;
    int64_t expected_bytes = -1;
  };

  int check_p2p(int peer, size_t bytes, int tag, std::string_view what) const {
    detail::check_peer_and_tag(peer, tag, size_, what);
    MOERUN_CHECK(bytes <= static_cast<size_t>(INT_MAX),
                 "{}: {} bytes to group rank {} do not fit one MPI message (0 to {} bytes)", what,
                 bytes, peer, INT_MAX);
    return static_cast<int>(bytes);
  }

  // Completes `r` through the watchdog (comm_internal.h), naming peers by world rank.
  void wait_requests(detail::Requests& r, std::string_view what,
                     const std::function<void(size_t)>& on_done = {}) {
    detail::wait_requests(
        r, what, [this](int p) { return world_ranks_[static_cast<size_t>(p)]; }, on_done);
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  std::vector<int> world_ranks_;   // [size] world rank of each group rank
  detail::SlotTable<Slot> slots_;  // isend/irecv in flight, indexed by PendingOp::slot
  double wait_seconds_ = 0;
};

}  // namespace

namespace detail {
std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm) {
  return std::make_unique<MpiTransport>(comm);
}
}  // namespace detail

}  // namespace moerun::comm
