// CPU kernel of the pseudo-label filter: softmax over classes -> confidence, argmax, threshold, ignore mask.
//
// Logits are NCHW, so one pixel's classes are H*W apart. The kernel walks a block of contiguous pixels class by
// class (contiguous loads), keeping one online-softmax state per pixel; the per-pixel math is shared with CUDA.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <array>

#include "semivl_fast/pseudo_label.h"
#include "semivl_fast/pseudo_label_math.h"

namespace semivl_fast {
namespace {

constexpr int64_t kBlock = 64;  // pixels per block: 64 running states stay in L1

template <typename scalar_t>
void pseudo_label_cpu_kernel(const at::Tensor& logits, double threshold, double scale, const uint8_t* ignore,
                             at::Tensor& conf, at::Tensor& label, at::Tensor& keep) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = logits.size(0), N = logits.size(1), HW = logits.size(2) * logits.size(3);
  const int64_t blocks_per_image = (HW + kBlock - 1) / kBlock;
  const scalar_t* x = logits.const_data_ptr<scalar_t>();
  auto* conf_p = conf.mutable_data_ptr<acc_t>();
  auto* label_p = label.mutable_data_ptr<int64_t>();
  auto* keep_p = keep.mutable_data_ptr<bool>();
  const acc_t s = static_cast<acc_t>(scale), thr = static_cast<acc_t>(threshold);

  at::parallel_for(0, B * blocks_per_image, 1, [&](int64_t begin, int64_t end) {
    std::array<SoftmaxMaxState<acc_t>, kBlock> st;
    for (int64_t blk = begin; blk < end; ++blk) {
      const int64_t b = blk / blocks_per_image, p0 = (blk % blocks_per_image) * kBlock;
      const int64_t np = std::min(kBlock, HW - p0);
      const scalar_t* xb = x + b * N * HW + p0;
      for (int64_t i = 0; i < np; ++i) st[i] = softmax_max_init<acc_t>();
      for (int64_t c = 0; c < N; ++c) {
        const scalar_t* row = xb + c * HW;
        for (int64_t i = 0; i < np; ++i) softmax_max_update(st[i], s * static_cast<acc_t>(row[i]), c);
      }
      const int64_t o = b * HW + p0;
      for (int64_t i = 0; i < np; ++i) {
        const auto d = pseudo_label_decide(st[i], thr, ignore != nullptr && ignore[o + i] != 0);
        conf_p[o + i] = d.conf;
        label_p[o + i] = d.label;
        keep_p[o + i] = d.keep;
      }
    }
  });
}

void pseudo_label_filter_cpu(const at::Tensor& logits, double threshold, double scale,
                             const c10::optional<at::Tensor>& ignore, at::Tensor& conf, at::Tensor& label,
                             at::Tensor& keep) {
  check_pseudo_label_args(logits, ignore);
  check_pseudo_label_outputs(logits, conf, label, keep);
  const uint8_t* ig = ignore.has_value() ? static_cast<const uint8_t*>(ignore->const_data_ptr()) : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, logits.scalar_type(), "pseudo_label_filter_cpu", [&] {
    pseudo_label_cpu_kernel<scalar_t>(logits, threshold, scale, ig, conf, label, keep);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(semivl_fast_C, CPU, m) {
  m.impl("pseudo_label_filter_", &pseudo_label_filter_cpu);
}

}  // namespace semivl_fast
