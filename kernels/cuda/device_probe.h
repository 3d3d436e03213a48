// Whether this process can use a CUDA GPU. Build machines have the toolkit but no GPU
// (cudaGetDeviceCount fails with error 35 there); any failure means "no GPU", so GPU tests
// skip cleanly instead of failing.
#pragma once

#include <string>

namespace moerun::cuda {

struct DeviceProbe {
  int device_count = 0;  // 0 when no usable GPU
  std::string reason;    // why there is none (the CUDA error string), empty otherwise
};

DeviceProbe probe_devices();

}  // namespace moerun::cuda
