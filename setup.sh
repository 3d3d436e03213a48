#!/usr/bin/env bash
# moerun set-up: installs every Debian package the project needs (idempotent; silent when
# nothing is missing), configures and builds with CMake, then does what was asked:
#
#   ./setup.sh demo    build, then the main job on the embedded tiny model (one process and
#                      an mpirun cluster of 4 workers)
#   ./setup.sh test    build, then the whole test suite (what CI runs)
#   ./setup.sh build   build only
#   ./setup.sh deps    install packages only
#
# PRESET (default release: -O2, warnings as errors) picks a CMakePresets.json preset.
set -euo pipefail
cd "$(dirname "$0")"

ACTION="${1:-build}"
PRESET="${PRESET:-release}"
BUILD_DIR="build/${PRESET}"

PACKAGES=(
  build-essential cmake ninja-build pkg-config git
  libopenmpi-dev openmpi-bin                       # MPI transport (UCX comes with Open MPI)
  libgrpc++-dev libprotobuf-dev protobuf-compiler protobuf-compiler-grpc
  nlohmann-json3-dev libfmt-dev libspdlog-dev libcli11-dev libpcre2-dev
  libgtest-dev libgmock-dev libbenchmark-dev
  clang-14 libclang-rt-14-dev                      # libFuzzer targets (preset "fuzz")
  python3 python3-numpy                            # ../shared/golden/compare.py
)

install_packages() {
  local missing=()
  for p in "${PACKAGES[@]}"; do
    [[ "$p" == \#* ]] && continue
    if [[ "$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null)" != "install ok installed" ]]; then
      missing+=("$p")
    fi
  done
  ((${#missing[@]} == 0)) && return 0
  echo "setup.sh: installing ${missing[*]}"
  local sudo=()
  if ((EUID != 0)); then
    command -v sudo >/dev/null || {
      echo "setup.sh: need root (or sudo) to install: ${missing[*]}" >&2
      exit 1
    }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update -qq
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

build() {
  mkdir -p build
  local log="build/configure-${PRESET}.log"
  if ! cmake --preset "$PRESET" >"$log" 2>&1; then
    cat "$log" >&2
    exit 1
  fi
  grep -E '^-- moerun:' "$log" || true  # e.g. whether CUDA targets are built
  cmake --build --preset "$PRESET" -- -j"$(nproc)"
}

case "$ACTION" in
  deps) install_packages ;;
  build) install_packages; build ;;
  test)
    install_packages
    build
    ctest --preset "$PRESET" -j"$(nproc)"
    ;;
  demo)
    install_packages
    build
    out="${BUILD_DIR}/demo/dsv4-tiny"
    rm -rf "$out"
    "${BUILD_DIR}/tools/mkmodel/moerun-mkmodel" --preset tiny --seed 1234 --out "$out"
    "${BUILD_DIR}/tools/inspect/moerun-inspect" "$out" --layout pp=2,ep=2
    # Random weights: the text is gibberish, but every block of the model runs.
    "${BUILD_DIR}/tools/generate/moerun-generate" --model "$out" \
      --chat "Why do mixture-of-experts models route tokens?" --max-tokens 32
    # The same model as a cluster: 4 ranks (2 pipeline stages × 2 expert-parallel columns)
    # under mpirun serve 10 prompts; the logits must equal the single-process engine's.
    local_mpi=(mpirun -np 4 --oversubscribe --bind-to none --mca pml ob1
               --mca mpi_yield_when_idle 1)
    [[ "$(id -u)" == 0 ]] && export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
    run=(--model "$out" --prompts tests/mpi/data/mixed_prompts.txt --max-new-tokens 8 --threads 1)
    OMP_NUM_THREADS=1 "${local_mpi[@]}" "${BUILD_DIR}/worker/moerun-worker" "${run[@]}" \
      --layout pp=2,ep=2 --dump-logits "${BUILD_DIR}/demo/cluster.safetensors"
    "${BUILD_DIR}/worker/moerun-worker" "${run[@]}" --single-process \
      --dump-logits "${BUILD_DIR}/demo/single.safetensors" > /dev/null
    cmp "${BUILD_DIR}/demo/cluster.safetensors" "${BUILD_DIR}/demo/single.safetensors"
    echo "demo: the pp=2 × ep=2 cluster's logits are bit-identical to one process"
    ;;
  *)
    echo "usage: $0 demo|test|build|deps" >&2
    exit 2
    ;;
esac
