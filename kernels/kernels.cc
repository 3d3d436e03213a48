// Kernel-set selection and the helpers shared by both implementations.
#include "kernels/kernels.h"

#include <algorithm>
#include <numeric>
#include <vector>

#include "common/error.h"
#include "kernels/cpu/optimized.h"
#include "kernels/cpu/reference.h"

namespace moerun::kernels {

std::string_view kernel_impl_name(KernelImpl impl) {
  return impl == KernelImpl::kReference ? "reference" : "optimized";
}

KernelImpl parse_kernel_impl(std::string_view name) {
  if (name == "reference") return KernelImpl::kReference;
  if (name == "optimized") return KernelImpl::kOptimized;
  MOERUN_THROW("unknown kernel set '{}' (allowed: reference, optimized)", name);
}

std::unique_ptr<Kernels> make_kernels(KernelImpl impl, int num_threads) {
  if (impl == KernelImpl::kReference) return std::make_unique<ReferenceKernels>();
  return make_optimized_kernels(num_threads);
}

int64_t topk_lower_index(const float* scores, int64_t n, int64_t k, int32_t* idx) {
  const int64_t kk = std::min(k, n);
  if (kk <= 0) return 0;
  std::vector<int32_t> order(static_cast<size_t>(n));
  std::iota(order.begin(), order.end(), 0);
  auto better = [scores](int32_t a, int32_t b) {
    return scores[a] > scores[b] || (scores[a] == scores[b] && a < b);
  };
  std::partial_sort(order.begin(), order.begin() + kk, order.end(), better);
  std::copy(order.begin(), order.begin() + kk, idx);
  return kk;
}

}  // namespace moerun::kernels
