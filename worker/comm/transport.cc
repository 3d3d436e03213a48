// Choosing a transport (architecture §3): the name given on the command line or in a layout
// is parsed here, and make_transport builds the implementation from transport_mpi.cc or (in
// CUDA builds) transport_nccl.cc.
#include "worker/comm/transport.h"

#include "common/error.h"

namespace moerun::comm {

// Defined in transport_mpi.cc and transport_nccl.cc; only this factory calls them.
namespace detail {
std::unique_ptr<Transport> make_mpi_transport(MPI_Comm comm);
#ifdef MOERUN_HAVE_NCCL
std::unique_ptr<Transport> make_nccl_transport(MPI_Comm comm);
#endif
}  // namespace detail

TransportKind parse_transport_kind(std::string_view s) {
  if (s == "mpi") return TransportKind::kMpi;
  if (s == "nccl") return TransportKind::kNccl;
  MOERUN_THROW("unknown transport '{}' (allowed: mpi, nccl)", s);
}

bool nccl_available_in_build() {
#ifdef MOERUN_HAVE_NCCL
  return true;
#else
  return false;
#endif
}

std::unique_ptr<Transport> make_transport(TransportKind kind, MPI_Comm comm) {
  MOERUN_CHECK(comm != MPI_COMM_NULL, "make_transport: the communicator is MPI_COMM_NULL");
  switch (kind) {
    case TransportKind::kMpi:
      return detail::make_mpi_transport(comm);
    case TransportKind::kNccl:
#ifdef MOERUN_HAVE_NCCL
      return detail::make_nccl_transport(comm);
#else
      MOERUN_THROW(
          "nccl transport: not available in this build (built without CUDA/NCCL; "
          "use the mpi transport)");
#endif
  }
  MOERUN_THROW("make_transport: invalid TransportKind {}", static_cast<int>(kind));
}

}  // namespace moerun::comm
