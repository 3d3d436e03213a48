// The control plane over MPI (host memory, whatever the data transport): the leader's
// commands broadcast to every rank and the per-rank results gathered back. Every wait goes
// through the Watchdog, and is built from point-to-point messages so that an expired wait can
// name the ranks it still waits for.
#pragma once

#include <cstdint>
#include <span>
#include <string_view>
#include <vector>

#include <mpi.h>

namespace moerun::comm {

// Root's `bytes` reach every rank of `comm` (size first, then the payload); on other ranks
// `bytes` is replaced. `what` names the message for the watchdog ("plan", ...).
void broadcast_bytes(MPI_Comm comm, int root, std::vector<uint8_t>& bytes, std::string_view what);

// Every rank's `mine` reaches root: on root the result has one entry per rank of `comm` (its
// own included), elsewhere it is empty.
std::vector<std::vector<uint8_t>> gather_bytes(MPI_Comm comm, int root,
                                               std::span<const uint8_t> mine,
                                               std::string_view what);

// All ranks of `comm` reach this point (watchdog-bounded).
void barrier(MPI_Comm comm, std::string_view what);

}  // namespace moerun::comm
