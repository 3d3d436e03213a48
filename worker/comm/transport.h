// The data plane between worker ranks (architecture §3): one interface, two implementations —
// `mpi` (host memory; MPI_Isend/MPI_Irecv, Open MPI over shared memory, TCP or UCX) and
// `nccl` (device memory; ncclSend/ncclRecv inside ncclGroupStart/End, the communicator
// bootstrapped by broadcasting its ncclUniqueId over MPI). A Transport spans one group of
// ranks (an MPI communicator): the ep ranks of a pipeline stage for dispatch/combine, or the
// whole job for the pipeline hand-off.
//
// Every blocking call waits through the Watchdog (watchdog.h): past the deadline the rank
// reports where it is and which peers it still waits for, and the job is aborted. Calls are
// made from one thread per process.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>

#include <mpi.h>

namespace moerun::comm {

enum class MemorySpace { kHost, kDevice };

enum class TransportKind { kMpi, kNccl };
// "mpi" | "nccl"; throws moerun::Error naming the allowed values.
TransportKind parse_transport_kind(std::string_view s);

// Memory in a transport's space (host or device), freed on destruction.
class Buffer {
 public:
  Buffer() = default;
  virtual ~Buffer() = default;
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;
  void* data() { return data_; }
  const void* data() const { return data_; }
  size_t bytes() const { return bytes_; }

 protected:
  void* data_ = nullptr;
  size_t bytes_ = 0;
};

// Completion handle of a non-blocking point-to-point operation.
struct PendingOp {
  int peer = -1;      // group rank
  bool send = false;  // for the watchdog's message
  int64_t slot = -1;  // implementation's handle
};

// isend/irecv tags lie in [0, kUserTagLimit); the tags above are reserved for the transports'
// own collectives and the control plane (control.h), so they never match a caller's message.
inline constexpr int kUserTagLimit = 1 << 20;

class Transport {
 public:
  virtual ~Transport() = default;
  virtual TransportKind kind() const = 0;
  virtual MemorySpace memory() const = 0;
  virtual int rank() const = 0;  // in the group
  virtual int size() const = 0;
  virtual int world_rank(int group_rank) const = 0;  // for messages
  virtual MPI_Comm comm() const = 0;                 // the group's MPI communicator

  // Memory in this transport's space and copies between it and the host.
  virtual std::unique_ptr<Buffer> alloc(size_t bytes) = 0;
  virtual void to_host(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void from_host(void* dst, const void* host_src, size_t bytes) = 0;

  // recv[p] ← what peer p passed as send[rank()]: one int64 per peer, both spans size().
  // Host memory on both transports. Counts travel before payloads.
  virtual void exchange_counts(std::span<const int64_t> send, std::span<int64_t> recv) = 0;
  // All-to-all-v of bytes: [send + send_off[p], + send_bytes[p]) goes to peer p, and
  // recv_bytes[p] bytes from p land at recv + recv_off[p]. Buffers in this transport's memory
  // space; spans size(). Zero-byte entries are allowed (and every rank must call, even with
  // nothing to send).
  virtual void alltoallv(const void* send, std::span<const int64_t> send_bytes,
                         std::span<const int64_t> send_off, void* recv,
                         std::span<const int64_t> recv_bytes,
                         std::span<const int64_t> recv_off) = 0;
  // Non-blocking point-to-point (buffers in this transport's space, alive until completed).
  // Messages between two ranks with the same tag arrive in the order they were posted.
  // Tags lie in [0, kUserTagLimit); a receive's `bytes` must equal the message's size.
  virtual PendingOp isend(int peer, const void* buf, size_t bytes, int tag) = 0;
  virtual PendingOp irecv(int peer, void* buf, size_t bytes, int tag) = 0;
  // Completes all of `ops` (the watchdog names the peers of those still pending).
  virtual void wait(std::span<PendingOp> ops) = 0;

  // Seconds spent inside blocking calls of this transport since construction (for the
  // communication share of a step).
  virtual double wait_seconds() const = 0;
};

// A transport over `comm` (not duplicated; it must outlive the transport). The nccl kind
// needs a GPU per rank (cudaSetDevice(local rank % devices)); without one it throws
// moerun::Error saying so.
std::unique_ptr<Transport> make_transport(TransportKind kind, MPI_Comm comm);

// True when this build has the nccl transport (CUDA present at build time).
bool nccl_available_in_build();

}  // namespace moerun::comm
