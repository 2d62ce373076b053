// Argument validation of the fused pseudo-label loss kernels, shared by the CPU and the CUDA entry points. The
// contract of pseudo_label_loss_forward_ / pseudo_label_loss_backward_ is documented with their schemas in
// csrc/registration.cpp.
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "semivl_fast/checks.h"

namespace semivl_fast {

constexpr const char* kPseudoLabelLossOp = "pseudo_label_loss";

inline at::ScalarType pseudo_label_loss_acc_type(const at::Tensor& student) {
  return student.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

inline void pseudo_label_loss_check_student(const at::Tensor& student) {
  constexpr const char* op = kPseudoLabelLossOp;
  SVF_CHECK_ARG(student.dim() == 4, op, "student", "must have shape (B, N, h, w), got ", student.sizes());
  SVF_CHECK_ARG(at::isFloatingType(student.scalar_type()), op, "student",
                "must be float64/float32/float16/bfloat16, got ", student.scalar_type());
  SVF_CHECK_ARG(student.size(1) >= 1 && student.size(2) >= 1 && student.size(3) >= 1, op, "student",
                "needs at least one class and one pixel, got shape ", student.sizes());
  SVF_CHECK_CONTIGUOUS(op, student, "student");
}

inline void pseudo_label_loss_check_pixels(const at::Tensor& student, const at::Tensor& t, const char* name,
                                           at::IntArrayRef shape, std::initializer_list<at::ScalarType> dtypes) {
  constexpr const char* op = kPseudoLabelLossOp;
  bool dtype_ok = false;
  for (auto d : dtypes) dtype_ok = dtype_ok || t.scalar_type() == d;
  SVF_CHECK_ARG(dtype_ok, op, name, "has the wrong dtype ", t.scalar_type());
  SVF_CHECK_ARG(t.sizes() == shape, op, name, "must have shape ", shape, ", got ", t.sizes());
  SVF_CHECK_DEVICE(op, t, student.device(), name);
  SVF_CHECK_CONTIGUOUS(op, t, name);
}

inline void pseudo_label_loss_check_forward_args(const at::Tensor& student, int64_t H, int64_t W,
                                                 const c10::optional<at::Tensor>& target,
                                                 const c10::optional<at::Tensor>& teacher,
                                                 const c10::optional<at::Tensor>& teacher_mix,
                                                 const c10::optional<at::Tensor>& boxes,
                                                 const c10::optional<at::Tensor>& ignore,
                                                 const c10::optional<at::Tensor>& ignore_mix, const at::Tensor& lse,
                                                 const at::Tensor& code, const at::Tensor& rows) {
  constexpr const char* op = kPseudoLabelLossOp;
  pseudo_label_loss_check_student(student);
  TORCH_CHECK(H >= 1 && W >= 1, op, ": argument 'size' must be (H, W) with H, W >= 1, got (", H, ", ", W, ")");
  const int64_t B = student.size(0), N = student.size(1);
  const std::vector<int64_t> full{B, H, W};
  TORCH_CHECK(target.has_value() != teacher.has_value(), op,
              ": give exactly one of 'target' (supervised labels) and 'teacher' (pseudo-labels)");
  TORCH_CHECK(teacher_mix.has_value() == boxes.has_value(), op,
              ": 'teacher_mix' and 'boxes' go together (CutMix needs both)");
  if (target.has_value()) pseudo_label_loss_check_pixels(student, *target, "target", full, {at::kLong});
  const std::pair<const c10::optional<at::Tensor>*, const char*> lows[] = {{&teacher, "teacher"},
                                                                          {&teacher_mix, "teacher_mix"}};
  for (const auto& [t, name] : lows) {
    if (!t->has_value()) continue;
    const at::Tensor& x = **t;
    SVF_CHECK_ARG(x.dim() == 4 && x.size(0) == B && x.size(1) == N && x.size(2) >= 1 && x.size(3) >= 1, op, name,
                  "must have shape (B, N, h', w') with B, N = ", B, ", ", N, " like 'student', got ", x.sizes());
    SVF_CHECK_ARG(at::isFloatingType(x.scalar_type()), op, name, "must be floating point, got ", x.scalar_type());
    SVF_CHECK_DEVICE(op, x, student.device(), name);
    SVF_CHECK_CONTIGUOUS(op, x, name);
  }
  if (boxes.has_value()) pseudo_label_loss_check_pixels(student, *boxes, "boxes", {B, 4}, {at::kLong});
  if (ignore.has_value()) pseudo_label_loss_check_pixels(student, *ignore, "ignore", full, {at::kBool, at::kByte});
  if (ignore_mix.has_value()) {
    pseudo_label_loss_check_pixels(student, *ignore_mix, "ignore_mix", full, {at::kBool, at::kByte});
  }
  pseudo_label_loss_check_pixels(student, lse, "lse", full, {pseudo_label_loss_acc_type(student)});
  pseudo_label_loss_check_pixels(student, code, "code", full, {at::kInt});
  pseudo_label_loss_check_pixels(student, rows, "rows", {B, H, 4}, {at::kDouble});
}

inline void pseudo_label_loss_check_backward_args(const at::Tensor& student, const at::Tensor& lse,
                                                  const at::Tensor& code, const at::Tensor& gscale,
                                                  const at::Tensor& grad) {
  constexpr const char* op = kPseudoLabelLossOp;
  pseudo_label_loss_check_student(student);
  SVF_CHECK_ARG(lse.dim() == 3 && lse.size(0) == student.size(0), op, "lse", "must have shape (B, H, W) with B = ",
                student.size(0), ", got ", lse.sizes());
  pseudo_label_loss_check_pixels(student, lse, "lse", lse.sizes(), {pseudo_label_loss_acc_type(student)});
  pseudo_label_loss_check_pixels(student, code, "code", lse.sizes(), {at::kInt});
  pseudo_label_loss_check_pixels(student, gscale, "gscale", {student.size(0)}, {pseudo_label_loss_acc_type(student)});
  pseudo_label_loss_check_pixels(student, grad, "grad", student.sizes(), {student.scalar_type()});
}

}  // namespace semivl_fast
