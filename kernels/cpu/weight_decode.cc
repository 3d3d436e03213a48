// Decoding of checkpoint-format weight rows (see weight_decode.h), one element at a time: the
// plain, obviously-correct form the reference GEMM and the tests rely on.
#include "kernels/cpu/weight_decode.h"

#include <cstring>

#include "common/error.h"
#include "common/numfmt.h"

namespace moerun::kernels {
namespace {
constexpr int64_t kFp8Block = 128;
constexpr int64_t kFp4Block = 32;
int64_t ceil_div(int64_t a, int64_t b) {
  return (a + b - 1) / b;
}
}  // namespace

void decode_weight_row(const WeightView& w, int64_t row, float* out) {
  const int64_t cols = w.cols;
  switch (w.format) {
    case WeightFormat::kF32:
      std::memcpy(out, static_cast<const float*>(w.data) + row * cols, sizeof(float) * cols);
      return;
    case WeightFormat::kBf16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + row * cols;
      for (int64_t k = 0; k < cols; ++k) out[k] = numfmt::bf16_to_f32(src[k]);
      return;
    }
    case WeightFormat::kFp8: {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * cols;
      const uint8_t* srow = w.scales + (row / kFp8Block) * ceil_div(cols, kFp8Block);
      for (int64_t k = 0; k < cols; ++k)
        out[k] = numfmt::e4m3_to_f32(src[k]) * numfmt::e8m0_to_f32(srow[k / kFp8Block]);
      return;
    }
    case WeightFormat::kFp4: {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * (cols / 2);
      const uint8_t* srow = w.scales + row * (cols / kFp4Block);
      for (int64_t k = 0; k < cols; ++k) {
        const uint8_t byte = src[k / 2];
        const uint8_t nib = (k % 2 == 0) ? numfmt::fp4_even(byte) : numfmt::fp4_odd(byte);
        out[k] = numfmt::e2m1_to_f32(nib) * numfmt::e8m0_to_f32(srow[k / kFp4Block]);
      }
      return;
    }
  }
}

int64_t weight_data_bytes(const WeightView& w) {
  switch (w.format) {
    case WeightFormat::kF32:
      return w.rows * w.cols * 4;
    case WeightFormat::kBf16:
      return w.rows * w.cols * 2;
    case WeightFormat::kFp8:
      return w.rows * w.cols;
    case WeightFormat::kFp4:
      return w.rows * w.cols / 2;
  }
  return 0;
}

int64_t weight_scale_bytes(const WeightView& w) {
  switch (w.format) {
    case WeightFormat::kFp8:
      return ceil_div(w.rows, kFp8Block) * ceil_div(w.cols, kFp8Block);
    case WeightFormat::kFp4:
      return w.rows * (w.cols / kFp4Block);
    default:
      return 0;
  }
}

void check_weight_view(const WeightView& w, const char* what) {
  MOERUN_CHECK(w.data != nullptr, "{}: weight has no data", what);
  MOERUN_CHECK(w.rows > 0 && w.cols > 0, "{}: weight shape [{}, {}] is empty", what, w.rows,
               w.cols);
  if (w.format == WeightFormat::kFp8 || w.format == WeightFormat::kFp4)
    MOERUN_CHECK(w.scales != nullptr, "{}: quantized weight has no scales", what);
  if (w.format == WeightFormat::kFp4)
    MOERUN_CHECK(w.cols % kFp4Block == 0, "{}: FP4 weight input width {} is not a multiple of 32",
                 what, w.cols);
}

}  // namespace moerun::kernels
