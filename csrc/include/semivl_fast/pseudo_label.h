// Shared argument validation for the pseudo-label filter (CPU and CUDA entry points).
#pragma once

#include <ATen/ATen.h>

#include <tuple>

#include "semivl_fast/checks.h"

namespace semivl_fast {

inline void check_pseudo_label_args(const at::Tensor& logits, const c10::optional<at::Tensor>& ignore) {
  constexpr const char* op = "pseudo_label_filter";
  SVF_CHECK_ARG(logits.dim() == 4, op, "logits", "must have shape (B, N, H, W), got ", logits.sizes());
  SVF_CHECK_ARG(at::isFloatingType(logits.scalar_type()), op, "logits",
                "must be float64/float32/float16/bfloat16, got ", logits.scalar_type());
  SVF_CHECK_ARG(logits.size(1) >= 1, op, "logits", "needs at least one class, got shape ", logits.sizes());
  SVF_CHECK_CONTIGUOUS(op, logits, "logits");
  if (ignore.has_value()) {
    const auto& ig = *ignore;
    SVF_CHECK_ARG(ig.scalar_type() == at::kBool || ig.scalar_type() == at::kByte, op, "ignore",
                  "must be bool or uint8 (nonzero = ignored), got ", ig.scalar_type());
    SVF_CHECK_ARG(ig.dim() == 3 && ig.size(0) == logits.size(0) && ig.size(1) == logits.size(2) &&
                      ig.size(2) == logits.size(3),
                  op, "ignore", "must have shape (B, H, W) = (", logits.size(0), ", ", logits.size(2), ", ",
                  logits.size(3), "), got ", ig.sizes());
    SVF_CHECK_DEVICE(op, ig, logits.device(), "ignore");
    SVF_CHECK_CONTIGUOUS(op, ig, "ignore");
  }
}

// Outputs, written in place: conf (B, H, W) in the accumulation dtype (float64 for float64 logits, float32
// otherwise), label (B, H, W) int64, keep (B, H, W) bool.
inline void check_pseudo_label_outputs(const at::Tensor& logits, const at::Tensor& conf, const at::Tensor& label,
                                       const at::Tensor& keep) {
  constexpr const char* op = "pseudo_label_filter";
  const auto conf_dtype = logits.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const std::vector<int64_t> shape{logits.size(0), logits.size(2), logits.size(3)};
  const std::pair<const at::Tensor*, at::ScalarType> outs[] = {{&conf, conf_dtype}, {&label, at::kLong},
                                                               {&keep, at::kBool}};
  const char* names[] = {"conf", "label", "keep"};
  for (int i = 0; i < 3; ++i) {
    const at::Tensor& t = *outs[i].first;
    SVF_CHECK_ARG(t.sizes() == at::IntArrayRef(shape), op, names[i], "must have shape (B, H, W) = ", shape,
                  ", got ", t.sizes());
    SVF_CHECK_ARG(t.scalar_type() == outs[i].second, op, names[i], "must be ", outs[i].second, ", got ",
                  t.scalar_type());
    SVF_CHECK_DEVICE(op, t, logits.device(), names[i]);
    SVF_CHECK_CONTIGUOUS(op, t, names[i]);
  }
}

}  // namespace semivl_fast
