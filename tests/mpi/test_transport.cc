// Transports and control plane under mpirun (1, 2 and 4 ranks): every byte that crosses is
// constructed from (source rank, destination rank, byte index, round), so a misplaced,
// missing or stale byte is caught and located. The same tests run on the nccl transport when
// the build has it and every rank has a GPU (skipped otherwise). A throwing watchdog handler
// checks that an expired wait names the world rank it waits for and leaves the operation
// waitable.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>
#include <mpi.h>

#include "common/error.h"
#include "worker/comm/control.h"
#include "worker/comm/transport.h"
#include "worker/comm/watchdog.h"

namespace moerun::comm {
namespace {

int world_rank() {
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}
int world_size() {
  int n = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &n);
  return n;
}

// The byte at index i of the message src → dst in round `round`; mixes all four so that
// swapped peers, shifted offsets and stale rounds all show.
uint8_t pattern(int src, int dst, int64_t i, int round) {
  uint64_t x = static_cast<uint64_t>(src) * 0x9E3779B97F4A7C15ull ^
               static_cast<uint64_t>(dst) * 0xC2B2AE3D27D4EB4Full ^
               static_cast<uint64_t>(i) * 0x165667B19E3779F9ull ^
               static_cast<uint64_t>(round) * 0x27D4EB2F165667C5ull;
  x ^= x >> 29;
  x *= 0xBF58476D1CE4E5B9ull;
  return static_cast<uint8_t>(x ^ (x >> 32));
}

// Everything a test needs of its parameter: the transport, or a skip reason.
class TransportTest : public testing::TestWithParam<TransportKind> {
 protected:
  void SetUp() override {
    if (GetParam() == TransportKind::kNccl && !nccl_available_in_build()) {
      GTEST_SKIP() << "built without NCCL";
    }
    try {
      t_ = make_transport(GetParam(), MPI_COMM_WORLD);
    } catch (const Error& e) {
      // The nccl transport agrees across ranks on whether every rank has a GPU, so all ranks
      // skip together.
      if (GetParam() == TransportKind::kNccl &&
          std::string(e.what()).find("no usable GPU") != std::string::npos) {
        GTEST_SKIP() << e.what();
      }
      throw;
    }
  }

  // Host bytes → a new buffer in the transport's space.
  std::unique_ptr<Buffer> upload(const std::vector<uint8_t>& host) {
    auto buf = t_->alloc(host.size());
    t_->from_host(buf->data(), host.data(), host.size());
    return buf;
  }
  std::vector<uint8_t> download(const Buffer& buf) {
    std::vector<uint8_t> host(buf.bytes());
    t_->to_host(host.data(), buf.data(), buf.bytes());
    return host;
  }

  // One all-to-all-v round: counts first (as every caller does), then the payloads, laid out
  // with gaps between the peers' regions; checks every received byte and that the gaps and
  // the tail keep their sentinel.
  void run_alltoallv(const std::function<int64_t(int src, int dst)>& bytes_of, int round) {
    const int n = t_->size(), me = t_->rank();
    constexpr int64_t kGap = 13;  // unused bytes between regions (odd, to misalign offsets)
    constexpr uint8_t kSentinel = 0xA5;
    std::vector<int64_t> send_bytes(n), send_off(n), recv_bytes(n), recv_off(n);
    int64_t send_total = 0;
    for (int p = 0; p < n; ++p) {
      send_bytes[p] = bytes_of(me, p);
      send_off[p] = send_total;
      send_total += send_bytes[p] + kGap;
    }
    t_->exchange_counts(send_bytes, recv_bytes);
    int64_t recv_total = 0;
    for (int p = 0; p < n; ++p) {
      ASSERT_EQ(recv_bytes[p], bytes_of(p, me)) << "count from rank " << p;
      recv_off[p] = recv_total;
      recv_total += recv_bytes[p] + kGap;
    }
    std::vector<uint8_t> host_send(static_cast<size_t>(send_total), 0);
    for (int p = 0; p < n; ++p) {
      for (int64_t i = 0; i < send_bytes[p]; ++i) {
        host_send[static_cast<size_t>(send_off[p] + i)] = pattern(me, p, i, round);
      }
    }
    auto send = upload(host_send);
    auto recv = upload(std::vector<uint8_t>(static_cast<size_t>(recv_total), kSentinel));
    t_->alltoallv(send->data(), send_bytes, send_off, recv->data(), recv_bytes, recv_off);
    const std::vector<uint8_t> got = download(*recv);
    int mismatches = 0;
    for (int p = 0; p < n; ++p) {
      for (int64_t i = 0; i < recv_bytes[p] + kGap; ++i) {
        const uint8_t want = i < recv_bytes[p] ? pattern(p, me, i, round) : kSentinel;
        const uint8_t have = got[static_cast<size_t>(recv_off[p] + i)];
        if (have != want && ++mismatches <= 5) {
          ADD_FAILURE() << "round " << round << ": byte " << i << " from rank " << p << " is "
                        << int(have) << ", expected " << int(want)
                        << (i >= recv_bytes[p] ? " (gap sentinel)" : "");
        }
      }
    }
    EXPECT_EQ(mismatches, 0) << "round " << round;
  }

  std::unique_ptr<Transport> t_;
};

TEST_P(TransportTest, Identity) {
  EXPECT_EQ(t_->kind(), GetParam());
  EXPECT_EQ(t_->rank(), world_rank());
  EXPECT_EQ(t_->size(), world_size());
  for (int p = 0; p < t_->size(); ++p) EXPECT_EQ(t_->world_rank(p), p);
  EXPECT_EQ(t_->memory(),
            GetParam() == TransportKind::kMpi ? MemorySpace::kHost : MemorySpace::kDevice);
  auto buf = t_->alloc(100);
  EXPECT_EQ(buf->bytes(), 100u);
  if (t_->memory() == MemorySpace::kHost) {
    EXPECT_EQ(reinterpret_cast<uintptr_t>(buf->data()) % 64, 0u);
  }
  EXPECT_EQ(t_->alloc(0)->bytes(), 0u);
}

TEST_P(TransportTest, ExchangeCountsEncodesSourceAndDestination) {
  const int n = t_->size(), me = t_->rank();
  for (int round = 0; round < 3; ++round) {
    // Large values (beyond 32 bits) so that a truncation would show.
    auto value = [&](int src, int dst) {
      return (int64_t{src + 1} << 40) + int64_t{dst} * 1000 + round;
    };
    std::vector<int64_t> send(n), recv(n, -1);
    for (int p = 0; p < n; ++p) send[p] = value(me, p);
    t_->exchange_counts(send, recv);
    for (int p = 0; p < n; ++p) EXPECT_EQ(recv[p], value(p, me)) << "from rank " << p;
  }
}

TEST_P(TransportTest, AlltoallvUnevenWithZeros) {
  for (int round = 0; round < 4; ++round) {
    // 0 to 4 times 37 bytes: some pairs (self included, in some rounds) send nothing.
    run_alltoallv([&](int src, int dst) { return int64_t{(src * 7 + dst * 3 + round) % 5} * 37; },
                  round);
  }
}

TEST_P(TransportTest, AlltoallvAllZero) {
  run_alltoallv([](int, int) { return int64_t{0}; }, 0);
}

TEST_P(TransportTest, AlltoallvOnlySelf) {
  run_alltoallv([](int src, int dst) { return src == dst ? int64_t{1000 + src} : int64_t{0}; }, 0);
}

TEST_P(TransportTest, AlltoallvLarge) {
  // ~3 MiB per pair: far past every eager limit, so the rendezvous path is taken.
  run_alltoallv([](int src, int dst) { return int64_t{3 << 20} + 17 * src + dst; }, 7);
}

TEST_P(TransportTest, SameTagMessagesArriveInPostedOrder) {
  const int n = t_->size(), me = t_->rank();
  const int next = (me + 1) % n, prev = (me + n - 1) % n;
  constexpr int kTag = 5;
  // Three messages with one tag, sizes chosen so the middle one is tiny (eager) and the last
  // one large (rendezvous): order must hold regardless of protocol.
  const std::vector<size_t> sizes = {1000, 10, 70000};
  std::vector<std::unique_ptr<Buffer>> out, in;
  std::vector<PendingOp> ops;
  for (size_t m = 0; m < sizes.size(); ++m) {
    std::vector<uint8_t> host(sizes[m]);
    for (size_t i = 0; i < host.size(); ++i) host[i] = pattern(me, next, int64_t(i), int(m));
    out.push_back(upload(host));
    in.push_back(t_->alloc(sizes[m]));
  }
  // Receives first on even ranks, sends first on odd ones: both orders must work.
  for (int pass = 0; pass < 2; ++pass) {
    const bool post_recv = (pass == 0) == (me % 2 == 0);
    for (size_t m = 0; m < sizes.size(); ++m) {
      ops.push_back(post_recv ? t_->irecv(prev, in[m]->data(), sizes[m], kTag)
                              : t_->isend(next, out[m]->data(), sizes[m], kTag));
    }
  }
  // Wait in reverse order, one at a time, then everything once more (a no-op).
  for (size_t k = ops.size(); k-- > 0;) t_->wait(std::span<PendingOp>(&ops[k], 1));
  for (const PendingOp& op : ops) EXPECT_EQ(op.slot, -1);
  t_->wait(ops);
  for (size_t m = 0; m < sizes.size(); ++m) {
    const std::vector<uint8_t> got = download(*in[m]);
    size_t bad = 0;
    for (size_t i = 0; i < got.size(); ++i) {
      if (got[i] != pattern(prev, me, int64_t(i), int(m)) && ++bad <= 3) {
        ADD_FAILURE() << "message " << m << " byte " << i << " from rank " << prev;
      }
    }
  }
}

TEST_P(TransportTest, RejectsBadArguments) {
  uint8_t byte = 0;
  auto buf = t_->alloc(1);
  EXPECT_THROW(t_->isend(0, buf->data(), 1, kUserTagLimit), Error);
  EXPECT_THROW(t_->irecv(0, buf->data(), 1, -1), Error);
  EXPECT_THROW(t_->isend(t_->size(), buf->data(), 1, 0), Error);
  EXPECT_THROW(t_->irecv(-1, &byte, 1, 0), Error);
  std::vector<int64_t> too_short(static_cast<size_t>(t_->size()) + 1);
  std::vector<int64_t> recv(static_cast<size_t>(t_->size()));
  EXPECT_THROW(t_->exchange_counts(too_short, recv), Error);
  try {
    t_->isend(0, buf->data(), 1, kUserTagLimit + 3);
    ADD_FAILURE() << "a reserved tag was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find(std::to_string(kUserTagLimit + 3)), std::string::npos)
        << e.what();
  }
}

TEST_P(TransportTest, WaitSecondsAccumulates) {
  const double before = t_->wait_seconds();
  EXPECT_GE(before, 0.0);
  for (int round = 0; round < 3; ++round) {
    run_alltoallv([](int, int) { return int64_t{4096}; }, round);
  }
  const double after = t_->wait_seconds();
  EXPECT_GT(after, before);
  EXPECT_LT(after - before, 60.0);
}

INSTANTIATE_TEST_SUITE_P(Kinds, TransportTest,
                         testing::Values(TransportKind::kMpi, TransportKind::kNccl),
                         [](const testing::TestParamInfo<TransportKind>& param_info) {
                           return param_info.param == TransportKind::kMpi ? std::string("mpi")
                                                                          : std::string("nccl");
                         });

TEST(MpiTransport, ReceiveOfWrongSizeIsAnError) {
  auto t = make_transport(TransportKind::kMpi, MPI_COMM_WORLD);
  std::vector<uint8_t> out(10, 1), in(20, 0);
  PendingOp ops[2] = {t->irecv(t->rank(), in.data(), in.size(), 9),
                      t->isend(t->rank(), out.data(), out.size(), 9)};
  try {
    t->wait(ops);
    ADD_FAILURE() << "a 10-byte message into a 20-byte receive was accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("received 10 bytes"), std::string::npos) << e.what();
  }
  t->wait(ops);  // whatever is left (the send) completes
}

// Restores the watchdog's deadline and handler when a test ends.
class WatchdogGuard {
 public:
  WatchdogGuard() : deadline_(Watchdog::instance().deadline()) {}
  ~WatchdogGuard() {
    Watchdog::instance().set_deadline(deadline_);
    Watchdog::instance().set_handler({});
  }

 private:
  double deadline_;
};

// Group rank 0 waits for a message that group rank 1 sends only after 0's short deadline has
// expired (0 tells it to go): the expiry must name 1's *world* rank (the group is the world
// reversed, so they differ), and the receive must remain waitable and complete afterwards.
// Rank 1 keeps the default long deadline, so nothing here can hang or fire spuriously.
TEST(MpiTransport, ExpiredWaitNamesPendingPeerAndStaysWaitable) {
  if (world_size() < 2) GTEST_SKIP() << "needs 2 ranks";
  MPI_Comm reversed = MPI_COMM_NULL;
  ASSERT_EQ(MPI_Comm_split(MPI_COMM_WORLD, 0, world_size() - 1 - world_rank(), &reversed),
            MPI_SUCCESS);
  {
    auto t = make_transport(TransportKind::kMpi, reversed);
    ASSERT_EQ(t->world_rank(t->rank()), world_rank());
    constexpr int kValueTag = 3, kGoTag = 4;
    WatchdogGuard guard;
    Watchdog& wd = Watchdog::instance();
    if (t->rank() == 0) {
      wd.set_deadline(0.3);
      wd.set_handler([](const std::string& report) { throw Error(report); });
      int64_t value = -1, self_in = -1;
      const int64_t self_out = 11;
      PendingOp ops[3] = {t->irecv(1, &value, sizeof(value), kValueTag),
                          t->irecv(0, &self_in, sizeof(self_in), kValueTag),
                          t->isend(0, &self_out, sizeof(self_out), kValueTag)};
      std::string report;
      {
        Watchdog::Scope scope("test recv", 5);
        try {
          t->wait(ops);
        } catch (const Error& e) {
          report = e.what();
        }
        EXPECT_EQ(wd.site().phase, "test recv");
        EXPECT_EQ(wd.site().layer, 5);
      }
      EXPECT_EQ(wd.site().phase, "idle");
      // Only the peer that never sent is named: the completed self messages are not.
      EXPECT_NE(report.find(fmt::format("still waiting for ranks [{}]", t->world_rank(1))),
                std::string::npos)
          << report;
      EXPECT_NE(report.find(fmt::format("moerun watchdog: rank {} ", world_rank())),
                std::string::npos)
          << report;
      EXPECT_NE(report.find("layer 5 phase test recv"), std::string::npos) << report;
      EXPECT_GE(ops[0].slot, 0) << "the expired receive must still be pending";
      EXPECT_EQ(ops[1].slot, -1);
      EXPECT_EQ(self_in, 11);
      wd.set_deadline(60);
      int64_t go = 1;
      PendingOp send_go = t->isend(1, &go, sizeof(go), kGoTag);
      t->wait(std::span<PendingOp>(&send_go, 1));
      t->wait(ops);
      EXPECT_EQ(value, 42);
    } else if (t->rank() == 1) {
      int64_t go = 0;
      PendingOp recv_go = t->irecv(0, &go, sizeof(go), kGoTag);
      t->wait(std::span<PendingOp>(&recv_go, 1));
      EXPECT_EQ(go, 1);
      const int64_t value = 42;
      PendingOp send_value = t->isend(0, &value, sizeof(value), kValueTag);
      t->wait(std::span<PendingOp>(&send_value, 1));
    }
    barrier(reversed, "test end");
  }
  MPI_Comm_free(&reversed);
}

// Control plane: broadcasts from every root with sizes including 0, gathers with uneven
// sizes, all interleaved with a transport message on the same communicator (tags must keep
// them apart).
TEST(Control, BroadcastGatherBarrier) {
  const int n = world_size(), me = world_rank();
  auto t = make_transport(TransportKind::kMpi, MPI_COMM_WORLD);
  const int next = (me + 1) % n, prev = (me + n - 1) % n;
  int64_t p2p_in = -1;
  const int64_t p2p_out = 1000 + me;
  PendingOp ops[2] = {t->irecv(prev, &p2p_in, sizeof(p2p_in), 0),
                      t->isend(next, &p2p_out, sizeof(p2p_out), 0)};
  for (int root = 0; root < n; ++root) {
    for (size_t size : {size_t{0}, size_t{1}, size_t{5000}, size_t{200000}}) {
      std::vector<uint8_t> bytes;
      if (me == root) {
        bytes.resize(size);
        for (size_t i = 0; i < size; ++i) bytes[i] = pattern(root, -1, int64_t(i), int(size));
      } else {
        bytes.assign(17, 0xEE);  // replaced
      }
      broadcast_bytes(MPI_COMM_WORLD, root, bytes, "test plan");
      ASSERT_EQ(bytes.size(), size) << "root " << root;
      for (size_t i = 0; i < size; ++i) {
        ASSERT_EQ(bytes[i], pattern(root, -1, int64_t(i), int(size))) << "byte " << i;
      }
    }
    std::vector<uint8_t> mine(static_cast<size_t>(me % 3) * 1000);
    for (size_t i = 0; i < mine.size(); ++i) mine[i] = pattern(me, root, int64_t(i), 1);
    const auto all = gather_bytes(MPI_COMM_WORLD, root, mine, "test results");
    if (me != root) {
      EXPECT_TRUE(all.empty());
      continue;
    }
    ASSERT_EQ(all.size(), static_cast<size_t>(n));
    for (int p = 0; p < n; ++p) {
      ASSERT_EQ(all[p].size(), static_cast<size_t>(p % 3) * 1000) << "from rank " << p;
      for (size_t i = 0; i < all[p].size(); ++i) {
        ASSERT_EQ(all[p][i], pattern(p, root, int64_t(i), 1)) << "rank " << p << " byte " << i;
      }
    }
  }
  barrier(MPI_COMM_WORLD, "test");
  t->wait(ops);
  EXPECT_EQ(p2p_in, 1000 + prev);
  std::vector<uint8_t> unused;
  EXPECT_THROW(broadcast_bytes(MPI_COMM_WORLD, n, unused, "bad root"), Error);
}

}  // namespace
}  // namespace moerun::comm
