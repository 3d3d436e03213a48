// The comm layer's single-process parts: transport names, fault specs (MOERUN_FAULT), the
// watchdog's report, its handlers and its scopes, and fault_point's exit. The multi-rank
// behaviour (what a real expiry names, the job ending) is in tests/mpi/transport.cmake.
#include <cmath>
#include <cstdlib>
#include <optional>
#include <regex>
#include <string>
#include <vector>

#include <fmt/format.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "worker/comm/transport.h"
#include "worker/comm/watchdog.h"

namespace moerun::comm {
namespace {

// The message of the Error `fn` throws ("" and a test failure if it does not).
template <typename Fn>
std::string error_of(Fn&& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  ADD_FAILURE() << "no moerun::Error thrown";
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(TransportKindParse, KnownNames) {
  EXPECT_EQ(parse_transport_kind("mpi"), TransportKind::kMpi);
  EXPECT_EQ(parse_transport_kind("nccl"), TransportKind::kNccl);
}

TEST(TransportKindParse, UnknownNamesListTheAllowedOnes) {
  for (const char* bad : {"", "MPI", "ucx", "nccl ", "mpi,nccl"}) {
    const std::string msg = error_of([&] { parse_transport_kind(bad); });
    EXPECT_TRUE(contains(msg, fmt::format("'{}'", bad))) << msg;
    EXPECT_TRUE(contains(msg, "allowed: mpi, nccl")) << msg;
  }
}

TEST(TransportKindParse, NcclAvailabilityMatchesTheBuild) {
#ifdef MOERUN_HAVE_NCCL
  EXPECT_TRUE(nccl_available_in_build());
#else
  EXPECT_FALSE(nccl_available_in_build());
#endif
}

TEST(FaultSpecParse, AnyKeyOrder) {
  const FaultSpec a = parse_fault_spec("rank=3,layer=7,action=stall");
  EXPECT_EQ(a.rank, 3);
  EXPECT_EQ(a.layer, 7);
  EXPECT_EQ(a.step, -1);
  EXPECT_EQ(a.action, FaultSpec::Action::kStall);
  const FaultSpec b = parse_fault_spec("action=exit,step=12,layer=0,rank=0");
  EXPECT_EQ(b.rank, 0);
  EXPECT_EQ(b.layer, 0);
  EXPECT_EQ(b.step, 12);
  EXPECT_EQ(b.action, FaultSpec::Action::kExit);
}

TEST(FaultSpecParse, ErrorsNameTheBadPart) {
  struct Case {
    const char* spec;
    std::vector<std::string> expected;  // substrings of the message
  };
  const Case cases[] = {
      {"rank=1,layer=2,action=crash", {"action must be stall or exit", "'crash'"}},
      {"rank=1,layer=2,action=stall,node=3",
       {"unknown key 'node'", "allowed: rank, layer, action, step"}},
      {"rank=1,action=stall", {"missing layer", "rank=R,layer=L,action=stall|exit[,step=S]"}},
      {"layer=1,action=stall", {"missing rank"}},
      {"rank=1,layer=1", {"missing action"}},
      {"rank=x,layer=1,action=exit", {"rank must be a non-negative integer", "'x'"}},
      {"rank=1,layer=-2,action=exit", {"layer must be a non-negative integer", "'-2'"}},
      {"rank=1,layer=2,action=exit,step=1e3", {"step must be a non-negative integer", "'1e3'"}},
      {"rank=1,rank=2,layer=1,action=exit", {"key 'rank' given twice"}},
      {"rank=1,,layer=1,action=exit", {"part '' is not key=value"}},
      {"rank=1,layer=1,action=exit,", {"part '' is not key=value"}},
      {"rank 1,layer=1,action=exit", {"part 'rank 1' is not key=value"}},
      {"", {"is not key=value"}},
  };
  for (const Case& c : cases) {
    const std::string msg = error_of([&] { parse_fault_spec(c.spec); });
    EXPECT_TRUE(contains(msg, fmt::format("fault spec '{}'", c.spec))) << msg;
    for (const std::string& part : c.expected) {
      EXPECT_TRUE(contains(msg, part)) << "spec '" << c.spec << "': " << msg;
    }
  }
}

TEST(FaultSpecParse, FromEnvironment) {
  unsetenv("MOERUN_FAULT");
  EXPECT_FALSE(fault_from_env().has_value());
  setenv("MOERUN_FAULT", "", 1);
  EXPECT_FALSE(fault_from_env().has_value());
  setenv("MOERUN_FAULT", "rank=2,layer=5,action=exit,step=1", 1);
  const auto spec = fault_from_env();
  ASSERT_TRUE(spec.has_value());
  EXPECT_EQ(spec->rank, 2);
  EXPECT_EQ(spec->layer, 5);
  EXPECT_EQ(spec->step, 1);
  setenv("MOERUN_FAULT", "rank=2", 1);
  EXPECT_THROW(fault_from_env(), Error);
  unsetenv("MOERUN_FAULT");
}

TEST(FaultPoint, ActsOnlyWhereItMatches) {
  const auto spec = std::optional<FaultSpec>(parse_fault_spec("rank=2,layer=7,action=exit,step=4"));
  fault_point(std::nullopt, 2, 4, 7);
  fault_point(spec, 1, 4, 7);  // other rank
  fault_point(spec, 2, 3, 7);  // other step
  fault_point(spec, 2, 4, 6);  // other layer
  EXPECT_EXIT(fault_point(spec, 2, 4, 7), testing::ExitedWithCode(3),
              "moerun fault injection: rank 2 exits at step 4 layer 7");
  const auto any_step = std::optional<FaultSpec>(parse_fault_spec("rank=0,layer=1,action=exit"));
  EXPECT_EXIT(fault_point(any_step, 0, 99, 1), testing::ExitedWithCode(3),
              "rank 0 exits at step 99 layer 1");
}

// Restores the watchdog's settings after each test.
class WatchdogTest : public testing::Test {
 protected:
  void SetUp() override { deadline_ = Watchdog::instance().deadline(); }
  void TearDown() override {
    Watchdog::instance().set_deadline(deadline_);
    Watchdog::instance().set_handler({});
    Watchdog::instance().set_world_rank(-1);
    Watchdog::instance().site() = WaitSite{};
  }
  double deadline_ = 0;
};

TEST_F(WatchdogTest, DefaultDeadlineWithoutEnvironment) {
  if (std::getenv("MOERUN_DEADLINE_S") != nullptr) GTEST_SKIP() << "MOERUN_DEADLINE_S is set";
  EXPECT_EQ(deadline_, 120.0);
}

TEST_F(WatchdogTest, RejectsNonPositiveDeadlines) {
  EXPECT_THROW(Watchdog::instance().set_deadline(0), Error);
  EXPECT_THROW(Watchdog::instance().set_deadline(-1), Error);
  EXPECT_THROW(Watchdog::instance().set_deadline(std::nan("")), Error);
  EXPECT_EQ(Watchdog::instance().deadline(), deadline_);
}

TEST_F(WatchdogTest, ReturnsWhenDone) {
  Watchdog::instance().set_deadline(5);
  int polls = 0;
  Watchdog::instance().wait([&] { return ++polls >= 2000; }, "test",
                            [] {
                              ADD_FAILURE() << "asked for pending peers without an expiry";
                              return std::vector<int>{};
                            });
  EXPECT_EQ(polls, 2000);
}

TEST_F(WatchdogTest, ExpiryReportNamesEverything) {
  Watchdog& wd = Watchdog::instance();
  wd.set_deadline(0.05);
  wd.set_world_rank(6);
  wd.set_handler([](const std::string& report) { throw Error("handler: " + report); });
  wd.site().step = 41;
  std::string msg;
  {
    Watchdog::Scope scope("combine", 17);
    msg = error_of([&] {
      wd.wait([] { return false; }, "alltoallv", [] { return std::vector<int>{5, 2, 5}; });
    });
  }
  EXPECT_TRUE(std::regex_search(
      msg, std::regex(R"(^handler: moerun watchdog: rank 6 \(host [^)]+\) waited 0\.[0-9]{2} s )"
                      R"(\(deadline 0\.05 s\) for alltoallv at step 41 layer 17 phase combine; )"
                      R"(still waiting for ranks \[2, 5\]$)")))
      << msg;
  // The scope restored the site.
  EXPECT_EQ(wd.site().phase, "idle");
  EXPECT_EQ(wd.site().layer, -1);
  EXPECT_EQ(wd.site().step, 41);
}

TEST_F(WatchdogTest, HandlerThatReturnsStillEndsTheWait) {
  Watchdog& wd = Watchdog::instance();
  wd.set_deadline(0.02);
  int calls = 0;
  wd.set_handler([&](const std::string&) { ++calls; });
  const std::string msg =
      error_of([&] { wd.wait([] { return false; }, "plan", [] { return std::vector<int>{}; }); });
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(contains(msg, "for plan at step -1 layer -1 phase idle; still waiting for ranks []"))
      << msg;
}

TEST_F(WatchdogTest, ScopesNestAndKeepLayerWhenNotGiven) {
  Watchdog& wd = Watchdog::instance();
  {
    Watchdog::Scope outer("dispatch", 3);
    {
      Watchdog::Scope inner("pipeline recv");
      EXPECT_EQ(wd.site().phase, "pipeline recv");
      EXPECT_EQ(wd.site().layer, 3);
    }
    EXPECT_EQ(wd.site().phase, "dispatch");
    EXPECT_EQ(wd.site().layer, 3);
  }
  EXPECT_EQ(wd.site().phase, "idle");
  EXPECT_EQ(wd.site().layer, -1);
}

// Without MPI the default handler prints the report and exits with status 70.
TEST_F(WatchdogTest, DefaultHandlerEndsTheProcess) {
  EXPECT_EXIT(
      {
        Watchdog::instance().set_deadline(0.02);
        Watchdog::instance().wait([] { return false; }, "gather", [] { return std::vector{1}; });
      },
      testing::ExitedWithCode(70),
      "moerun watchdog: .* for gather .*still waiting for ranks \\[1\\]");
}

}  // namespace
}  // namespace moerun::comm
