# Transports, control plane and watchdog (worker/comm). Included by tests/mpi/CMakeLists.txt.
moerun_add_mpi_gtest_executable(test_transport test_transport.cc)
foreach(np 1 2 4)
  moerun_add_mpi_test(NAME mpi_transport_np${np} NP ${np} TIMEOUT 120
                      COMMAND $<TARGET_FILE:test_transport>)
endforeach()

# A miniature worker loop (plan broadcast, per-layer counts + alltoallv, results gather) that
# MOERUN_FAULT can make one rank stall or exit in.
add_executable(comm_fault_probe comm_fault_probe.cc)
target_link_libraries(comm_fault_probe PRIVATE moerun_comm moerun_common MPI::MPI_C
                                               moerun_warnings)
moerun_add_mpi_test(NAME mpi_comm_probe_np3 NP 3 TIMEOUT 60 COMMAND $<TARGET_FILE:comm_fault_probe>)

# A job that must fail: passes when its output matches EXPECT and mpirun exited non-zero (the
# wrapper prints mpirun's status after its output; with PASS_REGULAR_EXPRESSION set, ctest
# itself ignores the exit status). TIMEOUT bounds how long the failing job may take to end.
function(moerun_add_mpi_failure_test)
  cmake_parse_arguments(T "" "NAME;NP;EXPECT;TIMEOUT" "COMMAND;ENV" ${ARGN})
  add_test(NAME ${T_NAME}
           COMMAND sh -c "\"$0\" \"$@\"; echo \"mpirun exit status $?\""
                   ${MOERUN_MPIRUN} -np ${T_NP} ${MOERUN_MPIRUN_FLAGS} ${T_COMMAND})
  set_tests_properties(${T_NAME} PROPERTIES LABELS "mpi;watchdog" TIMEOUT ${T_TIMEOUT}
                       ENVIRONMENT "${MOERUN_MPI_ENV};${T_ENV}"
                       PASS_REGULAR_EXPRESSION "${T_EXPECT}.*mpirun exit status [1-9]")
endfunction()

# Rank 1 never joins layer 1's exchange: the others' 2 s deadline expires, they name rank 1
# and abort the whole job (the stalled rank included) well inside the timeout.
moerun_add_mpi_failure_test(NAME mpi_watchdog_stall_np3 NP 3 TIMEOUT 20
  ENV MOERUN_FAULT=rank=1,layer=1,action=stall MOERUN_DEADLINE_S=2
  EXPECT "moerun watchdog: rank [02] \\(host [^)]*\\) waited [0-9.]+ s \\(deadline 2.00 s\\) for exchange_counts at step 0 layer 1 phase dispatch; still waiting for ranks \\[1\\]"
  COMMAND $<TARGET_FILE:comm_fault_probe>)
# Rank 1 exits: mpirun ends the job by itself, long before the (60 s) deadline.
moerun_add_mpi_failure_test(NAME mpi_watchdog_exit_np3 NP 3 TIMEOUT 20
  ENV MOERUN_FAULT=action=exit,layer=1,rank=1 MOERUN_DEADLINE_S=60
  EXPECT "moerun fault injection: rank 1 exits at step 0 layer 1"
  COMMAND $<TARGET_FILE:comm_fault_probe>)
# Rank 1 stalls before the results gather: the root names it.
moerun_add_mpi_failure_test(NAME mpi_watchdog_gather_np2 NP 2 TIMEOUT 20
  ENV MOERUN_FAULT=rank=1,layer=4,action=stall MOERUN_DEADLINE_S=2
  EXPECT "rank 0 .* for gather of results to rank 0 at step 0 layer -1 phase results; still waiting for ranks \\[1\\]"
  COMMAND $<TARGET_FILE:comm_fault_probe> --layers 4)
# The root stalls before step 1's gather: rank 1 waits for step 2's plan and names rank 0.
moerun_add_mpi_failure_test(NAME mpi_watchdog_broadcast_np2 NP 2 TIMEOUT 20
  ENV MOERUN_FAULT=rank=0,layer=4,action=stall,step=1 MOERUN_DEADLINE_S=2
  EXPECT "rank 1 .* for broadcast of plan from rank 0 at step 2 layer -1 phase plan; still waiting for ranks \\[0\\]"
  COMMAND $<TARGET_FILE:comm_fault_probe> --layers 4 --steps 3)
# A malformed deadline is an error naming the variable, not a silent default.
moerun_add_mpi_failure_test(NAME mpi_watchdog_bad_deadline_np1 NP 1 TIMEOUT 20
  ENV MOERUN_DEADLINE_S=2s
  EXPECT "MOERUN_DEADLINE_S='2s' is not a positive number of seconds"
  COMMAND $<TARGET_FILE:comm_fault_probe>)
