// Argument validation of the class-attention kernels (every face that takes ATen tensors).
//
// The kernels see one attention problem per (sequence s, head h): q, k, v, out, grad_* are 4-D (S, H, N, D) views
// with any strides except a unit stride along D (the packed qkv projection output (S, N, 3*H*D) is viewed this way
// without a copy); lse and delta are contiguous (S, H, N) in the accumulation dtype (float64 for float64 inputs,
// float32 otherwise).
#pragma once

#include <ATen/ATen.h>

#include <vector>

#include "semivl_fast/checks.h"

namespace semivl_fast {

// The N rows of one problem's (N, D) operand for the CPU math: row n at p + n * ld, with Dp (>= D, a multiple of the
// vector width) readable / writable columns per row; input columns D..Dp are zero.
template <typename T>
struct Rows {
  T* p;
  int64_t ld;
};

inline at::ScalarType class_attention_acc_type(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

// q is the reference for shape, dtype and device; every other view must match it.
inline void check_class_attention_view(const char* op, const at::Tensor& q, const at::Tensor& t, const char* name) {
  SVF_CHECK_ARG(t.dim() == 4, op, name, "must be 4-D (S, H, N, D), got shape ", t.sizes());
  SVF_CHECK_ARG(t.sizes() == q.sizes(), op, name, "must have the shape of 'q' ", q.sizes(), ", got ", t.sizes());
  SVF_CHECK_ARG(t.scalar_type() == q.scalar_type(), op, name, "must have the dtype of 'q' (", q.scalar_type(),
                "), got ", t.scalar_type());
  SVF_CHECK_ARG(t.device() == q.device(), op, name, "must be on ", q.device(), " like 'q' (got ", t.device(), ")");
  SVF_CHECK_ARG(t.size(3) <= 1 || t.stride(3) == 1, op, name, "must have unit stride along D (got strides ",
                t.strides(), "); call .contiguous() or use semivl_fast.ops.class_attention, which does it for you");
}

inline void check_class_attention_rowstat(const char* op, const at::Tensor& q, const at::Tensor& t,
                                          const char* name) {
  const std::vector<int64_t> shape{q.size(0), q.size(1), q.size(2)};
  SVF_CHECK_ARG(t.sizes() == at::IntArrayRef(shape), op, name, "must have shape (S, H, N) = ", shape, ", got ",
                t.sizes());
  const auto acc = class_attention_acc_type(q.scalar_type());
  SVF_CHECK_ARG(t.scalar_type() == acc, op, name, "must be ", acc, " for ", q.scalar_type(), " inputs, got ",
                t.scalar_type());
  SVF_CHECK_DEVICE(op, t, q.device(), name);
  SVF_CHECK_CONTIGUOUS(op, t, name);
}

inline void check_class_attention_q(const char* op, const at::Tensor& q) {
  SVF_CHECK_ARG(q.dim() == 4, op, "q", "must be 4-D (S, H, N, D), got shape ", q.sizes());
  SVF_CHECK_ARG(at::isFloatingType(q.scalar_type()), op, "q", "must be float64/float32/float16/bfloat16, got ",
                q.scalar_type());
  SVF_CHECK_ARG(q.size(2) >= 1 && q.size(3) >= 1, op, "q", "needs N >= 1 tokens and D >= 1 channels, got shape ",
                q.sizes());
  SVF_CHECK_ARG(q.size(3) <= 1 || q.stride(3) == 1, op, "q", "must have unit stride along D (got strides ",
                q.strides(), "); call .contiguous() or use semivl_fast.ops.class_attention, which does it for you");
}

inline void check_class_attention_forward_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& out, const at::Tensor& lse) {
  constexpr const char* op = "class_attention_forward";
  check_class_attention_q(op, q);
  check_class_attention_view(op, q, k, "k");
  check_class_attention_view(op, q, v, "v");
  check_class_attention_view(op, q, out, "out");
  check_class_attention_rowstat(op, q, lse, "lse");
}

inline void check_class_attention_backward_args(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k,
                                           const at::Tensor& v, const at::Tensor& out, const at::Tensor& lse,
                                           const at::Tensor& grad_q, const at::Tensor& grad_k,
                                           const at::Tensor& grad_v) {
  constexpr const char* op = "class_attention_backward";
  check_class_attention_q(op, q);
  check_class_attention_view(op, q, grad_out, "grad_out");
  check_class_attention_view(op, q, k, "k");
  check_class_attention_view(op, q, v, "v");
  check_class_attention_view(op, q, out, "out");
  check_class_attention_rowstat(op, q, lse, "lse");
  check_class_attention_view(op, q, grad_q, "grad_q");
  check_class_attention_view(op, q, grad_k, "grad_k");
  check_class_attention_view(op, q, grad_v, "grad_v");
}

}  // namespace semivl_fast
