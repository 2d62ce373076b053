// Shared argument validation for the cost volume (CPU entry points; a CUDA face would use the same checks).
//
// The C++ operators work on unit text rows: image (B, C, H, W), text (R, C) in the image dtype (template
// ensembling and normalisation of the tiny text side happen in PyTorch), optional groups (R,) int64 class of every
// row with num_classes output channels (concept max), else R output channels.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "semivl_fast/checks.h"

namespace semivl_fast {

constexpr const char* kCostVolumeOp = "cost_volume";

// Number of output channels: num_classes with concept groups, else the number of text rows.
inline int64_t cost_volume_out_channels(const at::Tensor& text, const c10::optional<at::Tensor>& groups,
                                        int64_t num_classes) {
  return groups.has_value() ? num_classes : text.size(0);
}

inline void check_cost_volume_args(const at::Tensor& image, const at::Tensor& text,
                                   const c10::optional<at::Tensor>& groups, int64_t num_classes) {
  constexpr const char* op = kCostVolumeOp;
  SVF_CHECK_ARG(image.dim() == 4, op, "image", "must have shape (B, C, H, W), got ", image.sizes());
  SVF_CHECK_ARG(at::isFloatingType(image.scalar_type()), op, "image",
                "must be float64/float32/float16/bfloat16, got ", image.scalar_type());
  SVF_CHECK_CONTIGUOUS(op, image, "image");
  SVF_CHECK_ARG(text.dim() == 2 && text.size(1) == image.size(1) && text.size(0) >= 1, op, "text",
                "must be (R, C) unit rows with R >= 1 and C = ", image.size(1), " (the image channels), got ",
                text.sizes());
  SVF_CHECK_ARG(text.scalar_type() == image.scalar_type(), op, "text", "must have the image dtype ",
                image.scalar_type(), ", got ", text.scalar_type());
  SVF_CHECK_ARG(text.device() == image.device(), op, "text", "must be on ", image.device(),
                " like the image (got ", text.device(), ")");
  SVF_CHECK_CONTIGUOUS(op, text, "text");
  if (groups.has_value()) {
    const auto& g = *groups;
    SVF_CHECK_ARG(g.scalar_type() == at::kLong, op, "groups", "must be int64, got ", g.scalar_type());
    SVF_CHECK_ARG(g.dim() == 1 && g.size(0) == text.size(0), op, "groups", "must have shape (R,) = (",
                  text.size(0), ",), one class per text row, got ", g.sizes());
    SVF_CHECK_ARG(g.device() == image.device(), op, "groups", "must be on ", image.device(),
                  " like the image (got ", g.device(), ")");
    SVF_CHECK_CONTIGUOUS(op, g, "groups");
    SVF_CHECK_ARG(num_classes >= 1, op, "num_classes", "must be >= 1 with groups, got ", num_classes);
  }
}

// `t` must be a contiguous tensor of `shape` and `dtype` on `device` (an output written in place).
inline void check_cost_volume_buffer(const at::Tensor& t, const char* name, at::IntArrayRef shape,
                                     at::ScalarType dtype, const at::Device& device) {
  constexpr const char* op = kCostVolumeOp;
  SVF_CHECK_ARG(t.sizes() == shape, op, name, "must have shape ", shape, ", got ", t.sizes());
  SVF_CHECK_ARG(t.scalar_type() == dtype, op, name, "must be ", dtype, ", got ", t.scalar_type());
  SVF_CHECK_ARG(t.device() == device, op, name, "must be on ", device, " like the image (got ", t.device(), ")");
  SVF_CHECK_CONTIGUOUS(op, t, name);
}

inline std::vector<int64_t> cost_volume_out_shape(const at::Tensor& image, int64_t channels) {
  return {image.size(0), channels, image.size(2), image.size(3)};
}

}  // namespace semivl_fast
