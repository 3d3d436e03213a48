# Expert-parallel dispatch / combine (worker/comm/dispatch.cc) over the mpi transport, with 1 to 4
# ranks (3 ranks use expert counts divisible by 3; see the cases in test_dispatch.cc).
moerun_add_mpi_gtest_executable(test_dispatch test_dispatch.cc)
foreach(np 1 2 3 4)
  moerun_add_mpi_test(NAME mpi_dispatch_np${np} NP ${np} COMMAND $<TARGET_FILE:test_dispatch>)
endforeach()
