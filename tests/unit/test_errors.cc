// Check macros and the logger: messages name file, line, rank, host and the library's own
// error string; arguments are evaluated once.
#include <fcntl.h>
#include <unistd.h>

#include <mpi.h>
#include <cstdlib>

#include <functional>

#include <gtest/gtest.h>

#include "common/check_grpc.h"
#include "common/check_mpi.h"
#include "common/error.h"
#include "common/log.h"
#include "tests/unit/test_util.h"

namespace {

using moerun::testing_util::error_message;

bool has(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

TEST(Errors, CheckNamesFileLineHostAndRank) {
  moerun::set_process_rank(-1);
  const int line = __LINE__ + 1;
  const std::string m = error_message([] { MOERUN_CHECK(1 + 1 == 3, "arithmetic is {}", "off"); });
  EXPECT_TRUE(has(m, "test_errors.cc:" + std::to_string(line))) << m;
  EXPECT_TRUE(has(m, moerun::process_host())) << m;
  EXPECT_TRUE(has(m, "arithmetic is off")) << m;
  EXPECT_FALSE(has(m, "rank")) << m;  // rank unknown yet
  moerun::set_process_rank(3);
  const std::string r = error_message([] { MOERUN_THROW("boom"); });
  EXPECT_TRUE(has(r, "[rank 3 on " + moerun::process_host() + "]")) << r;
  moerun::set_process_rank(-1);
}

TEST(Errors, PassingChecksDoNothing) {
  EXPECT_NO_THROW(MOERUN_CHECK(true, "never"));
  int calls = 0;
  const int fd = MOERUN_CHECK_SYS((++calls, open("/dev/null", O_RDONLY)));
  EXPECT_EQ(calls, 1);  // evaluated once
  EXPECT_GE(fd, 0);
  close(fd);
}

TEST(Errors, SysCheckCarriesErrno) {
  int calls = 0;
  const std::string m =
      error_message([&] { MOERUN_CHECK_SYS((++calls, open("/nonexistent/moerun", O_RDONLY))); });
  EXPECT_EQ(calls, 1);
  EXPECT_TRUE(has(m, "system error 2")) << m;
  EXPECT_TRUE(has(m, "No such file or directory")) << m;
  EXPECT_TRUE(has(m, "open(\"/nonexistent/moerun\"")) << m;
}

TEST(Errors, MpiCheckCarriesMpiErrorString) {
  // Open MPI 4.1 refuses MPI_Error_string before MPI_Init: initialise as a singleton.
  setenv("OMPI_ALLOW_RUN_AS_ROOT", "1", 0);
  setenv("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1", 0);
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (!initialized) MPI_Init(nullptr, nullptr);
  char expected[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(MPI_ERR_COUNT, expected, &len);
  const std::string m = error_message([] { MOERUN_CHECK_MPI(MPI_ERR_COUNT); });
  EXPECT_TRUE(has(m, "MPI error " + std::to_string(MPI_ERR_COUNT))) << m;
  EXPECT_TRUE(has(m, std::string(expected, static_cast<size_t>(len)))) << m;
  EXPECT_TRUE(has(m, "MPI_ERR_COUNT")) << m;  // the expression text
  MPI_Finalize();
}

TEST(Errors, GrpcCheckCarriesStatus) {
  const std::string m = error_message([] {
    MOERUN_CHECK_GRPC(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "field 'x' is bad"));
  });
  EXPECT_TRUE(has(m, "gRPC error 3")) << m;
  EXPECT_TRUE(has(m, "field 'x' is bad")) << m;
  EXPECT_NO_THROW(MOERUN_CHECK_GRPC(grpc::Status::OK));
}

TEST(Log, ParsesLevelsAndRejectsUnknown) {
  EXPECT_EQ(moerun::log::parse_level("debug"), moerun::log::Level::kDebug);
  EXPECT_EQ(moerun::log::parse_level("off"), moerun::log::Level::kOff);
  const std::string m = error_message([] { moerun::log::parse_level("loud"); });
  EXPECT_TRUE(has(m, "'loud'")) << m;
  EXPECT_TRUE(has(m, "trace, debug, info, warn, error, off")) << m;
}

TEST(Log, LinesCarryTimestampRankAndLevel) {
  moerun::set_process_rank(5);
  testing::internal::CaptureStderr();
  moerun::log::init(moerun::log::Level::kInfo);
  spdlog::info("hello {}", 42);
  spdlog::debug("hidden");
  spdlog::default_logger()->flush();
  const std::string out = testing::internal::GetCapturedStderr();
  moerun::set_process_rank(-1);
  EXPECT_TRUE(has(out, "[rank 5@" + moerun::process_host() + "] [info] hello 42")) << out;
  EXPECT_FALSE(has(out, "hidden")) << out;
  EXPECT_EQ(out[0], '[');
  EXPECT_EQ(out[5], '-');  // "[2026-..."
}

}  // namespace
