// The `nccl` transport (architecture §3): device memory, ncclSend/ncclRecv inside
// ncclGroupStart/End on one stream per transport, the communicator bootstrapped by
// broadcasting its ncclUniqueId over the group's MPI communicator (a one-time setup, so a
// plain MPI_Bcast). Built as host code against the CUDA runtime and NCCL, only when CUDA is on.
//
// Waits poll the stream (or the ops' events) and the communicator's asynchronous error through
// the Watchdog; when a deadline expires the communicator is aborted first (so the kernels
// stuck waiting for a peer stop) and the transport cannot be used again.
//
// isend/irecv: NCCL has no tags — messages between two ranks match in posting order (the
// tag's range is still checked, for parity with the mpi transport). Operations posted since
// the last wait are issued together as one NCCL group when a wait (or any collective) comes,
// and complete together.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include <cuda_runtime_api.h>
#include <fmt/format.h>
#include <nccl.h>

#include "common/check_cuda.h"
#include "common/check_mpi.h"
#include "common/error.h"
#include "worker/comm/comm_internal.h"
#include "worker/comm/transport.h"
#include "worker/comm/watchdog.h"

namespace moerun::comm {
namespace {

class DeviceBuffer final : public Buffer {
 public:
  explicit DeviceBuffer(size_t bytes) {
    bytes_ = bytes;
    if (bytes > 0) MOERUN_CHECK_CUDA(cudaMalloc(&data_, bytes));
  }
  ~DeviceBuffer() override {
    if (data_ != nullptr) (void)cudaFree(data_);  // destructors must not throw
  }
};

// A CUDA event shared by the operations of one issued group.
struct Event {
  cudaEvent_t event = nullptr;
  Event() { MOERUN_CHECK_CUDA(cudaEventCreateWithFlags(&event, cudaEventDisableTiming)); }
  ~Event() { (void)cudaEventDestroy(event); }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
};

// This process's index among the job's processes on its host: the launcher's own variable
// when it sets one (so every transport of the process, whatever its group, picks the same
// device), else the rank among this group's ranks on the host.
int node_local_rank(MPI_Comm node_comm) {
  for (const char* var : {"OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", "SLURM_LOCALID"}) {
    if (const char* v = std::getenv(var)) {
      char* end = nullptr;
      const long r = std::strtol(v, &end, 10);
      if (end != v && *end == '\0' && r >= 0) return static_cast<int>(r);
    }
  }
  int r = 0;
  MOERUN_CHECK_MPI(MPI_Comm_rank(node_comm, &r));
  return r;
}

class NcclTransport final : public Transport {
 public:
  explicit NcclTransport(MPI_Comm comm) : comm_(comm) {
    MOERUN_CHECK_MPI(MPI_Comm_rank(comm_, &rank_));
    MOERUN_CHECK_MPI(MPI_Comm_size(comm_, &size_));
    world_ranks_ = detail::world_ranks_of(comm_, size_);
    select_device();
    MOERUN_CHECK_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    ncclUniqueId id;
    std::memset(&id, 0, sizeof(id));
    if (rank_ == 0) MOERUN_CHECK_NCCL(ncclGetUniqueId(&id));
    MOERUN_CHECK_MPI(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, comm_));
    MOERUN_CHECK_NCCL(ncclCommInitRank(&nccl_, size_, id, rank_));
    // [2, size] int64: the counts sent, then the counts received.
    MOERUN_CHECK_CUDA(cudaMalloc(&counts_dev_, 2 * static_cast<size_t>(size_) * sizeof(int64_t)));
  }

  ~NcclTransport() override {
    // Destructors must not throw: errors here are ignored (the job is ending or has failed).
    if (nccl_ != nullptr) {
      (void)cudaStreamSynchronize(stream_);
      (void)ncclCommDestroy(nccl_);
    }
    slots_.clear();
    if (counts_dev_ != nullptr) (void)cudaFree(counts_dev_);
    if (stream_ != nullptr) (void)cudaStreamDestroy(stream_);
  }

  TransportKind kind() const override { return TransportKind::kNccl; }
  MemorySpace memory() const override { return MemorySpace::kDevice; }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  int world_rank(int group_rank) const override {
    return detail::checked_world_rank(world_ranks_, group_rank);
  }
  MPI_Comm comm() const override { return comm_; }

  std::unique_ptr<Buffer> alloc(size_t bytes) override {
    MOERUN_CHECK_CUDA(cudaSetDevice(device_));
    return std::make_unique<DeviceBuffer>(bytes);
  }
  // Copies go through the transport's stream, so they are ordered after its transfers.
  void to_host(void* host_dst, const void* src, size_t bytes) override {
    if (bytes == 0) return;
    MOERUN_CHECK_CUDA(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    MOERUN_CHECK_CUDA(cudaStreamSynchronize(stream_));
  }
  void from_host(void* dst, const void* host_src, size_t bytes) override {
    if (bytes == 0) return;
    MOERUN_CHECK_CUDA(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, stream_));
    MOERUN_CHECK_CUDA(cudaStreamSynchronize(stream_));
  }

  void exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv) override {
    detail::check_span(send.size(), size_, "exchange_counts send");
    detail::check_span(recv.size(), size_, "exchange_counts recv");
    usable();
    detail::WaitTimer timer(wait_seconds_);
    flush();
    const size_t n = static_cast<size_t>(size_);
    int64_t* dev_send = counts_dev_;
    int64_t* dev_recv = counts_dev_ + n;
    MOERUN_CHECK_CUDA(cudaMemcpyAsync(dev_send, send.data(), n * sizeof(int64_t),
                                      cudaMemcpyHostToDevice, stream_));
    MOERUN_CHECK_NCCL(ncclGroupStart());
    for (int p = 0; p < size_; ++p) {
      MOERUN_CHECK_NCCL(ncclSend(dev_send + p, 1, ncclInt64, p, nccl_, stream_));
      MOERUN_CHECK_NCCL(ncclRecv(dev_recv + p, 1, ncclInt64, p, nccl_, stream_));
    }
    MOERUN_CHECK_NCCL(ncclGroupEnd());
    std::vector<int> peers;
    for (int p = 0; p < size_; ++p) {
      if (p != rank_) peers.push_back(p);
    }
    wait_stream("exchange_counts", peers);
    MOERUN_CHECK_CUDA(cudaMemcpyAsync(recv.data(), dev_recv, n * sizeof(int64_t),
                                      cudaMemcpyDeviceToHost, stream_));
    MOERUN_CHECK_CUDA(cudaStreamSynchronize(stream_));
  }

  void alltoallv(const void* send, std::span<const int64_t> send_bytes,
                 std::span<const int64_t> send_off, void* recv, std::span<const int64_t> recv_bytes,
                 std::span<const int64_t> recv_off) override {
    detail::check_span(send_bytes.size(), size_, "alltoallv send_bytes");
    detail::check_span(send_off.size(), size_, "alltoallv send_off");
    detail::check_span(recv_bytes.size(), size_, "alltoallv recv_bytes");
    detail::check_span(recv_off.size(), size_, "alltoallv recv_off");
    for (size_t p = 0; p < static_cast<size_t>(size_); ++p) {
      MOERUN_CHECK(send_bytes[p] >= 0 && recv_bytes[p] >= 0 && send_off[p] >= 0 && recv_off[p] >= 0,
                   "alltoallv: negative size or offset for group rank {} (send {} at {}, recv {} "
                   "at {})",
                   p, send_bytes[p], send_off[p], recv_bytes[p], recv_off[p]);
    }
    const size_t self = static_cast<size_t>(rank_);
    MOERUN_CHECK(send_bytes[self] == recv_bytes[self],
                 "alltoallv: this rank sends itself {} bytes but expects {}", send_bytes[self],
                 recv_bytes[self]);
    usable();
    detail::WaitTimer timer(wait_seconds_);
    flush();
    const auto* src = static_cast<const uint8_t*>(send);
    auto* dst = static_cast<uint8_t*>(recv);
    if (send_bytes[self] > 0) {
      MOERUN_CHECK_CUDA(cudaMemcpyAsync(dst + recv_off[self], src + send_off[self],
                                        static_cast<size_t>(send_bytes[self]),
                                        cudaMemcpyDeviceToDevice, stream_));
    }
    std::vector<int> peers;  // with any traffic, for the watchdog
    MOERUN_CHECK_NCCL(ncclGroupStart());
    for (int i = 1; i < size_; ++i) {
      const int p = (rank_ + i) % size_;
      const size_t q = static_cast<size_t>(p);
      if (send_bytes[q] > 0) {
        MOERUN_CHECK_NCCL(ncclSend(src + send_off[q], static_cast<size_t>(send_bytes[q]), ncclChar,
                                   p, nccl_, stream_));
      }
      if (recv_bytes[q] > 0) {
        MOERUN_CHECK_NCCL(ncclRecv(dst + recv_off[q], static_cast<size_t>(recv_bytes[q]), ncclChar,
                                   p, nccl_, stream_));
      }
      if (send_bytes[q] > 0 || recv_bytes[q] > 0) peers.push_back(p);
    }
    MOERUN_CHECK_NCCL(ncclGroupEnd());
    wait_stream("alltoallv", peers);
  }

  PendingOp isend(int peer, const void* buf, size_t bytes, int tag) override {
    detail::check_peer_and_tag(peer, tag, size_, "isend");
    return queue(Queued{peer, true, const_cast<void*>(buf), bytes});
  }
  PendingOp irecv(int peer, void* buf, size_t bytes, int tag) override {
    detail::check_peer_and_tag(peer, tag, size_, "irecv");
    return queue(Queued{peer, false, buf, bytes});
  }

  void wait(std::span<PendingOp> ops) override {
    usable();
    detail::WaitTimer timer(wait_seconds_);
    for (const PendingOp& op : ops) {
      MOERUN_CHECK(op.slot < slots_.size() && (op.slot < 0 || slots_[op.slot].live),
                   "wait: operation (slot {}, peer {}) was not posted on this transport", op.slot,
                   op.peer);
    }
    flush();
    auto poll = [&] {
      check_async_error();
      bool all = true;
      for (PendingOp& op : ops) {
        if (op.slot < 0) continue;
        Slot& s = slots_[op.slot];
        const cudaError_t e = cudaEventQuery(s.event->event);
        if (e == cudaErrorNotReady) {
          all = false;
          continue;
        }
        MOERUN_CHECK_CUDA(e);
        slots_.release(op.slot);
        op.slot = -1;
      }
      return all;
    };
    auto pending = [&] {
      abort_comm();
      std::vector<int> out;
      for (const PendingOp& op : ops) {
        if (op.slot >= 0) out.push_back(world_ranks_[static_cast<size_t>(op.peer)]);
      }
      return out;
    };
    Watchdog::instance().wait(poll, "point-to-point messages (nccl)", pending);
  }

  double wait_seconds() const override { return wait_seconds_; }

 private:
  struct Queued {
    int peer;
    bool send;
    void* buf;
    size_t bytes;
  };
  struct Slot {
    bool live = false;
    std::shared_ptr<Event> event;  // set when issued; shared by the ops of one group
  };

  // Picks this rank's device and checks, collectively, that every rank of the group has its
  // own: NCCL cannot put two ranks of one communicator on one device. All ranks agree before
  // any throws, so none is left waiting in the bootstrap.
  void select_device() {
    std::string problem;
    int count = 0;
    const cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess) {
      problem = fmt::format("cudaGetDeviceCount: {}", cudaGetErrorString(err));
      (void)cudaGetLastError();  // clear it: the process may go on with the mpi transport
    } else if (count == 0) {
      problem = "0 CUDA devices";
    }
    MPI_Comm node = MPI_COMM_NULL;
    MOERUN_CHECK_MPI(MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node));
    int node_size = 0;
    MOERUN_CHECK_MPI(MPI_Comm_size(node, &node_size));
    if (problem.empty()) {
      device_ = node_local_rank(node) % count;
      std::vector<int> devices(static_cast<size_t>(node_size));
      MOERUN_CHECK_MPI(MPI_Allgather(&device_, 1, MPI_INT, devices.data(), 1, MPI_INT, node));
      std::sort(devices.begin(), devices.end());
      if (std::adjacent_find(devices.begin(), devices.end()) != devices.end()) {
        problem = fmt::format(
            "{} ranks of this group on host {} share {} device(s); NCCL needs one per rank",
            node_size, process_host(), count);
      }
    } else {
      int unused = -1;
      std::vector<int> devices(static_cast<size_t>(node_size));
      MOERUN_CHECK_MPI(MPI_Allgather(&unused, 1, MPI_INT, devices.data(), 1, MPI_INT, node));
    }
    MOERUN_CHECK_MPI(MPI_Comm_free(&node));
    const int ok = problem.empty() ? 1 : 0;
    int all_ok = 0;
    MOERUN_CHECK_MPI(MPI_Allreduce(&ok, &all_ok, 1, MPI_INT, MPI_MIN, comm_));
    MOERUN_CHECK(all_ok, "nccl transport: no usable GPU {}",
                 ok ? std::string("on another rank of the group")
                    : fmt::format("on this rank ({})", problem));
    MOERUN_CHECK_CUDA(cudaSetDevice(device_));
  }

  void usable() const {
    MOERUN_CHECK(nccl_ != nullptr,
                 "nccl transport: the communicator was aborted after an expired wait");
  }

  PendingOp queue(const Queued& q) {
    usable();
    const int64_t slot = slots_.take(Slot{true, nullptr});
    queued_.push_back(q);
    queued_slots_.push_back(slot);
    return PendingOp{q.peer, q.send, slot};
  }

  // Issues the queued point-to-point operations as one group, followed by one event.
  void flush() {
    if (queued_.empty()) return;
    MOERUN_CHECK_NCCL(ncclGroupStart());
    for (const Queued& q : queued_) {
      if (q.send) {
        MOERUN_CHECK_NCCL(ncclSend(q.buf, q.bytes, ncclChar, q.peer, nccl_, stream_));
      } else {
        MOERUN_CHECK_NCCL(ncclRecv(q.buf, q.bytes, ncclChar, q.peer, nccl_, stream_));
      }
    }
    MOERUN_CHECK_NCCL(ncclGroupEnd());
    auto event = std::make_shared<Event>();
    MOERUN_CHECK_CUDA(cudaEventRecord(event->event, stream_));
    for (int64_t slot : queued_slots_) slots_[slot].event = event;
    queued_.clear();
    queued_slots_.clear();
  }

  // Raises a failure NCCL reported asynchronously (a peer vanished, a network error).
  void check_async_error() {
    ncclResult_t async = ncclSuccess;
    MOERUN_CHECK_NCCL(ncclCommGetAsyncError(nccl_, &async));
    if (async != ncclSuccess && async != ncclInProgress) {
      abort_comm();
      MOERUN_CHECK_NCCL(async);
    }
  }

  // Waits for everything issued on the stream; `peers` (group ranks) are those with traffic.
  void wait_stream(std::string_view what, const std::vector<int>& peers) {
    auto poll = [&] {
      const cudaError_t e = cudaStreamQuery(stream_);
      if (e == cudaSuccess) return true;
      if (e != cudaErrorNotReady) MOERUN_CHECK_CUDA(e);
      check_async_error();
      return false;
    };
    // Called by the watchdog only when the deadline has passed, just before its handler: stop
    // the kernels waiting for the missing peers first. Which of the group's transfers are
    // still outstanding is not visible, so every peer with traffic is named.
    auto pending = [&] {
      abort_comm();
      std::vector<int> out;
      for (int p : peers) out.push_back(world_ranks_[static_cast<size_t>(p)]);
      return out;
    };
    Watchdog::instance().wait(poll, fmt::format("{} (nccl)", what), pending);
  }

  void abort_comm() {
    if (nccl_ == nullptr) return;
    (void)ncclCommAbort(nccl_);  // best effort: the job is about to end
    nccl_ = nullptr;
  }

  MPI_Comm comm_;
  int rank_ = 0;
  int size_ = 1;
  int device_ = 0;
  std::vector<int> world_ranks_;  // [size] world rank of each group rank
  ncclComm_t nccl_ = nullptr;     // null once aborted
  cudaStream_t stream_ = nullptr;
  int64_t* counts_dev_ = nullptr;  // [2, size] int64 device staging for exchange_counts
  detail::SlotTable<Slot> slots_;  // isend/irecv, indexed by PendingOp::slot
  std::vector<Queued> queued_;     // posted, not yet issued (next flush)
  std::vector<int64_t> queued_slots_;
  double wait_seconds_ = 0;
};

}  // namespace

namespace detail {
std::unique_ptr<Transport> make_nccl_transport(MPI_Comm comm) {
  return std::make_unique<NcclTransport>(comm);
}
}  // namespace detail

}  // namespace moerun::comm
