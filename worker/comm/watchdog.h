// Deadlines for every blocking wait (architecture §3). A wait polls its operation; when the
// deadline passes, the Watchdog prints one line naming this rank, the step, layer and phase
// it was in, what it waited for and the peers (world ranks) it still waits for, then ends the
// job: MPI_Abort(MPI_COMM_WORLD) by default, so mpirun tears down every rank within seconds
// instead of hanging. Tests may install a throwing handler instead.
//
// Fault injection for tests: MOERUN_FAULT="rank=R,layer=L,action=stall|exit[,step=S]" (or
// the workers' --fault flag) makes world rank R stall forever or exit(3) when it starts
// layer L (of step S, default any step).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace moerun::comm {

// Where this rank is in the step; set by the engine, read when a deadline expires.
struct WaitSite {
  int64_t step = -1;
  int64_t layer = -1;
  std::string_view phase = "idle";  // e.g. "plan", "dispatch", "combine", "pipeline recv"
};

class Watchdog {
 public:
  // Called with the report line when a deadline expires; must not return normally to keep
  // waiting (the default aborts the MPI job; tests may throw).
  using ExpiryHandler = std::function<void(const std::string& report)>;

  static Watchdog& instance();

  void set_deadline(double seconds);  // > 0; default 120 s or MOERUN_DEADLINE_S
  double deadline() const { return deadline_s_; }
  void set_handler(ExpiryHandler h);  // empty: the default (print + MPI_Abort)
  void set_world_rank(int rank) { world_rank_ = rank; }

  WaitSite& site() { return site_; }
  // RAII: sets the site's phase (and layer when ≥ 0) for a scope.
  class Scope {
   public:
    Scope(std::string_view phase, int64_t layer = -1);
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    WaitSite saved_;
  };

  // Polls `done` until it returns true. Yields the CPU between polls (sched_yield, then short
  // sleeps once the wait grows past ~1 ms, so oversubscribed ranks make progress). Past the
  // deadline calls the handler with a report built from `what` and `pending_peers()` (world
  // ranks still outstanding).
  void wait(const std::function<bool()>& done, std::string_view what,
            const std::function<std::vector<int>()>& pending_peers);

 private:
  Watchdog();
  double deadline_s_ = 120.0;
  int world_rank_ = -1;
  WaitSite site_;
  ExpiryHandler handler_;
};

// Fault injection (see above).
struct FaultSpec {
  int rank = -1;
  int64_t layer = -1;
  int64_t step = -1;  // -1: any step
  enum class Action { kStall, kExit } action = Action::kStall;
};
// "rank=R,layer=L,action=stall|exit[,step=S]" → spec; throws moerun::Error naming the bad part.
FaultSpec parse_fault_spec(std::string_view spec);
// The spec from MOERUN_FAULT, if set (parse errors throw).
std::optional<FaultSpec> fault_from_env();
// Acts on `spec` if it matches (rank, step, layer): prints "fault injection: rank R ... at step
// S layer L" to stderr and stalls forever or _exit(3)s.
void fault_point(const std::optional<FaultSpec>& spec, int rank, int64_t step, int64_t layer);

}  // namespace moerun::comm
