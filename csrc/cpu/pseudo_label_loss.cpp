// CPU kernel of the fused pseudo-label loss: bilinear upsampling of the low-res logits on the fly, teacher softmax
// -> confidence/argmax (CutMix, padding, threshold), student cross-entropy, and the backward straight into the
// student's low-res gradient (the adjoint of the upsampling as a gather per chunk of low-res rows, no atomics).
//
// The class loops are vectorised with at::vec. The extension is compiled without -mavx2, so this translation unit
// compiles the generic kernel (semivl_fast/pseudo_label_loss_cpu_kernel.h) twice: once portable (one lane, any CPU:
// "vec1") and once with at::vec::Vectorized for AVX2+FMA in a target("avx2,fma") region (own at::vec namespace,
// SVF_AVX2): "avx2", chosen at run time by CPUID. A third path, "pixel", runs the CUDA kernels' per-pixel functions
// (pseudo_label_loss_math.h) one pixel at a time: slow, it exists so that the GPU code's math is tested on a CPU.
// SEMIVL_FAST_PSEUDO_LABEL_LOSS_CPU = auto | avx2 | vec1 | pixel chooses (tests run all three).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <type_traits>
#include <vector>

#include "semivl_fast/pseudo_label_loss.h"
#include "semivl_fast/pseudo_label_loss_math.h"

namespace semivl_fast {
namespace pseudo_label_loss_detail {

// Transposes low-res row i of image b of a (B, N, h, w) tensor into dst (w, Np) in the accumulation type; the
// padding lanes [N, Np) of dst are left untouched (zero).
template <typename acc_t>
using LoadRowFn = void (*)(const void* data, int64_t b, int64_t i, int64_t N, int64_t h, int64_t w, int64_t Np,
                           acc_t* dst);
// Writes low-res rows [i_begin, i_end) of image b of the gradient (B, N, h, w) from G ((i_end - i_begin), w, Np).
template <typename acc_t>
using StoreFn = void (*)(const acc_t* G, int64_t b, int64_t i_begin, int64_t i_end, int64_t N, int64_t Np, int64_t h,
                         int64_t w, void* out);

template <typename src_t, typename acc_t>
void load_row(const void* data, int64_t b, int64_t i, int64_t N, int64_t h, int64_t w, int64_t Np, acc_t* dst) {
  const src_t* src = static_cast<const src_t*>(data) + (b * N * h + i) * w;
  const int64_t plane = h * w;
  for (int64_t n = 0; n < N; ++n) {
    const src_t* r = src + n * plane;
    for (int64_t j = 0; j < w; ++j) dst[j * Np + n] = static_cast<acc_t>(r[j]);
  }
}

template <typename out_t, typename acc_t>
void store_grad(const acc_t* G, int64_t b, int64_t i_begin, int64_t i_end, int64_t N, int64_t Np, int64_t h,
                int64_t w, void* out_v) {
  out_t* out = static_cast<out_t*>(out_v);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t i = i_begin; i < i_end; ++i) {
      out_t* o = out + ((b * N + n) * h + i) * w;
      const acc_t* g = G + (i - i_begin) * w * Np + n;
      for (int64_t j = 0; j < w; ++j) o[j] = static_cast<out_t>(g[j * Np]);
    }
  }
}

// One low-res input (student, teacher or CutMix partner) with its horizontal taps to the crop width.
template <typename acc_t>
struct LowRes {
  const void* data = nullptr;
  int64_t h = 0, w = 0;
  LoadRowFn<acc_t> load = nullptr;
  std::vector<LinearTap<acc_t>> xtaps;
};

template <typename acc_t>
LowRes<acc_t> make_lowres(const at::Tensor& t, int64_t W) {
  LowRes<acc_t> r;
  r.data = t.const_data_ptr();
  r.h = t.size(2);
  r.w = t.size(3);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, t.scalar_type(), "pseudo_label_loss_load", [&] {
    r.load = &load_row<scalar_t, acc_t>;
  });
  r.xtaps.resize(W);
  for (int64_t x = 0; x < W; ++x) r.xtaps[x] = linear_tap<acc_t>(x, r.w, W);
  return r;
}

template <typename acc_t>
struct FwdProblem {
  int64_t B, N, Np, H, W;
  LowRes<acc_t> student, teacher, mix;  // teacher.data == nullptr: supervised; mix.data == nullptr: no CutMix
  const int64_t* target = nullptr;
  const int64_t* boxes = nullptr;
  const uint8_t* ignore = nullptr;
  const uint8_t* ignore_mix = nullptr;
  acc_t threshold, scale;
  bool use_threshold;
  acc_t* lse;
  int32_t* code;
  double* rows;
};

template <typename acc_t>
struct BwdProblem {
  int64_t B, N, Np, H, W;
  LowRes<acc_t> student;
  const acc_t* lse;
  const int32_t* code;
  const acc_t* gscale;
  StoreFn<acc_t> store;
  void* grad;
};

// ---- portable path: one lane ----
namespace portable {

template <typename T>
struct ScalarVec {
  T v;
  static constexpr int64_t size() { return 1; }
  ScalarVec() = default;
  ScalarVec(T x) : v(x) {}  // NOLINT: broadcast, like at::vec::Vectorized
  static ScalarVec loadu(const T* p) { return ScalarVec(*p); }
  void store(T* p) const { *p = v; }
  friend ScalarVec operator+(ScalarVec a, ScalarVec b) { return a.v + b.v; }
  friend ScalarVec operator-(ScalarVec a, ScalarVec b) { return a.v - b.v; }
  friend ScalarVec operator*(ScalarVec a, ScalarVec b) { return a.v * b.v; }
};
template <typename T>
using Vec = ScalarVec<T>;
template <typename T>
inline Vec<T> vmax(Vec<T> a, Vec<T> b) { return b.v > a.v ? b : a; }
template <typename T>
inline Vec<T> vexp(Vec<T> a) { return std::exp(a.v); }
template <typename T>
inline T hmax(Vec<T> a) { return a.v; }
template <typename T>
inline T hsum(Vec<T> a) { return a.v; }
template <typename T>
inline int first_equal(Vec<T> a, T m) { return a.v == m ? 0 : -1; }

#include "semivl_fast/pseudo_label_loss_cpu_kernel.h"

}  // namespace portable
}  // namespace pseudo_label_loss_detail
}  // namespace semivl_fast

// ---- AVX2 + FMA path: at::vec compiled for AVX2 in this region only ----
#if (defined(__x86_64__) || defined(_M_X64)) && (defined(__GNUC__) || defined(__clang__))
#define SVF_PSEUDO_LABEL_LOSS_AVX2 1
// The ISA-independent headers that at::vec pulls in, included first so that their inline functions are compiled
// for the baseline target (the linker may pick any TU's copy of an inline function: none may be an AVX2 one).
#include <ATen/AccumulateType.h>
#include <ATen/NumericUtils.h>
#include <ATen/native/Math.h>
#include <ATen/native/quantized/AffineQuantizerBase.h>
#include <c10/util/BFloat16-math.h>
#include <c10/util/MathConstants.h>
#include <c10/util/copysign.h>
#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma,f16c"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
#endif
// The target region does not define the ISA macros that sleef.h and at::vec test, so define them here (undone
// below); CPU_CAPABILITY names the inline namespace of at::vec, unique to this file so that nothing links against
// libtorch's own AVX2 instantiations.
#pragma push_macro("__AVX__")
#pragma push_macro("__AVX2__")
#pragma push_macro("__FMA__")
#pragma push_macro("__F16C__")
#ifndef __AVX__
#define __AVX__ 1
#endif
#ifndef __AVX2__
#define __AVX2__ 1
#endif
#ifndef __FMA__
#define __FMA__ 1
#endif
#ifndef __F16C__
#define __F16C__ 1
#endif
#define CPU_CAPABILITY SVF_AVX2
#define CPU_CAPABILITY_AVX2
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // at::vec's unused BFloat16 lambdas
#include <ATen/cpu/vec/vec.h>
#pragma GCC diagnostic pop

namespace semivl_fast {
namespace pseudo_label_loss_detail {
namespace avx2 {

template <typename T>
using Vec = at::vec::Vectorized<T>;
template <typename T>
inline Vec<T> vmax(const Vec<T>& a, const Vec<T>& b) { return at::vec::maximum(a, b); }
inline Vec<float> vexp(const Vec<float>& a) { return a.exp_u20(); }  // like ATen's own softmax kernels
inline Vec<double> vexp(const Vec<double>& a) { return a.exp(); }
// Horizontal reductions through memory: lambdas would not inherit the target region (GCC), so no vec_reduce_all.
template <typename T>
inline T hmax(const Vec<T>& a) {
  T lanes[Vec<T>::size()];
  a.store(lanes);
  T m = lanes[0];
  for (int64_t k = 1; k < Vec<T>::size(); ++k) m = lanes[k] > m ? lanes[k] : m;
  return m;
}
template <typename T>
inline T hsum(const Vec<T>& a) {
  T lanes[Vec<T>::size()];
  a.store(lanes);
  T s = lanes[0];
  for (int64_t k = 1; k < Vec<T>::size(); ++k) s += lanes[k];
  return s;
}
template <typename T>
inline int first_equal(const Vec<T>& a, T m) {
  const int mask = (a - Vec<T>(m)).zero_mask();
  return mask == 0 ? -1 : __builtin_ctz(mask);
}

#include "semivl_fast/pseudo_label_loss_cpu_kernel.h"

// LoadRowFn for float32 sources: 8x8 register transposes instead of strided scalar stores.
inline void load_row_f32(const void* data, int64_t b, int64_t i, int64_t N, int64_t h, int64_t w, int64_t Np,
                         float* dst) {
  const float* src = static_cast<const float*>(data) + (b * N * h + i) * w;
  const int64_t plane = h * w, n8 = N / 8 * 8, w8 = w / 8 * 8;
  for (int64_t n = 0; n < n8; n += 8) {
    for (int64_t j = 0; j < w8; j += 8)
      at::vec::transpose_mxn<float, 8, 8>(src + n * plane + j, plane, dst + j * Np + n, Np);
    for (int64_t k = n; k < n + 8; ++k)
      for (int64_t j = w8; j < w; ++j) dst[j * Np + k] = src[k * plane + j];
  }
  for (int64_t k = n8; k < N; ++k)
    for (int64_t j = 0; j < w; ++j) dst[j * Np + k] = src[k * plane + j];
}

}  // namespace avx2
}  // namespace pseudo_label_loss_detail
}  // namespace semivl_fast

#undef CPU_CAPABILITY
#undef CPU_CAPABILITY_AVX2
#pragma pop_macro("__F16C__")
#pragma pop_macro("__FMA__")
#pragma pop_macro("__AVX2__")
#pragma pop_macro("__AVX__")
#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif
#endif  // x86-64

namespace semivl_fast {
namespace pseudo_label_loss_detail {
namespace {

// Which CPU path runs: SEMIVL_FAST_PSEUDO_LABEL_LOSS_CPU = auto (default: avx2 where the CPU has AVX2+FMA, else vec1),
// avx2, vec1 (the generic kernel with one lane) or pixel (the CUDA kernels' per-pixel / per-element functions).
enum class CpuPath { kAvx2, kVec1, kPixel };

bool cpu_has_avx2() {
#ifdef SVF_PSEUDO_LABEL_LOSS_AVX2
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

CpuPath cpu_path() {
  const char* env = std::getenv("SEMIVL_FAST_PSEUDO_LABEL_LOSS_CPU");
  const std::string v = env == nullptr || *env == 0 ? "auto" : env;
  if (v == "pixel") return CpuPath::kPixel;
  if (v == "vec1") return CpuPath::kVec1;
  TORCH_CHECK(v == "auto" || v == "avx2", kPseudoLabelLossOp,
              ": SEMIVL_FAST_PSEUDO_LABEL_LOSS_CPU must be auto, avx2, vec1 or pixel, got '", v, "'");
  return cpu_has_avx2() ? CpuPath::kAvx2 : CpuPath::kVec1;
}

// The SIMD path's faster row loader where it has one (float32 inputs, float accumulation).
template <typename acc_t>
void use_fast_load(LowRes<acc_t>& src, const at::Tensor& t, bool simd) {
#ifdef SVF_PSEUDO_LABEL_LOSS_AVX2
  if constexpr (std::is_same_v<acc_t, float>) {
    if (simd && t.scalar_type() == at::kFloat) src.load = &avx2::load_row_f32;
  }
#endif
}

template <typename acc_t>
int64_t lanes(bool simd) {
#ifdef SVF_PSEUDO_LABEL_LOSS_AVX2
  if (simd) return avx2::Vec<acc_t>::size();
#endif
  return 1;
}

constexpr int64_t kForwardRowsPerTask = 32;   // high-res rows: each cached low-res row serves ~4 of them (scale 4)
constexpr int64_t kBackwardRowsPerTask = 8;   // low-res rows: 2 recomputed edge rows per ~32 high-res rows

template <typename acc_t>
void forward_impl(const at::Tensor& student, int64_t H, int64_t W, const c10::optional<at::Tensor>& target,
                  const c10::optional<at::Tensor>& teacher, const c10::optional<at::Tensor>& teacher_mix,
                  const c10::optional<at::Tensor>& boxes, const c10::optional<at::Tensor>& ignore,
                  const c10::optional<at::Tensor>& ignore_mix, double threshold, double scale, bool use_threshold,
                  at::Tensor& lse, at::Tensor& code, at::Tensor& rows) {
  const bool simd = cpu_path() == CpuPath::kAvx2;
  FwdProblem<acc_t> P;
  P.B = student.size(0);
  P.N = student.size(1);
  const int64_t L = lanes<acc_t>(simd);
  P.Np = (P.N + L - 1) / L * L;
  P.H = H;
  P.W = W;
  P.student = make_lowres<acc_t>(student, W);
  use_fast_load(P.student, student, simd);
  if (teacher.has_value()) {
    P.teacher = make_lowres<acc_t>(*teacher, W);
    use_fast_load(P.teacher, *teacher, simd);
  }
  if (teacher_mix.has_value()) {
    P.mix = make_lowres<acc_t>(*teacher_mix, W);
    use_fast_load(P.mix, *teacher_mix, simd);
  }
  if (target.has_value()) P.target = target->const_data_ptr<int64_t>();
  if (boxes.has_value()) P.boxes = boxes->const_data_ptr<int64_t>();
  if (ignore.has_value()) P.ignore = static_cast<const uint8_t*>(ignore->const_data_ptr());
  if (ignore_mix.has_value()) P.ignore_mix = static_cast<const uint8_t*>(ignore_mix->const_data_ptr());
  P.threshold = static_cast<acc_t>(threshold);
  P.scale = static_cast<acc_t>(scale);
  P.use_threshold = use_threshold;
  P.lse = lse.mutable_data_ptr<acc_t>();
  P.code = code.mutable_data_ptr<int32_t>();
  P.rows = rows.mutable_data_ptr<double>();
  const int64_t per_image = (H + kForwardRowsPerTask - 1) / kForwardRowsPerTask;
  at::parallel_for(0, P.B * per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / per_image, y0 = (task % per_image) * kForwardRowsPerTask;
      const int64_t y1 = std::min(H, y0 + kForwardRowsPerTask);
#ifdef SVF_PSEUDO_LABEL_LOSS_AVX2
      if (simd) {
        avx2::forward_rows(P, b, y0, y1);
        continue;
      }
#endif
      portable::forward_rows(P, b, y0, y1);
    }
  });
}

template <typename acc_t>
void backward_impl(const at::Tensor& student, const at::Tensor& lse, const at::Tensor& code, const at::Tensor& gscale,
                   at::Tensor& grad) {
  const bool simd = cpu_path() == CpuPath::kAvx2;
  BwdProblem<acc_t> P;
  P.B = student.size(0);
  P.N = student.size(1);
  const int64_t L = lanes<acc_t>(simd);
  P.Np = (P.N + L - 1) / L * L;
  P.H = lse.size(1);
  P.W = lse.size(2);
  P.student = make_lowres<acc_t>(student, P.W);
  use_fast_load(P.student, student, simd);
  P.lse = lse.const_data_ptr<acc_t>();
  P.code = code.const_data_ptr<int32_t>();
  P.gscale = gscale.const_data_ptr<acc_t>();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, grad.scalar_type(), "pseudo_label_loss_store", [&] {
    P.store = &store_grad<scalar_t, acc_t>;
  });
  P.grad = grad.mutable_data_ptr();
  const int64_t h = student.size(2);
  const int64_t per_image = (h + kBackwardRowsPerTask - 1) / kBackwardRowsPerTask;
  at::parallel_for(0, P.B * per_image, 1, [&](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / per_image, i0 = (task % per_image) * kBackwardRowsPerTask;
      const int64_t i1 = std::min(h, i0 + kBackwardRowsPerTask);
#ifdef SVF_PSEUDO_LABEL_LOSS_AVX2
      if (simd) {
        avx2::backward_rows(P, b, i0, i1);
        continue;
      }
#endif
      portable::backward_rows(P, b, i0, i1);
    }
  });
}

// ---- per-pixel path: the CUDA kernels' bodies (pseudo_label_loss_math.h), one pixel / one gradient element at a time.
template <typename scalar_t, typename tscalar_t>
void forward_pixel_impl(const at::Tensor& student, int64_t H, int64_t W, const c10::optional<at::Tensor>& target,
                        const at::Tensor& te, const at::Tensor& mx, const c10::optional<at::Tensor>& boxes,
                        const c10::optional<at::Tensor>& ignore, const c10::optional<at::Tensor>& ignore_mix,
                        double threshold, double scale, bool use_threshold, at::Tensor& lse, at::Tensor& code,
                        at::Tensor& rows) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = student.size(0), N = student.size(1), hs = student.size(2), ws = student.size(3);
  const int64_t ht = te.defined() ? te.size(2) : 1, wt = te.defined() ? te.size(3) : 1;
  const int64_t hm = mx.defined() ? mx.size(2) : 1, wm = mx.defined() ? mx.size(3) : 1;
  const scalar_t* s = student.const_data_ptr<scalar_t>();
  const tscalar_t* t = te.defined() ? te.const_data_ptr<tscalar_t>() : nullptr;
  const tscalar_t* m = mx.defined() ? mx.const_data_ptr<tscalar_t>() : nullptr;
  const int64_t* tgt = target.has_value() ? target->const_data_ptr<int64_t>() : nullptr;
  const int64_t* bx = boxes.has_value() ? boxes->const_data_ptr<int64_t>() : nullptr;
  const uint8_t* ig = ignore.has_value() ? static_cast<const uint8_t*>(ignore->const_data_ptr()) : nullptr;
  const uint8_t* igm = ignore_mix.has_value() ? static_cast<const uint8_t*>(ignore_mix->const_data_ptr()) : nullptr;
  acc_t* lse_p = lse.mutable_data_ptr<acc_t>();
  int32_t* code_p = code.mutable_data_ptr<int32_t>();
  double* rows_p = rows.mutable_data_ptr<double>();
  at::parallel_for(0, B * H, 1, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / H, y = row % H;
      double sums[kRowSums] = {0, 0, 0, 0};
      for (int64_t x = 0; x < W; ++x) {
        const int64_t pix = row * W + x;
        const int64_t label = tgt != nullptr ? tgt[pix] : 0;
        TORCH_CHECK(label_in_range(label, N), kPseudoLabelLossOp, ": argument 'target' has label ", label, " at (",
                    b, ", ", y, ", ", x, "); labels must be in [0, ", N, ") or ", kIgnoreIndex, " (ignore)");
        const auto r = pseudo_label_loss_pixel<acc_t>(
            y, x, N, H, W, s + b * N * hs * ws, hs, ws, t == nullptr ? nullptr : t + b * N * ht * wt, ht, wt,
            m == nullptr ? nullptr : m + b * N * hm * wm, hm, wm, bx == nullptr ? nullptr : bx + 4 * b, label,
            ig != nullptr && ig[pix] != 0, igm != nullptr && igm[pix] != 0, use_threshold,
            static_cast<acc_t>(threshold), static_cast<acc_t>(scale));
        sums[0] += double(r.ce);
        sums[1] += r.target.valid;
        sums[2] += r.target.accepted;
        sums[3] += r.target.valid ? double(r.target.conf) : 0.0;
        lse_p[pix] = r.lse;
        code_p[pix] = r.target.accepted ? static_cast<int32_t>(r.target.label) : -1;
      }
      for (int k = 0; k < kRowSums; ++k) rows_p[row * kRowSums + k] = sums[k];
    }
  });
}

void forward_pixel(const at::Tensor& student, int64_t H, int64_t W, const c10::optional<at::Tensor>& target,
                   const c10::optional<at::Tensor>& teacher, const c10::optional<at::Tensor>& teacher_mix,
                   const c10::optional<at::Tensor>& boxes, const c10::optional<at::Tensor>& ignore,
                   const c10::optional<at::Tensor>& ignore_mix, double threshold, double scale, bool use_threshold,
                   at::Tensor& lse, at::Tensor& code, at::Tensor& rows) {
  // Like the CUDA launcher: teachers in the student's dtype, or cast to the accumulation dtype when they differ.
  at::Tensor te, mx;
  bool same = true;
  if (teacher.has_value()) {
    te = *teacher;
    if (teacher_mix.has_value()) mx = *teacher_mix;
    same = te.scalar_type() == student.scalar_type() && (!mx.defined() || mx.scalar_type() == student.scalar_type());
    if (!same) {
      te = te.to(pseudo_label_loss_acc_type(student));
      if (mx.defined()) mx = mx.to(pseudo_label_loss_acc_type(student));
    }
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "pseudo_label_loss_pixel", [&] {
    if (same) {
      forward_pixel_impl<scalar_t, scalar_t>(student, H, W, target, te, mx, boxes, ignore, ignore_mix, threshold,
                                             scale, use_threshold, lse, code, rows);
    } else {
      forward_pixel_impl<scalar_t, at::opmath_type<scalar_t>>(student, H, W, target, te, mx, boxes, ignore,
                                                              ignore_mix, threshold, scale, use_threshold, lse, code,
                                                              rows);
    }
  });
}

void backward_pixel(const at::Tensor& student, const at::Tensor& lse, const at::Tensor& code,
                    const at::Tensor& gscale, at::Tensor& grad) {
  const int64_t B = student.size(0), N = student.size(1), h = student.size(2), w = student.size(3);
  const int64_t H = lse.size(1), W = lse.size(2);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, student.scalar_type(), "pseudo_label_loss_grad", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* s = student.const_data_ptr<scalar_t>();
    const acc_t* l = lse.const_data_ptr<acc_t>();
    const int32_t* c = code.const_data_ptr<int32_t>();
    const acc_t* gs = gscale.const_data_ptr<acc_t>();
    scalar_t* g = grad.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, B * N, 1, [&](int64_t begin, int64_t end) {
      for (int64_t bn = begin; bn < end; ++bn) {
        const int64_t b = bn / N, n = bn % N;
        for (int64_t i = 0; i < h; ++i) {
          for (int64_t j = 0; j < w; ++j) {
            const acc_t v = pseudo_label_loss_grad_element<acc_t>(n, i, j, h, w, H, W, s + bn * h * w,
                                                                  l + b * H * W, c + b * H * W);
            g[(bn * h + i) * w + j] = static_cast<scalar_t>(v * gs[b]);
          }
        }
      }
    });
  });
}

void forward_cpu(const at::Tensor& student, int64_t H, int64_t W, const c10::optional<at::Tensor>& target,
                 const c10::optional<at::Tensor>& teacher, const c10::optional<at::Tensor>& teacher_mix,
                 const c10::optional<at::Tensor>& boxes, const c10::optional<at::Tensor>& ignore,
                 const c10::optional<at::Tensor>& ignore_mix, double threshold, double scale, bool use_threshold,
                 at::Tensor& lse, at::Tensor& code, at::Tensor& rows) {
  pseudo_label_loss_check_forward_args(student, H, W, target, teacher, teacher_mix, boxes, ignore, ignore_mix, lse,
                                       code, rows);
  if (cpu_path() == CpuPath::kPixel) {
    forward_pixel(student, H, W, target, teacher, teacher_mix, boxes, ignore, ignore_mix, threshold, scale,
                  use_threshold, lse, code, rows);
  } else if (student.scalar_type() == at::kDouble) {
    forward_impl<double>(student, H, W, target, teacher, teacher_mix, boxes, ignore, ignore_mix, threshold, scale,
                         use_threshold, lse, code, rows);
  } else {
    forward_impl<float>(student, H, W, target, teacher, teacher_mix, boxes, ignore, ignore_mix, threshold, scale,
                        use_threshold, lse, code, rows);
  }
}

void backward_cpu(const at::Tensor& student, const at::Tensor& lse, const at::Tensor& code, const at::Tensor& gscale,
                  at::Tensor& grad) {
  pseudo_label_loss_check_backward_args(student, lse, code, gscale, grad);
  if (cpu_path() == CpuPath::kPixel) {
    backward_pixel(student, lse, code, gscale, grad);
  } else if (student.scalar_type() == at::kDouble) {
    backward_impl<double>(student, lse, code, gscale, grad);
  } else {
    backward_impl<float>(student, lse, code, gscale, grad);
  }
}

std::string cpu_path_name() {
  switch (cpu_path()) {
    case CpuPath::kAvx2: return "avx2";
    case CpuPath::kVec1: return "vec1";
    default: return "pixel";
  }
}

}  // namespace
}  // namespace pseudo_label_loss_detail

TORCH_LIBRARY_IMPL(semivl_fast_C, CPU, m) {
  m.impl("pseudo_label_loss_forward_", &pseudo_label_loss_detail::forward_cpu);
  m.impl("pseudo_label_loss_backward_", &pseudo_label_loss_detail::backward_cpu);
}

// No tensor arguments, so no device to dispatch on: the kernel serves every dispatch key.
TORCH_LIBRARY_IMPL(semivl_fast_C, CompositeImplicitAutograd, m) {
  m.impl("pseudo_label_loss_cpu_path", &pseudo_label_loss_detail::cpu_path_name);
}

}  // namespace semivl_fast
