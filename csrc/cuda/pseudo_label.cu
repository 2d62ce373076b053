// CUDA kernel of the pseudo-label filter: one thread per pixel; neighbouring threads read neighbouring pixels of
// the same class, so every class step is one coalesced load. The per-pixel math is shared with the CPU kernel.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "semivl_fast/pseudo_label.h"
#include "semivl_fast/pseudo_label_math.h"

namespace semivl_fast {
namespace {

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(256) pseudo_label_cuda_kernel(
    const scalar_t* __restrict__ x, const uint8_t* __restrict__ ignore, acc_t* __restrict__ conf,
    int64_t* __restrict__ label, bool* __restrict__ keep, int64_t B, int64_t N, int64_t HW, acc_t scale,
    acc_t threshold) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * HW) return;
  const int64_t b = idx / HW, p = idx - b * HW;
  const scalar_t* xp = x + b * N * HW + p;
  auto st = softmax_max_init<acc_t>();
  for (int64_t c = 0; c < N; ++c) softmax_max_update(st, scale * static_cast<acc_t>(xp[c * HW]), c);
  const auto d = pseudo_label_decide(st, threshold, ignore != nullptr && ignore[idx] != 0);
  conf[idx] = d.conf;
  label[idx] = d.label;
  keep[idx] = d.keep;
}

void pseudo_label_filter_cuda(const at::Tensor& logits, double threshold, double scale,
                              const c10::optional<at::Tensor>& ignore, at::Tensor& conf, at::Tensor& label,
                              at::Tensor& keep) {
  check_pseudo_label_args(logits, ignore);
  check_pseudo_label_outputs(logits, conf, label, keep);
  const c10::cuda::CUDAGuard guard(logits.device());
  const int64_t B = logits.size(0), N = logits.size(1), HW = logits.size(2) * logits.size(3);
  if (B * HW == 0) return;
  const uint8_t* ig = ignore.has_value() ? static_cast<const uint8_t*>(ignore->const_data_ptr()) : nullptr;
  constexpr int threads = 256;
  const auto blocks = static_cast<unsigned>((B * HW + threads - 1) / threads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "pseudo_label_filter_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pseudo_label_cuda_kernel<scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
        logits.const_data_ptr<scalar_t>(), ig, conf.mutable_data_ptr<acc_t>(), label.mutable_data_ptr<int64_t>(),
        keep.mutable_data_ptr<bool>(), B, N, HW, static_cast<acc_t>(scale), static_cast<acc_t>(threshold));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(semivl_fast_C, CUDA, m) {
  m.impl("pseudo_label_filter_", &pseudo_label_filter_cuda);
}

}  // namespace semivl_fast
