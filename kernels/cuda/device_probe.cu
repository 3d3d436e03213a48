#include "kernels/cuda/device_probe.h"

#include <cuda_runtime_api.h>

namespace moerun::cuda {

DeviceProbe probe_devices() {
  DeviceProbe probe;
  int count = 0;
  const cudaError_t rc = cudaGetDeviceCount(&count);
  if (rc != cudaSuccess) {
    probe.reason = cudaGetErrorString(rc);
    cudaGetLastError();  // clear the sticky error so later probes start clean
    return probe;
  }
  probe.device_count = count;
  if (count == 0) probe.reason = "no CUDA devices";
  return probe;
}

}  // namespace moerun::cuda
