// CUDA kernels of the fused pseudo-label loss (contract: csrc/registration.cpp); the per-pixel math (bilinear taps,
// online softmax, targets, cross-entropy and its gradient) is shared with the CPU kernel through
// semivl_fast/pseudo_label_loss_math.h.
//
// Forward: one block per image row, threads stride over the row's pixels; each thread runs pseudo_label_loss_pixel:
// an online softmax over the teacher's classes (bilinear taps read straight from the low-res NCHW logits;
// neighbouring threads read neighbouring taps of the same class) and, if accepted, an online logsumexp over the
// student's. The block reduces the row's four sums (deterministic: no atomics).
// Backward: one thread per low-res gradient element (b, n, i, j) runs pseudo_label_loss_grad_element: a gather over
// the high-res pixels whose taps include (i, j), recomputing softmax_n there from the saved logsumexp. No atomics, no
// (N, H, W) buffer. Both bodies live in pseudo_label_loss_math.h; the CPU runs them on its per-pixel path.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "semivl_fast/pseudo_label_loss.h"
#include "semivl_fast/pseudo_label_loss_math.h"

namespace semivl_fast {
namespace {

constexpr int kForwardThreads = 256;
constexpr int kBackwardThreads = 256;

struct LowResArg {
  const void* data;
  int64_t h, w;
};

template <typename scalar_t, typename tscalar_t, typename acc_t>
__global__ void __launch_bounds__(kForwardThreads) pseudo_label_loss_forward_kernel(
    const scalar_t* __restrict__ student, LowResArg st, LowResArg te, LowResArg mx,
    const int64_t* __restrict__ target, const int64_t* __restrict__ boxes, const uint8_t* __restrict__ ignore,
    const uint8_t* __restrict__ ignore_mix, int64_t N, int64_t H, int64_t W, acc_t threshold, acc_t scale,
    bool use_threshold, acc_t* __restrict__ lse, int32_t* __restrict__ code, double* __restrict__ rows) {
  const int64_t y = blockIdx.x, b = blockIdx.y;
  const scalar_t* s_img = student + b * N * st.h * st.w;
  const tscalar_t* t_img = te.data == nullptr ? nullptr : static_cast<const tscalar_t*>(te.data) + b * N * te.h * te.w;
  const tscalar_t* m_img = mx.data == nullptr ? nullptr : static_cast<const tscalar_t*>(mx.data) + b * N * mx.h * mx.w;
  const int64_t* box = boxes == nullptr ? nullptr : boxes + 4 * b;
  double sums[kRowSums] = {0.0, 0.0, 0.0, 0.0};
  for (int64_t x = threadIdx.x; x < W; x += blockDim.x) {
    const int64_t pix = (b * H + y) * W + x;
    const int64_t label = target != nullptr ? target[pix] : int64_t(0);
    CUDA_KERNEL_ASSERT(label_in_range(label, N) && "pseudo_label_loss: target labels must be in [0, N) or 255");
    const auto r = pseudo_label_loss_pixel<acc_t>(y, x, N, H, W, s_img, st.h, st.w, t_img, te.h, te.w, m_img, mx.h,
                                                  mx.w, box, label, ignore != nullptr && ignore[pix] != 0,
                                                  ignore_mix != nullptr && ignore_mix[pix] != 0, use_threshold,
                                                  threshold, scale);
    sums[0] += static_cast<double>(r.ce);
    sums[1] += r.target.valid;
    sums[2] += r.target.accepted;
    sums[3] += r.target.valid ? static_cast<double>(r.target.conf) : 0.0;
    lse[pix] = r.lse;
    code[pix] = r.target.accepted ? static_cast<int32_t>(r.target.label) : -1;
  }
  // Block reduction of the four row sums: warp shuffles, then one warp over the warp partials.
  __shared__ double partial[kRowSums][kForwardThreads / 32];
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = (blockDim.x + 31) / 32;
#pragma unroll
  for (int k = 0; k < kRowSums; ++k) {
    double v = sums[k];
    for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
    if (lane == 0) partial[k][warp] = v;
  }
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int k = 0; k < kRowSums; ++k) {
      double v = lane < warps ? partial[k][lane] : 0.0;
      for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
      if (lane == 0) rows[(b * H + y) * kRowSums + k] = v;
    }
  }
}

template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(kBackwardThreads) pseudo_label_loss_backward_kernel(
    const scalar_t* __restrict__ student, const acc_t* __restrict__ lse, const int32_t* __restrict__ code,
    const acc_t* __restrict__ gscale, scalar_t* __restrict__ grad, int64_t B, int64_t N, int64_t h, int64_t w,
    int64_t H, int64_t W) {
  const int64_t idx = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= B * N * h * w) return;
  const int64_t j = idx % w, i = (idx / w) % h, n = (idx / (w * h)) % N, b = idx / (w * h * N);
  const acc_t g = pseudo_label_loss_grad_element<acc_t>(n, i, j, h, w, H, W, student + (b * N + n) * h * w,
                                                        lse + b * H * W, code + b * H * W);
  grad[idx] = static_cast<scalar_t>(g * gscale[b]);
}

void forward_cuda(const at::Tensor& student, int64_t H, int64_t W, const c10::optional<at::Tensor>& target,
                  const c10::optional<at::Tensor>& teacher, const c10::optional<at::Tensor>& teacher_mix,
                  const c10::optional<at::Tensor>& boxes, const c10::optional<at::Tensor>& ignore,
                  const c10::optional<at::Tensor>& ignore_mix, double threshold, double scale, bool use_threshold,
                  at::Tensor& lse, at::Tensor& code, at::Tensor& rows) {
  pseudo_label_loss_check_forward_args(student, H, W, target, teacher, teacher_mix, boxes, ignore, ignore_mix, lse,
                                       code, rows);
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t B = student.size(0), N = student.size(1);
  TORCH_CHECK(H <= INT32_MAX && B <= 65535, kPseudoLabelLossOp, ": crop height or batch too large for the CUDA kernel");
  // Teacher logits are read in the student's dtype, or in the accumulation dtype when they differ (a low-res cast).
  const auto acc_type = pseudo_label_loss_acc_type(student);
  at::Tensor te, mx;
  bool same = true;
  if (teacher.has_value()) {
    te = *teacher;
    same = te.scalar_type() == student.scalar_type() &&
           (!teacher_mix.has_value() || teacher_mix->scalar_type() == student.scalar_type());
    if (teacher_mix.has_value()) mx = *teacher_mix;
    if (!same) {
      te = te.to(acc_type);
      if (mx.defined()) mx = mx.to(acc_type);
    }
  }
  const LowResArg st{student.const_data_ptr(), student.size(2), student.size(3)};
  const LowResArg ta{te.defined() ? te.const_data_ptr() : nullptr, te.defined() ? te.size(2) : 1,
                     te.defined() ? te.size(3) : 1};
  const LowResArg ma{mx.defined() ? mx.const_data_ptr() : nullptr, mx.defined() ? mx.size(2) : 1,
                     mx.defined() ? mx.size(3) : 1};
  const int64_t* tgt = target.has_value() ? target->const_data_ptr<int64_t>() : nullptr;
  const int64_t* bx = boxes.has_value() ? boxes->const_data_ptr<int64_t>() : nullptr;
  const uint8_t* ig = ignore.has_value() ? static_cast<const uint8_t*>(ignore->const_data_ptr()) : nullptr;
  const uint8_t* igm = ignore_mix.has_value() ? static_cast<const uint8_t*>(ignore_mix->const_data_ptr()) : nullptr;
  const dim3 grid(static_cast<unsigned>(H), static_cast<unsigned>(B));
  const int threads = static_cast<int>(std::min<int64_t>(kForwardThreads, (W + 31) / 32 * 32));
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "pseudo_label_loss_forward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto launch = [&](auto tscalar) {
      using tscalar_t = decltype(tscalar);
      pseudo_label_loss_forward_kernel<scalar_t, tscalar_t, acc_t><<<grid, threads, 0, stream>>>(
          student.const_data_ptr<scalar_t>(), st, ta, ma, tgt, bx, ig, igm, N, H, W, static_cast<acc_t>(threshold),
          static_cast<acc_t>(scale), use_threshold, lse.mutable_data_ptr<acc_t>(), code.mutable_data_ptr<int32_t>(),
          rows.mutable_data_ptr<double>());
    };
    if (same) launch(scalar_t{}); else launch(acc_t{});
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

void backward_cuda(const at::Tensor& student, const at::Tensor& lse, const at::Tensor& code, const at::Tensor& gscale,
                   at::Tensor& grad) {
  pseudo_label_loss_check_backward_args(student, lse, code, gscale, grad);
  const c10::cuda::CUDAGuard guard(student.device());
  const int64_t B = student.size(0), N = student.size(1), h = student.size(2), w = student.size(3);
  const int64_t total = B * N * h * w;
  if (total == 0) return;
  const auto blocks = static_cast<unsigned>((total + kBackwardThreads - 1) / kBackwardThreads);
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "pseudo_label_loss_backward", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    pseudo_label_loss_backward_kernel<scalar_t, acc_t><<<blocks, kBackwardThreads, 0, stream>>>(
        student.const_data_ptr<scalar_t>(), lse.const_data_ptr<acc_t>(), code.const_data_ptr<int32_t>(),
        gscale.const_data_ptr<acc_t>(), grad.mutable_data_ptr<scalar_t>(), B, N, h, w, lse.size(1), lse.size(2));
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

TORCH_LIBRARY_IMPL(semivl_fast_C, CUDA, m) {
  m.impl("pseudo_label_loss_forward_", &forward_cuda);
  m.impl("pseudo_label_loss_backward_", &backward_cuda);
}

}  // namespace semivl_fast
