// The Watchdog (watchdog.h): polls a wait's completion, yielding the CPU so that
// oversubscribed ranks (8 ranks on 2 cores) keep progressing, and past the deadline reports
// where this rank is and whom it waits for, then ends the job (or throws, for tests). Also
// the fault injection used by the watchdog's end-to-end tests.
#include "worker/comm/watchdog.h"

#include <sched.h>

#include <algorithm>
#include <charconv>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <thread>

#include <fmt/ranges.h>
#include <mpi.h>

#include "common/error.h"

namespace moerun::comm {
namespace {

constexpr double kDefaultDeadlineS = 120.0;
constexpr const char* kDeadlineEnv = "MOERUN_DEADLINE_S";
constexpr const char* kFaultEnv = "MOERUN_FAULT";
// Exit status of a job the watchdog ends (MPI_Abort's error code, or _Exit without MPI).
constexpr int kWatchdogExitCode = 70;
// Exit status of a rank told to exit by fault injection.
constexpr int kFaultExitCode = 3;
// Polling: sched_yield for the first kSpinS seconds of a wait, then sleeps growing from
// kMinSleep to kMaxSleep (short enough that a completed wait is noticed within ~0.2 ms).
constexpr double kSpinS = 1e-3;
constexpr std::chrono::microseconds kMinSleep{5};
constexpr std::chrono::microseconds kMaxSleep{200};

constexpr std::string_view kFaultForm = "rank=R,layer=L,action=stall|exit[,step=S]";

bool mpi_usable() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

// "120", "0.5", "2e1": a positive finite number, or an Error naming the variable.
double parse_deadline(const char* text) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  MOERUN_CHECK(end != text && *end == '\0' && std::isfinite(v) && v > 0,
               "{}='{}' is not a positive number of seconds", kDeadlineEnv, text);
  return v;
}

[[noreturn]] void default_expiry(const std::string& report) {
  std::fprintf(stderr, "%s\n", report.c_str());
  std::fflush(stderr);
  if (mpi_usable()) MPI_Abort(MPI_COMM_WORLD, kWatchdogExitCode);
  std::_Exit(kWatchdogExitCode);
}

// A non-negative integer value of the fault spec's `key`.
int64_t parse_fault_int(std::string_view spec, std::string_view key, std::string_view value) {
  int64_t v = -1;
  const auto [ptr, ec] = std::from_chars(value.data(), value.data() + value.size(), v);
  MOERUN_CHECK(ec == std::errc() && ptr == value.data() + value.size() && v >= 0,
               "fault spec '{}': {} must be a non-negative integer, got '{}' (form: {})", spec, key,
               value, kFaultForm);
  return v;
}

}  // namespace

Watchdog& Watchdog::instance() {
  static Watchdog watchdog;
  return watchdog;
}

Watchdog::Watchdog() {
  if (const char* env = std::getenv(kDeadlineEnv)) {
    deadline_s_ = parse_deadline(env);
  } else {
    deadline_s_ = kDefaultDeadlineS;
  }
}

void Watchdog::set_deadline(double seconds) {
  MOERUN_CHECK(std::isfinite(seconds) && seconds > 0,
               "watchdog deadline must be a positive number of seconds, got {}", seconds);
  deadline_s_ = seconds;
}

void Watchdog::set_handler(ExpiryHandler h) {
  handler_ = std::move(h);
}

Watchdog::Scope::Scope(std::string_view phase, int64_t layer) : saved_(instance().site()) {
  WaitSite& site = instance().site();
  site.phase = phase;
  if (layer >= 0) site.layer = layer;
}

Watchdog::Scope::~Scope() {
  instance().site() = saved_;
}

void Watchdog::wait(const std::function<bool()>& done, std::string_view what,
                    const std::function<std::vector<int>()>& pending_peers) {
  if (done()) return;
  const auto start = std::chrono::steady_clock::now();
  auto sleep = kMinSleep;
  for (;;) {
    if (done()) return;
    const double waited =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (waited > deadline_s_) {
      std::vector<int> peers = pending_peers();
      std::sort(peers.begin(), peers.end());
      peers.erase(std::unique(peers.begin(), peers.end()), peers.end());
      int rank = world_rank_;
      if (rank < 0 && mpi_usable()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
      if (rank < 0) rank = process_rank();
      const std::string report = fmt::format(
          "moerun watchdog: rank {} (host {}) waited {:.2f} s (deadline {:.2f} s) for {} at "
          "step {} layer {} phase {}; still waiting for ranks [{}]",
          rank, process_host(), waited, deadline_s_, what, site_.step, site_.layer, site_.phase,
          fmt::join(peers, ", "));
      if (handler_) {
        handler_(report);
      } else {
        default_expiry(report);
      }
      // A handler that returns would leave the rank waiting silently: never keep waiting.
      MOERUN_THROW("{}", report);
    }
    if (waited < kSpinS) {
      sched_yield();
    } else {
      std::this_thread::sleep_for(sleep);
      sleep = std::min(sleep * 2, kMaxSleep);
    }
  }
}

FaultSpec parse_fault_spec(std::string_view spec) {
  FaultSpec out;
  bool have_rank = false, have_layer = false, have_action = false, have_step = false;
  size_t pos = 0;
  while (pos <= spec.size()) {
    const size_t comma = std::min(spec.find(',', pos), spec.size());
    const std::string_view part = spec.substr(pos, comma - pos);
    pos = comma + 1;
    const size_t eq = part.find('=');
    MOERUN_CHECK(eq != std::string_view::npos && eq > 0,
                 "fault spec '{}': part '{}' is not key=value (form: {})", spec, part, kFaultForm);
    const std::string_view key = part.substr(0, eq);
    const std::string_view value = part.substr(eq + 1);
    bool* seen = nullptr;
    if (key == "rank") {
      seen = &have_rank;
      const int64_t rank = parse_fault_int(spec, key, value);
      MOERUN_CHECK(rank <= INT_MAX, "fault spec '{}': rank {} is too large", spec, rank);
      out.rank = static_cast<int>(rank);
    } else if (key == "layer") {
      seen = &have_layer;
      out.layer = parse_fault_int(spec, key, value);
    } else if (key == "step") {
      seen = &have_step;
      out.step = parse_fault_int(spec, key, value);
    } else if (key == "action") {
      seen = &have_action;
      if (value == "stall") {
        out.action = FaultSpec::Action::kStall;
      } else if (value == "exit") {
        out.action = FaultSpec::Action::kExit;
      } else {
        MOERUN_THROW("fault spec '{}': action must be stall or exit, got '{}'", spec, value);
      }
    } else {
      MOERUN_THROW("fault spec '{}': unknown key '{}' (allowed: rank, layer, action, step)", spec,
                   key);
    }
    MOERUN_CHECK(!*seen, "fault spec '{}': key '{}' given twice", spec, key);
    *seen = true;
  }
  MOERUN_CHECK(have_rank, "fault spec '{}': missing rank (form: {})", spec, kFaultForm);
  MOERUN_CHECK(have_layer, "fault spec '{}': missing layer (form: {})", spec, kFaultForm);
  MOERUN_CHECK(have_action, "fault spec '{}': missing action (form: {})", spec, kFaultForm);
  return out;
}

std::optional<FaultSpec> fault_from_env() {
  const char* env = std::getenv(kFaultEnv);
  if (env == nullptr || *env == '\0') return std::nullopt;
  return parse_fault_spec(env);
}

void fault_point(const std::optional<FaultSpec>& spec, int rank, int64_t step, int64_t layer) {
  if (!spec || spec->rank != rank || spec->layer != layer) return;
  if (spec->step >= 0 && spec->step != step) return;
  const bool stall = spec->action == FaultSpec::Action::kStall;
  std::fprintf(stderr, "moerun fault injection: rank %d %s at step %lld layer %lld\n", rank,
               stall ? "stalls" : "exits", static_cast<long long>(step),
               static_cast<long long>(layer));
  std::fflush(stderr);
  if (!stall) std::_Exit(kFaultExitCode);
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}

}  // namespace moerun::comm
