// A miniature worker loop for the watchdog's end-to-end tests (tests/mpi/transport.cmake):
// every step rank 0 broadcasts a plan, then each layer exchanges counts and an all-to-all-v
// of bytes constructed from (source, destination, step, layer), then rank 0 gathers a result
// from every rank. MOERUN_FAULT makes one rank stall or exit at a layer (layer == --layers is
// the point just before the gather), so the tests can check that the other ranks' watchdog
// ends the job, naming the rank that is missing, instead of hanging.
//
//   comm_fault_probe [--steps N] [--layers L] [--bytes B]
// Exit status: 0 when every step completed and every byte checked out, 1 on a wrong byte or
// an error, 2 on bad arguments; a watchdog expiry aborts the job (status 70).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

#include <mpi.h>

#include "common/error.h"
#include "worker/comm/control.h"
#include "worker/comm/transport.h"
#include "worker/comm/watchdog.h"

namespace {

struct Options {
  int64_t steps = 3;
  int64_t layers = 4;
  int64_t bytes = 10000;  // per (source, destination) pair, varied a little per pair
};

bool parse_options(int argc, char** argv, Options& o) {
  for (int i = 1; i < argc; ++i) {
    int64_t* field = nullptr;
    if (std::strcmp(argv[i], "--steps") == 0) field = &o.steps;
    if (std::strcmp(argv[i], "--layers") == 0) field = &o.layers;
    if (std::strcmp(argv[i], "--bytes") == 0) field = &o.bytes;
    if (field == nullptr || i + 1 >= argc) return false;
    char* end = nullptr;
    *field = std::strtoll(argv[++i], &end, 10);
    if (*end != '\0' || *field < 0) return false;
  }
  return true;
}

uint8_t pattern(int src, int dst, int64_t step, int64_t layer, int64_t i) {
  return static_cast<uint8_t>(src * 31 + dst * 17 + step * 7 + layer * 5 + i * 3 + (i >> 8));
}

// One step of the loop; false if a received byte is wrong.
bool run_step(moerun::comm::Transport& t, const Options& o,
              const std::optional<moerun::comm::FaultSpec>& fault, int64_t step) {
  using moerun::comm::Watchdog;
  const int n = t.size(), me = t.rank();
  Watchdog::instance().site().step = step;
  std::vector<uint8_t> plan;
  {
    Watchdog::Scope scope("plan");
    if (me == 0) plan.assign(8, static_cast<uint8_t>(step));
    moerun::comm::broadcast_bytes(t.comm(), 0, plan, "plan");
  }
  bool ok = plan.size() == 8 && plan[0] == static_cast<uint8_t>(step);
  for (int64_t layer = 0; layer < o.layers; ++layer) {
    moerun::comm::fault_point(fault, t.world_rank(me), step, layer);
    Watchdog::Scope scope("dispatch", layer);
    std::vector<int64_t> send_bytes(n), send_off(n), recv_bytes(n), recv_off(n);
    int64_t send_total = 0, recv_total = 0;
    for (int p = 0; p < n; ++p) {
      send_bytes[p] = o.bytes + p + layer;
      send_off[p] = send_total;
      send_total += send_bytes[p];
    }
    t.exchange_counts(send_bytes, recv_bytes);
    for (int p = 0; p < n; ++p) {
      recv_off[p] = recv_total;
      recv_total += recv_bytes[p];
    }
    std::vector<uint8_t> send(static_cast<size_t>(send_total)),
        recv(static_cast<size_t>(recv_total));
    for (int p = 0; p < n; ++p) {
      for (int64_t i = 0; i < send_bytes[p]; ++i) {
        send[static_cast<size_t>(send_off[p] + i)] = pattern(me, p, step, layer, i);
      }
    }
    t.alltoallv(send.data(), send_bytes, send_off, recv.data(), recv_bytes, recv_off);
    for (int p = 0; p < n; ++p) {
      ok = ok && recv_bytes[p] == o.bytes + me + layer;
      for (int64_t i = 0; i < recv_bytes[p]; ++i) {
        ok = ok && recv[static_cast<size_t>(recv_off[p] + i)] == pattern(p, me, step, layer, i);
      }
    }
  }
  moerun::comm::fault_point(fault, t.world_rank(me), step, o.layers);
  Watchdog::Scope scope("results");
  const uint8_t mine[1] = {static_cast<uint8_t>(ok ? 1 : 0)};
  const auto all = moerun::comm::gather_bytes(t.comm(), 0, mine, "results");
  for (const auto& r : all) ok = ok && r.size() == 1 && r[0] == 1;
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  moerun::set_process_rank(rank);
  Options o;
  if (!parse_options(argc, argv, o)) {
    std::fprintf(stderr, "usage: comm_fault_probe [--steps N] [--layers L] [--bytes B]\n");
    MPI_Finalize();
    return 2;
  }
  int status = 0;
  try {
    auto& watchdog = moerun::comm::Watchdog::instance();
    watchdog.set_world_rank(rank);
    const auto fault = moerun::comm::fault_from_env();
    auto t = moerun::comm::make_transport(moerun::comm::TransportKind::kMpi, MPI_COMM_WORLD);
    bool ok = true;
    for (int64_t step = 0; step < o.steps; ++step) ok = run_step(*t, o, fault, step) && ok;
    if (rank == 0) std::printf("comm_fault_probe: %s\n", ok ? "all steps ok" : "WRONG BYTES");
    status = ok ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "comm_fault_probe: %s\n", e.what());
    std::fflush(stderr);
    // Another rank may be waiting on this one: end the job rather than hang in Finalize.
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return status;
}
