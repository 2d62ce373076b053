// CPU kernels of class attention: softmax(scale * Q K^T) V over many short sequences, forward and backward.
//
// One task = one (sequence, head) problem; at::parallel_for splits the S*H problems over the threads. Each problem's
// operands are read and written in place through the views' row strides when they are float32/float64 with D a
// multiple of the vector width (the decoder's case: D = 64); otherwise they are packed into aligned per-thread scratch
// (half/bfloat16 converted to float, D padded with zeros) and unpacked after. The per-problem math is in
// class_attention_cpu_kernel.h; scores and probabilities live in scratch, never in memory the size of S*H*N*N. The
// math header is compiled three times (AVX-512, AVX2+FMA, SSE2/NEON baseline) through GCC target regions, because
// the extension is built without -march flags; the widest one the CPU supports runs (SEMIVL_FAST_CPU_ISA =
// generic|avx2|avx512 caps it, for tests and comparisons).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <string>
#include <type_traits>

#include "semivl_fast/class_attention.h"

namespace semivl_fast {

namespace ca_generic {  // SSE2 on x86-64, NEON on aarch64: 16-byte vectors
#define SVF_CA_VBYTES 16
#define SVF_CA_MR 4
#define SVF_CA_NV 2
#include "semivl_fast/class_attention_cpu_kernel.h"
#undef SVF_CA_VBYTES
#undef SVF_CA_MR
#undef SVF_CA_NV
}  // namespace ca_generic

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define SVF_CA_X86 1

namespace ca_avx2 {  // 16 ymm registers: 6 x 2 accumulators + 2 B vectors + 1 broadcast
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif
#define SVF_CA_VBYTES 32
#define SVF_CA_MR 6
#define SVF_CA_NV 2
#include "semivl_fast/class_attention_cpu_kernel.h"
#undef SVF_CA_VBYTES
#undef SVF_CA_MR
#undef SVF_CA_NV
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
}  // namespace ca_avx2

namespace ca_avx512 {  // 32 zmm registers: 6 x 4 accumulators + 4 B vectors + 1 broadcast
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma"))), \
                             apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512dq,avx512bw,avx2,fma")
#endif
#define SVF_CA_VBYTES 64
#define SVF_CA_MR 6
#define SVF_CA_NV 4
#include "semivl_fast/class_attention_cpu_kernel.h"
#undef SVF_CA_VBYTES
#undef SVF_CA_MR
#undef SVF_CA_NV
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
}  // namespace ca_avx512
#endif

namespace {

enum class Isa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };

Isa best_isa() {
#ifdef SVF_CA_X86
  static const Isa best = [] {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
        __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512bw"))
      return Isa::kAvx512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return Isa::kAvx2;
    return Isa::kGeneric;
  }();
  return best;
#else
  return Isa::kGeneric;
#endif
}

// The widest instruction set the CPU has, capped by SEMIVL_FAST_CPU_ISA (read on every call: tests switch it).
Isa cpu_isa() {
  const char* env = std::getenv("SEMIVL_FAST_CPU_ISA");
  if (env == nullptr || *env == '\0') return best_isa();
  const std::string want(env);
  Isa cap;
  if (want == "generic") {
    cap = Isa::kGeneric;
  } else if (want == "avx2") {
    cap = Isa::kAvx2;
  } else if (want == "avx512" || want == "auto") {
    cap = Isa::kAvx512;
  } else {
    TORCH_CHECK(false, "SEMIVL_FAST_CPU_ISA must be one of generic, avx2, avx512, auto; got '", want, "'");
  }
  return static_cast<Isa>(std::min(static_cast<int>(cap), static_cast<int>(best_isa())));
}

template <typename T>
struct ProblemKernels {
  int64_t lanes;
  void (*fwd)(int64_t, int64_t, int64_t, int64_t, T, Rows<const T>, Rows<const T>, Rows<const T>, T*, T*, T*, T*,
              Rows<T>, T*);
  void (*bwd)(int64_t, int64_t, int64_t, int64_t, T, Rows<const T>, Rows<const T>, Rows<const T>, Rows<const T>,
              Rows<const T>, const T*, T*, T*, T*, T*, T*, Rows<T>, Rows<T>, Rows<T>);
};

template <typename T>
ProblemKernels<T> problem_kernels(Isa isa) {
#ifdef SVF_CA_X86
  if (isa == Isa::kAvx512)
    return {ca_avx512::kLanes<T>, &ca_avx512::forward_problem<T>, &ca_avx512::backward_problem<T>};
  if (isa == Isa::kAvx2) return {ca_avx2::kLanes<T>, &ca_avx2::forward_problem<T>, &ca_avx2::backward_problem<T>};
#endif
  (void)isa;
  return {ca_generic::kLanes<T>, &ca_generic::forward_problem<T>, &ca_generic::backward_problem<T>};
}

int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

// Per-thread scratch: 64-byte aligned, carved into blocks that each start on a 64-byte boundary.
template <typename T>
class Scratch {
 public:
  explicit Scratch(int64_t elems)
      : data_(static_cast<T*>(::operator new[](static_cast<size_t>(elems) * sizeof(T), std::align_val_t(64)))) {}
  ~Scratch() { ::operator delete[](data_, std::align_val_t(64)); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;
  T* take(int64_t n) {
    T* p = data_ + used_;
    used_ += round_up(n, 64 / static_cast<int64_t>(sizeof(T)));
    return p;
  }
  static int64_t size_of(std::initializer_list<int64_t> blocks) {
    int64_t total = 0;
    for (int64_t n : blocks) total += round_up(n, 64 / static_cast<int64_t>(sizeof(T)));
    return total;
  }

 private:
  T* data_;
  int64_t used_ = 0;
};

// Rows n < N of a (N, D) view with row stride `stride` -> dst (N x Dp), zero columns D..Dp.
template <typename scalar_t, typename acc_t>
void pack_rows(const scalar_t* src, int64_t stride, int64_t N, int64_t D, int64_t Dp, acc_t* dst) {
  for (int64_t n = 0; n < N; ++n) {
    const scalar_t* s = src + n * stride;
    acc_t* d = dst + n * Dp;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      std::memcpy(d, s, static_cast<size_t>(D) * sizeof(acc_t));
    } else {
      for (int64_t c = 0; c < D; ++c) d[c] = static_cast<acc_t>(s[c]);
    }
    for (int64_t c = D; c < Dp; ++c) d[c] = acc_t(0);
  }
}

template <typename scalar_t, typename acc_t>
void unpack_rows(const acc_t* src, int64_t N, int64_t D, int64_t Dp, scalar_t* dst, int64_t stride) {
  for (int64_t n = 0; n < N; ++n) {
    const acc_t* s = src + n * Dp;
    scalar_t* d = dst + n * stride;
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      std::memcpy(d, s, static_cast<size_t>(D) * sizeof(acc_t));
    } else {
      for (int64_t c = 0; c < D; ++c) d[c] = static_cast<scalar_t>(s[c]);
    }
  }
}

// An input operand as the math reads it: the tensor's own rows when no conversion or padding is needed (float32 /
// float64 with D a multiple of the vector width), else packed into scratch.
template <typename scalar_t, typename acc_t>
Rows<const acc_t> input_rows(const scalar_t* src, int64_t ld, int64_t N, int64_t D, int64_t Dp, acc_t* scratch) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (D == Dp) return {src, ld};
  }
  pack_rows(src, ld, N, D, Dp, scratch);
  return {scratch, Dp};
}

// An output operand: written in place under the same condition, else into scratch and unpacked by finish_output.
template <typename scalar_t, typename acc_t>
Rows<acc_t> output_rows(scalar_t* dst, int64_t ld, int64_t D, int64_t Dp, acc_t* scratch) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (D == Dp) return {dst, ld};
  }
  return {scratch, Dp};
}

template <typename scalar_t, typename acc_t>
void finish_output(Rows<acc_t> rows, scalar_t* dst, int64_t ld, int64_t N, int64_t D, int64_t Dp) {
  if (static_cast<const void*>(rows.p) != static_cast<const void*>(dst)) unpack_rows(rows.p, N, D, Dp, dst, ld);
}

// Base pointer and row stride of problem (s, h) of a (S, H, N, D) view.
template <typename P>
struct View4 {
  P* base;
  int64_t s0, s1, s2;
  View4(P* b, const at::Tensor& t) : base(b), s0(t.stride(0)), s1(t.stride(1)), s2(t.stride(2)) {}
  P* at(int64_t s, int64_t h) const { return base + s * s0 + h * s1; }
};

template <typename scalar_t>
void forward_cpu_kernel(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale,
                        at::Tensor& out, at::Tensor& lse) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t S = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const auto kern = problem_kernels<acc_t>(cpu_isa());
  const int64_t Dp = round_up(D, kern.lanes), Np = round_up(N, kern.lanes);
  const View4<const scalar_t> qv(q.const_data_ptr<scalar_t>(), q), kv(k.const_data_ptr<scalar_t>(), k),
      vv(v.const_data_ptr<scalar_t>(), v);
  const View4<scalar_t> ov(out.mutable_data_ptr<scalar_t>(), out);
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  const int64_t elems = Scratch<acc_t>::size_of({N * Dp, N * Dp, N * Dp, Dp * Np, N * Np, N, N, N * Dp});

  at::parallel_for(0, S * H, 1, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> buf(elems);
    acc_t *bq = buf.take(N * Dp), *bk = buf.take(N * Dp), *bv = buf.take(N * Dp), *kt = buf.take(Dp * Np),
          *p = buf.take(N * Np), *rowmax = buf.take(N), *rowsum = buf.take(N), *bo = buf.take(N * Dp);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t s = idx / H, h = idx % H;
      const auto o = output_rows(ov.at(s, h), ov.s2, D, Dp, bo);
      kern.fwd(N, D, Dp, Np, static_cast<acc_t>(scale), input_rows(qv.at(s, h), qv.s2, N, D, Dp, bq),
               input_rows(kv.at(s, h), kv.s2, N, D, Dp, bk), input_rows(vv.at(s, h), vv.s2, N, D, Dp, bv), kt, p,
               rowmax, rowsum, o, lse_p + idx * N);
      finish_output(o, ov.at(s, h), ov.s2, N, D, Dp);
    }
  });
}

template <typename scalar_t>
void backward_cpu_kernel(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                         const at::Tensor& out, const at::Tensor& lse, double scale, at::Tensor& grad_q,
                         at::Tensor& grad_k, at::Tensor& grad_v) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t S = q.size(0), H = q.size(1), N = q.size(2), D = q.size(3);
  const auto kern = problem_kernels<acc_t>(cpu_isa());
  const int64_t Dp = round_up(D, kern.lanes), Np = round_up(N, kern.lanes);
  const View4<const scalar_t> qv(q.const_data_ptr<scalar_t>(), q), kv(k.const_data_ptr<scalar_t>(), k),
      vv(v.const_data_ptr<scalar_t>(), v), ov(out.const_data_ptr<scalar_t>(), out),
      gov(grad_out.const_data_ptr<scalar_t>(), grad_out);
  const View4<scalar_t> gqv(grad_q.mutable_data_ptr<scalar_t>(), grad_q),
      gkv(grad_k.mutable_data_ptr<scalar_t>(), grad_k), gvv(grad_v.mutable_data_ptr<scalar_t>(), grad_v);
  const acc_t* lse_p = lse.const_data_ptr<acc_t>();
  const int64_t elems = Scratch<acc_t>::size_of(
      {N * Dp, N * Dp, N * Dp, N * Dp, N * Dp, N, Dp * Np, Dp * Np, N * Np, N * Np, N * Dp, N * Dp, N * Dp});

  at::parallel_for(0, S * H, 1, [&](int64_t begin, int64_t end) {
    Scratch<acc_t> buf(elems);
    acc_t *bq = buf.take(N * Dp), *bk = buf.take(N * Dp), *bv = buf.take(N * Dp), *bo = buf.take(N * Dp),
          *bdo = buf.take(N * Dp), *delta = buf.take(N), *kt = buf.take(Dp * Np), *vt = buf.take(Dp * Np),
          *p = buf.take(N * Np), *ds = buf.take(N * Np), *dq = buf.take(N * Dp), *dk = buf.take(N * Dp),
          *dv = buf.take(N * Dp);
    for (int64_t idx = begin; idx < end; ++idx) {
      const int64_t s = idx / H, h = idx % H;
      const auto gq = output_rows(gqv.at(s, h), gqv.s2, D, Dp, dq), gk = output_rows(gkv.at(s, h), gkv.s2, D, Dp, dk),
                 gv = output_rows(gvv.at(s, h), gvv.s2, D, Dp, dv);
      kern.bwd(N, D, Dp, Np, static_cast<acc_t>(scale), input_rows(qv.at(s, h), qv.s2, N, D, Dp, bq),
               input_rows(kv.at(s, h), kv.s2, N, D, Dp, bk), input_rows(vv.at(s, h), vv.s2, N, D, Dp, bv),
               input_rows(ov.at(s, h), ov.s2, N, D, Dp, bo), input_rows(gov.at(s, h), gov.s2, N, D, Dp, bdo),
               lse_p + idx * N, delta, kt, vt, p, ds, gq, gk, gv);
      finish_output(gq, gqv.at(s, h), gqv.s2, N, D, Dp);
      finish_output(gk, gkv.at(s, h), gkv.s2, N, D, Dp);
      finish_output(gv, gvv.at(s, h), gvv.s2, N, D, Dp);
    }
  });
}

void forward_cpu(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, double scale, at::Tensor& out,
                 at::Tensor& lse) {
  check_class_attention_forward_args(q, k, v, out, lse);
  if (q.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "class_attention_forward_cpu", [&] {
    forward_cpu_kernel<scalar_t>(q, k, v, scale, out, lse);
  });
}

void backward_cpu(const at::Tensor& grad_out, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                  const at::Tensor& out, const at::Tensor& lse, double scale, at::Tensor& grad_q, at::Tensor& grad_k,
                  at::Tensor& grad_v) {
  check_class_attention_backward_args(grad_out, q, k, v, out, lse, grad_q, grad_k, grad_v);
  if (q.numel() == 0) return;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, q.scalar_type(), "class_attention_backward_cpu", [&] {
    backward_cpu_kernel<scalar_t>(grad_out, q, k, v, out, lse, scale, grad_q, grad_k, grad_v);
  });
}

std::string cpu_isa_name() {
  switch (cpu_isa()) {
    case Isa::kAvx512: return "avx512";
    case Isa::kAvx2: return "avx2";
    default: return "generic";
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(semivl_fast_C, CPU, m) {
  m.impl("class_attention_forward_", &forward_cpu);
  m.impl("class_attention_backward_", &backward_cpu);
}

// No tensor arguments, so no device to dispatch on: the kernel serves every dispatch key.
TORCH_LIBRARY_IMPL(semivl_fast_C, CompositeImplicitAutograd, m) {
  m.impl("class_attention_cpu_isa", &cpu_isa_name);
}

}  // namespace semivl_fast
