// Internal to the distributed engine: what one rank holds (distributed.h has the design).
#pragma once

#include <map>
#include <memory>

#include "worker/comm/dispatch.h"
#include "worker/comm/transport.h"
#include "worker/engine/distributed.h"
#include "worker/kv/kv_pool.h"
#include "worker/model/model.h"
#include "worker/model/weights.h"

namespace moerun::engine {

struct DistributedEngine::Rank {
  int64_t stage = 0, column = 0;
  int64_t layer_begin = 0;  // this stage's main layers [layer_begin, main_end)
  int64_t main_end = 0;
  bool first = false, last = false;
  std::unique_ptr<kernels::Kernels> kernels;
  std::unique_ptr<model::ModelWeights> weights;
  std::unique_ptr<kv::KvPool> pool;
  std::unique_ptr<model::Model> model;
  MPI_Comm stage_comm = MPI_COMM_NULL;
  std::unique_ptr<comm::Transport> stage_transport;  // the ep ranks of this stage (ep > 1)
  std::unique_ptr<comm::Transport> pipe_transport;   // the whole job (pp > 1)
  std::unique_ptr<comm::Dispatcher> dispatcher;      // ep > 1
  std::map<SeqId, kv::SequenceKv> seqs;              // this column's sequences
  RankStats stats;
};

}  // namespace moerun::engine
