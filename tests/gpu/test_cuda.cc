// CUDA path: check macros carry the CUDA/NCCL error strings; on a GPU, the device decoders of
// e4m3 / e2m1 / E8M0 agree bit for bit with common/numfmt for every code.
#include <cmath>
#include <cstring>
#include <vector>

#include <gtest/gtest.h>

#include "common/check_cuda.h"
#include "common/numfmt.h"
#include "kernels/cuda/device_probe.h"
#include "kernels/cuda/numfmt_kernels.h"

namespace {

TEST(CudaCheck, CarriesCudaErrorString) {
  try {
    MOERUN_CHECK_CUDA(cudaErrorInvalidValue);
    FAIL() << "no exception";
  } catch (const moerun::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("CUDA error 1"), std::string::npos) << msg;
    EXPECT_NE(msg.find(cudaGetErrorString(cudaErrorInvalidValue)), std::string::npos) << msg;
    EXPECT_NE(msg.find("test_cuda.cc"), std::string::npos) << msg;
  }
}

TEST(CudaCheck, CarriesNcclErrorString) {
  try {
    MOERUN_CHECK_NCCL(ncclInvalidArgument);
    FAIL() << "no exception";
  } catch (const moerun::Error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find("NCCL error"), std::string::npos) << msg;
    EXPECT_NE(msg.find(ncclGetErrorString(ncclInvalidArgument)), std::string::npos) << msg;
  }
}

TEST(CudaProbe, NeverThrows) {
  const auto probe = moerun::cuda::probe_devices();
  EXPECT_GE(probe.device_count, 0);
  if (probe.device_count == 0) {
    EXPECT_FALSE(probe.reason.empty());
  }
}

void expect_same_bits(float a, float b, int code) {
  uint32_t ua, ub;
  std::memcpy(&ua, &a, 4);
  std::memcpy(&ub, &b, 4);
  if (std::isnan(a) || std::isnan(b)) {
    EXPECT_TRUE(std::isnan(a) && std::isnan(b)) << "code " << code;
  } else {
    EXPECT_EQ(ua, ub) << "code " << code << ": device " << a << " host " << b;
  }
}

TEST(CudaNumfmt, DecodersMatchHostForEveryCode) {
  if (moerun::cuda::probe_devices().device_count == 0) GTEST_SKIP() << "no GPU";
  std::vector<uint8_t> codes(256);
  for (int i = 0; i < 256; ++i) codes[static_cast<size_t>(i)] = static_cast<uint8_t>(i);
  std::vector<float> out(256);
  using moerun::cuda::CodeFormat;
  moerun::cuda::decode_codes(CodeFormat::kE4m3, codes.data(), codes.size(), out.data());
  for (int i = 0; i < 256; ++i)
    expect_same_bits(out[i], moerun::numfmt::e4m3_to_f32(static_cast<uint8_t>(i)), i);
  moerun::cuda::decode_codes(CodeFormat::kE8m0, codes.data(), codes.size(), out.data());
  for (int i = 0; i < 256; ++i)
    expect_same_bits(out[i], moerun::numfmt::e8m0_to_f32(static_cast<uint8_t>(i)), i);
  moerun::cuda::decode_codes(CodeFormat::kE2m1, codes.data(), 16, out.data());
  for (int i = 0; i < 16; ++i)
    expect_same_bits(out[i], moerun::numfmt::e2m1_to_f32(static_cast<uint8_t>(i)), i);
}

}  // namespace
