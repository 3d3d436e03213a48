// The control plane (control.h): the leader's broadcasts, the results gathered back and
// barriers, all built from MPI point-to-point messages waited on through the Watchdog, so an
// expired wait names the ranks that never answered (MPI_Bcast/MPI_Gather could not).
//
// Tags kUserTagLimit + [8, 16) are the control plane's (transport_mpi.cc keeps + [0, 8)):
// control messages never match a transport's or a caller's message on a shared communicator.
// Successive calls reuse the same tags safely: MPI keeps messages between two ranks with one
// tag in order, and every rank makes the same sequence of calls.
#include "worker/comm/control.h"

#include <climits>
#include <string>

#include <fmt/format.h>

#include "common/check_mpi.h"
#include "common/error.h"
#include "worker/comm/comm_internal.h"
#include "worker/comm/transport.h"

namespace moerun::comm {
namespace {

constexpr int kTagBcastSize = kUserTagLimit + 8;
constexpr int kTagBcastData = kUserTagLimit + 9;
constexpr int kTagGatherSize = kUserTagLimit + 10;
constexpr int kTagGatherData = kUserTagLimit + 11;

struct Group {
  MPI_Comm comm;
  int rank = 0;
  int size = 1;
  explicit Group(MPI_Comm c) : comm(c) {
    MOERUN_CHECK(c != MPI_COMM_NULL, "control plane: the communicator is MPI_COMM_NULL");
    MOERUN_CHECK_MPI(MPI_Comm_rank(c, &rank));
    MOERUN_CHECK_MPI(MPI_Comm_size(c, &size));
  }
  int world_rank(int group_rank) const { return detail::world_rank_of(comm, group_rank); }
};

using detail::Requests;  // sizes are not checked (expected -1): each payload's size comes first

// Completes all of `r` through the watchdog; an expiry names the world ranks still pending.
void wait_all(const Group& g, Requests& r, const std::string& what) {
  detail::wait_requests(r, what, [&g](int p) { return g.world_rank(p); });
}

int payload_bytes(size_t bytes, std::string_view what) {
  MOERUN_CHECK(bytes <= static_cast<size_t>(INT_MAX),
               "control plane: {} of {} bytes exceeds one MPI message (at most {} bytes)", what,
               bytes, INT_MAX);
  return static_cast<int>(bytes);
}

void check_root(const Group& g, int root, std::string_view what) {
  MOERUN_CHECK(root >= 0 && root < g.size, "{}: root {} outside the group [0, {})", what, root,
               g.size);
}

}  // namespace

void broadcast_bytes(MPI_Comm comm, int root, std::vector<uint8_t>& bytes, std::string_view what) {
  const Group g(comm);
  check_root(g, root, what);
  const std::string desc = fmt::format("broadcast of {} from rank {}", what, g.world_rank(root));
  if (g.rank == root) {
    const int64_t size = static_cast<int64_t>(bytes.size());
    const int n = payload_bytes(bytes.size(), desc);
    Requests r;
    for (int i = 1; i < g.size; ++i) {
      const int p = (root + i) % g.size;
      MOERUN_CHECK_MPI(MPI_Isend(&size, 1, MPI_INT64_T, p, kTagBcastSize, comm, r.add(p)));
      if (n > 0) {
        MOERUN_CHECK_MPI(MPI_Isend(bytes.data(), n, MPI_BYTE, p, kTagBcastData, comm, r.add(p)));
      }
    }
    wait_all(g, r, desc);
    return;
  }
  int64_t size = -1;
  Requests head;
  MOERUN_CHECK_MPI(MPI_Irecv(&size, 1, MPI_INT64_T, root, kTagBcastSize, comm, head.add(root)));
  wait_all(g, head, desc);
  MOERUN_CHECK(size >= 0 && size <= INT_MAX, "{}: bad size {}", desc, size);
  bytes.resize(static_cast<size_t>(size));
  if (size == 0) return;
  Requests body;
  MOERUN_CHECK_MPI(MPI_Irecv(bytes.data(), static_cast<int>(size), MPI_BYTE, root, kTagBcastData,
                             comm, body.add(root)));
  wait_all(g, body, desc);
}

std::vector<std::vector<uint8_t>> gather_bytes(MPI_Comm comm, int root,
                                               std::span<const uint8_t> mine,
                                               std::string_view what) {
  const Group g(comm);
  check_root(g, root, what);
  const std::string desc = fmt::format("gather of {} to rank {}", what, g.world_rank(root));
  const int n = payload_bytes(mine.size(), desc);
  if (g.rank != root) {
    const int64_t size = n;
    Requests r;
    MOERUN_CHECK_MPI(MPI_Isend(&size, 1, MPI_INT64_T, root, kTagGatherSize, comm, r.add(root)));
    if (n > 0) {
      MOERUN_CHECK_MPI(
          MPI_Isend(mine.data(), n, MPI_BYTE, root, kTagGatherData, comm, r.add(root)));
    }
    wait_all(g, r, desc);
    return {};
  }
  std::vector<std::vector<uint8_t>> out(static_cast<size_t>(g.size));
  out[static_cast<size_t>(root)].assign(mine.begin(), mine.end());
  std::vector<int64_t> sizes(static_cast<size_t>(g.size), 0);
  Requests heads;
  for (int p = 0; p < g.size; ++p) {
    if (p == root) continue;
    MOERUN_CHECK_MPI(MPI_Irecv(&sizes[static_cast<size_t>(p)], 1, MPI_INT64_T, p, kTagGatherSize,
                               comm, heads.add(p)));
  }
  wait_all(g, heads, desc);
  Requests bodies;
  for (int p = 0; p < g.size; ++p) {
    if (p == root) continue;
    const int64_t size = sizes[static_cast<size_t>(p)];
    MOERUN_CHECK(size >= 0 && size <= INT_MAX, "{}: bad size {} from group rank {}", desc, size, p);
    std::vector<uint8_t>& dst = out[static_cast<size_t>(p)];
    dst.resize(static_cast<size_t>(size));
    if (size == 0) continue;
    MOERUN_CHECK_MPI(MPI_Irecv(dst.data(), static_cast<int>(size), MPI_BYTE, p, kTagGatherData,
                               comm, bodies.add(p)));
  }
  wait_all(g, bodies, desc);
  return out;
}

void barrier(MPI_Comm comm, std::string_view what) {
  // Everyone reports to group rank 0, which then releases everyone: two rounds of empty
  // messages, each wait naming the ranks that have not arrived.
  const std::string name = fmt::format("barrier {}", what);
  gather_bytes(comm, 0, {}, name);
  std::vector<uint8_t> none;
  broadcast_bytes(comm, 0, none, name);
}

}  // namespace moerun::comm
