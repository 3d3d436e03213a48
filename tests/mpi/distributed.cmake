# The distributed engine (worker/engine/distributed.h) under mpirun: every layout must give
# the single-process engine's bits. Included by tests/mpi/CMakeLists.txt.
set(tiny ${MOERUN_GOLDEN_DIR}/dsv4-tiny)
set(same_output ${CMAKE_CURRENT_SOURCE_DIR}/same_output.sh)
set(expect_failure ${CMAKE_CURRENT_SOURCE_DIR}/expect_failure.sh)
set(mixed_prompts ${CMAKE_CURRENT_SOURCE_DIR}/data/mixed_prompts.txt)
set(out ${CMAKE_CURRENT_BINARY_DIR})
set(mpirun ${MOERUN_MPIRUN} ${MOERUN_MPIRUN_FLAGS})
set(replay $<TARGET_FILE:moerun-replay>)
set(worker $<TARGET_FILE:moerun-worker>)
# A mixed batch: 10 prompts of 1..100 tokens, 4 slots per column (so sequences join as others
# finish and steps mix prompt chunks with decode tokens), 16-token prefill chunks, MTP on.
set(worker_args --prompts ${mixed_prompts} --max-new-tokens 6
                --max-sequences 4 --prefill-chunk 16 --mtp --threads 1)

function(moerun_add_cluster_test name)
  add_test(NAME ${name} COMMAND ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "mpi;distributed" TIMEOUT 300
                       ENVIRONMENT "${MOERUN_MPI_ENV}")
endfunction()

# A top-6 tiny checkpoint (the golden tiny model is top-4), written once for the tests below.
set(top6 ${out}/tiny-top6)
add_test(NAME mpi_fixture_tiny_top6
         COMMAND sh -c "rm -rf \"$1\" && \"$0\" --preset tiny --experts-per-token 6 --seed 11 --out \"$1\""
                 $<TARGET_FILE:moerun-mkmodel> ${top6})
set_tests_properties(mpi_fixture_tiny_top6 PROPERTIES FIXTURES_SETUP tiny_top6 LABELS "mpi;distributed")

# pp ∈ {1, 2} × ep ∈ {1, 2, 4}: the golden replay file (logits, MTP logits, residual streams,
# router and indexer records, isolated blocks) and a mixed batch's logits are byte-identical
# to one process — for the golden checkpoint (top-4), a top-6 one, and the top-6 one run as
# top-4 (the 4Expert override).
foreach(layout "1;1" "1;2" "1;4" "2;1" "2;2" "2;4")
  list(GET layout 0 pp)
  list(GET layout 1 ep)
  math(EXPR np "${pp} * ${ep}")
  foreach(variant golden top6 top6as4)
    set(tag pp${pp}_ep${ep}_${variant})
    if(variant STREQUAL "golden")
      set(replay_opts)
      set(worker_model --model ${tiny}/checkpoint)
    elseif(variant STREQUAL "top6")
      set(replay_opts --checkpoint ${top6})
      set(worker_model --model ${top6})
    else()
      set(replay_opts --checkpoint ${top6} --experts-per-token 4)
      set(worker_model --model ${top6} --experts-per-token 4)
    endif()
    moerun_add_cluster_test(mpi_replay_same_bytes_${tag}
      ${same_output} ${out}/replay_single_${tag}.st ${out}/replay_cluster_${tag}.st
      -- ${replay} --golden ${tiny} --out ${out}/replay_single_${tag}.st --threads 1 ${replay_opts}
      -- ${mpirun} -np ${np} ${replay} --golden ${tiny} --out ${out}/replay_cluster_${tag}.st
         --threads 1 ${replay_opts} --layout pp=${pp},ep=${ep} --deadline 60)
    if(NOT variant STREQUAL "golden")
      moerun_add_cluster_test(mpi_worker_same_logits_${tag}
        ${same_output} ${out}/worker_single_${tag}.st ${out}/worker_cluster_${tag}.st
        -- ${worker} ${worker_args} ${worker_model} --single-process
           --dump-logits ${out}/worker_single_${tag}.st
        -- ${mpirun} -np ${np} ${worker} ${worker_args} ${worker_model} --layout pp=${pp},ep=${ep}
           --deadline 60 --dump-logits ${out}/worker_cluster_${tag}.st)
      set_tests_properties(mpi_replay_same_bytes_${tag} mpi_worker_same_logits_${tag}
                           PROPERTIES FIXTURES_REQUIRED tiny_top6)
    endif()
  endforeach()
endforeach()

# With the reference kernels a 2×2 cluster is bit-exact to the official code (the golden's
# canonical tier), also with the prompt in chunks of 6.
moerun_add_cluster_test(mpi_replay_reference_canonical_pp2_ep2
  sh -c "\"$@\" && /usr/bin/python3 ${MOERUN_GOLDEN_DIR}/compare.py ${tiny} ${out}/replay_reference_pp2_ep2.st --tier canonical --require-all --quiet"
  sh ${mpirun} -np 4 ${replay} --golden ${tiny} --out ${out}/replay_reference_pp2_ep2.st
  --kernels reference --threads 1 --prefill-chunk 6 --layout pp=2,ep=2 --deadline 120)

# Stage layers given explicitly, a cluster file, and the micro-batch count do not change a bit.
moerun_add_cluster_test(mpi_worker_same_logits_cluster_file
  ${same_output} ${out}/worker_single_file.st ${out}/worker_cluster_file.st
  -- ${worker} ${worker_args} --model ${tiny}/checkpoint --single-process
     --dump-logits ${out}/worker_single_file.st
  -- ${mpirun} -np 4 ${worker} ${worker_args} --model ${tiny}/checkpoint
     --cluster ${PROJECT_SOURCE_DIR}/configs/cluster-tiny-pp2-ep2.json
     --stage-layers 4 1 --micro-batches 3 --dump-logits ${out}/worker_cluster_file.st)

# Faults: a stalled rank and an exiting rank end the whole job within the deadline, and the
# output names them.
moerun_add_cluster_test(mpi_worker_fault_stall
  ${expect_failure} 20 "rank 2 .* at step 0 layer 3 phase moe dispatch\; still waiting for ranks \\[3\\]"
  -- ${mpirun} -np 4 ${worker} ${worker_args} --model ${tiny}/checkpoint --layout pp=2,ep=2 --deadline 3
     --fault rank=3,layer=3,action=stall)
moerun_add_cluster_test(mpi_worker_fault_exit
  ${expect_failure} 20 "fault injection: rank 1 exits at step [0-9]+ layer 1"
  -- ${mpirun} -np 4 ${worker} ${worker_args} --model ${tiny}/checkpoint --layout pp=2,ep=2 --deadline 3
     --fault rank=1,layer=1,action=exit)

# Bad layouts are refused at start, naming the problem.
moerun_add_cluster_test(mpi_worker_bad_layout_ranks
  ${expect_failure} 20 "layout pp=2 × ep=2 needs 4 ranks, but this job has 3"
  -- ${mpirun} -np 3 ${worker} ${worker_args} --model ${tiny}/checkpoint --layout pp=2,ep=2)
moerun_add_cluster_test(mpi_worker_bad_layout_stages
  ${expect_failure} 20 "pp=6 pipeline stages but the model has only 5 layers"
  -- ${mpirun} -np 6 ${worker} ${worker_args} --model ${tiny}/checkpoint --layout pp=6,ep=1)
moerun_add_cluster_test(mpi_worker_bad_layout_experts
  ${expect_failure} 20 "ep=3 does not divide the 16 routed experts"
  -- ${mpirun} -np 3 ${worker} ${worker_args} --model ${tiny}/checkpoint --layout pp=1,ep=3)
moerun_add_cluster_test(mpi_worker_bad_stage_layers
  ${expect_failure} 20 "stage layer counts sum to 4 but the model has 5 layers"
  -- ${mpirun} -np 2 ${worker} ${worker_args} --model ${tiny}/checkpoint --layout pp=2,ep=1 --stage-layers 2 2)

# The leader API: bad requests, per-column capacity, leader-only calls.
moerun_add_mpi_gtest_executable(test_distributed test_distributed.cc)
target_link_libraries(test_distributed PRIVATE moerun_worker)
foreach(np 1 2 4)
  moerun_add_mpi_test(NAME mpi_distributed_api_np${np} NP ${np} TIMEOUT 300 LABELS distributed
                      COMMAND $<TARGET_FILE:test_distributed>)
endforeach()

# The nccl transport: on machines with a GPU per rank a pp=2 × ep=2 cluster over it must give
# one process's logits; elsewhere it must be refused at start with a clear message.
if(MOERUN_HAVE_CUDA)
  moerun_add_cluster_test(mpi_worker_nccl_pp2_ep2
    ${same_output} --or-refused "nccl transport: no usable GPU" ${out}/worker_single_nccl.st
    ${out}/worker_cluster_nccl.st
    -- ${worker} ${worker_args} --model ${tiny}/checkpoint --single-process
       --dump-logits ${out}/worker_single_nccl.st
    -- ${mpirun} -np 4 ${worker} ${worker_args} --model ${tiny}/checkpoint --layout pp=2,ep=2
       --transport nccl --deadline 60 --dump-logits ${out}/worker_cluster_nccl.st)
endif()

# A bad request (a token outside the vocabulary) is refused by the leader with the reason and
# every rank ends cleanly (no hang, no crash).
moerun_add_cluster_test(mpi_worker_bad_request
  ${expect_failure} 20 "token 99999 \\(index 1\\) is outside the vocabulary 0..1023"
  -- ${mpirun} -np 4 ${worker} --model ${tiny}/checkpoint
     --prompts ${CMAKE_CURRENT_SOURCE_DIR}/data/bad_prompts.txt --layout pp=2,ep=2 --threads 1)
