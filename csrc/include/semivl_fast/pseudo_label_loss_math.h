// Per-pixel math of the fused pseudo-label loss, shared verbatim by the C++ CPU kernel
// (csrc/cpu/pseudo_label_loss.cpp) and the CUDA kernel (csrc/cuda/pseudo_label_loss.cu): bilinear taps, an online
// softmax over the classes (teacher confidence and argmax, student logsumexp), per-pixel targets and cross-entropy.
#pragma once

#include <cmath>
#include <cstdint>

#include "semivl_fast/macros.h"

namespace semivl_fast {

// Online softmax over the classes of one pixel: one pass keeps the running maximum m of the logits and the running
// sum s = sum_c exp(x_c - m); the maximum probability (the confidence) is then 1 / s and the logsumexp m + log s.
template <typename acc_t>
struct SoftmaxMaxState {
  acc_t max;       // running maximum of the logits
  acc_t sum;       // running sum of exp(x - max)
  int64_t argmax;  // index of the running maximum (first index on ties)
};

template <typename acc_t>
SVF_HD SoftmaxMaxState<acc_t> softmax_max_init() {
  return {-INFINITY, acc_t(0), 0};
}

// Adds class `c` with logit `v` to the state.
template <typename acc_t>
SVF_HD void softmax_max_update(SoftmaxMaxState<acc_t>& st, acc_t v, int64_t c) {
  if (v > st.max) {
    st.sum = st.sum * ::exp(st.max - v) + acc_t(1);
    st.max = v;
    st.argmax = c;
  } else {
    st.sum += ::exp(v - st.max);
  }
}

constexpr int64_t kIgnoreIndex = 255;

// The two source taps of one output index of a bilinear resize (align_corners=False, output size given): PyTorch's
// upsample_bilinear2d rule in the accumulation type: real = max(in/out * (o + 0.5) - 0.5, 0), i0 = min(floorf(real),
// in - 1), l1 = clamp(real - i0, 0, 1), i1 = i0 + (i0 < in - 1), l0 = 1 - l1. Same size: copy.
template <typename acc_t>
struct LinearTap {
  int64_t i0, i1;
  acc_t l0, l1;
};

template <typename acc_t>
SVF_HD LinearTap<acc_t> linear_tap(int64_t out_index, int64_t in_size, int64_t out_size) {
  if (in_size == out_size) return {out_index, out_index, acc_t(1), acc_t(0)};
  const acc_t ratio = static_cast<acc_t>(in_size) / static_cast<acc_t>(out_size);
  acc_t real = ratio * (static_cast<acc_t>(out_index) + acc_t(0.5)) - acc_t(0.5);
  real = real < acc_t(0) ? acc_t(0) : real;
  int64_t i0 = static_cast<int64_t>(::floorf(static_cast<float>(real)));  // floorf, as ATen's guard_index_and_lambda
  i0 = i0 < in_size - 1 ? i0 : in_size - 1;
  acc_t l1 = real - static_cast<acc_t>(i0);
  l1 = l1 < acc_t(0) ? acc_t(0) : (l1 > acc_t(1) ? acc_t(1) : l1);
  return {i0, i0 + (i0 < in_size - 1 ? 1 : 0), acc_t(1) - l1, l1};
}

// The adjoint's coefficient: the weight with which input index `i` feeds the output index of `t` (0 if it does not).
template <typename acc_t>
SVF_HD acc_t tap_weight(const LinearTap<acc_t>& t, int64_t i) {
  return (t.i0 == i ? t.l0 : acc_t(0)) + (t.i1 == i ? t.l1 : acc_t(0));
}

// The output indices [first, last] whose taps include input index `i` (first > last: none). The taps are monotone
// in the output index, so two binary searches find them: first = min{o : i1(o) >= i}, last = max{o : i0(o) <= i}.
template <typename acc_t>
SVF_HD void tap_range(int64_t i, int64_t in_size, int64_t out_size, int64_t& first, int64_t& last) {
  int64_t lo = 0, hi = out_size;  // first o in [0, out) with i1(o) >= i, out if none
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (linear_tap<acc_t>(mid, in_size, out_size).i1 >= i) hi = mid; else lo = mid + 1;
  }
  first = lo;
  lo = 0, hi = out_size;  // first o with i0(o) > i; last = that - 1
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (linear_tap<acc_t>(mid, in_size, out_size).i0 > i) hi = mid; else lo = mid + 1;
  }
  last = lo - 1;
}

// Bilinear value at one output pixel from one (h, w) plane: the scalar form of the upsampling (the CPU kernel blends
// whole transposed rows instead, with the same taps).
template <typename acc_t, typename scalar_t>
SVF_HD acc_t bilinear_at(const scalar_t* plane, int64_t w, const LinearTap<acc_t>& ty, const LinearTap<acc_t>& tx) {
  const scalar_t* r0 = plane + ty.i0 * w;
  const scalar_t* r1 = plane + ty.i1 * w;
  return ty.l0 * (tx.l0 * static_cast<acc_t>(r0[tx.i0]) + tx.l1 * static_cast<acc_t>(r0[tx.i1])) +
         ty.l1 * (tx.l0 * static_cast<acc_t>(r1[tx.i0]) + tx.l1 * static_cast<acc_t>(r1[tx.i1]));
}

// CutMix box [y0, x0, y1, x1) of one image (crop pixels); an empty or inverted box contains nothing.
SVF_HD bool box_contains(const int64_t* box, int64_t y, int64_t x) {
  return y >= box[0] && y < box[2] && x >= box[1] && x < box[3];
}

// The target of one pixel: label (argmax or given), teacher confidence, whether it counts (valid: not padding /
// not the ignore label) and whether it is accepted (weight > 0: valid, and conf >= threshold in threshold mode).
template <typename acc_t>
struct PixelTarget {
  int64_t label;
  acc_t conf;
  bool valid;
  bool accepted;
};

// From the teacher's softmax over scale * logits: max m, sum s = sum_c exp(scale * x_c - m), argmax.
template <typename acc_t>
SVF_HD PixelTarget<acc_t> teacher_target(acc_t sum, int64_t argmax, bool padding, bool use_threshold,
                                         acc_t threshold) {
  const acc_t conf = acc_t(1) / sum;
  const bool valid = !padding;
  return {argmax, conf, valid, valid && (!use_threshold || conf >= threshold)};
}

// From a given label (255 = ignore; confidence 1).
template <typename acc_t>
SVF_HD PixelTarget<acc_t> given_target(int64_t label, bool use_threshold, acc_t threshold) {
  const bool valid = label != kIgnoreIndex;
  return {valid ? label : int64_t(0), acc_t(1), valid, valid && (!use_threshold || acc_t(1) >= threshold)};
}

SVF_HD bool label_in_range(int64_t label, int64_t num_classes) {
  return label == kIgnoreIndex || (label >= 0 && label < num_classes);
}

// Cross-entropy of one pixel from its logsumexp (m + log s) and the logit of its label.
template <typename acc_t>
SVF_HD acc_t logsumexp_from(acc_t max, acc_t sum) {
  return max + ::log(sum);
}

// d CE / d logit_c = gscale * (softmax_c - [c == label]), softmax_c = exp(logit_c - lse).
template <typename acc_t>
SVF_HD acc_t ce_grad(acc_t logit, acc_t lse, bool is_label, acc_t gscale) {
  return gscale * (::exp(logit - lse) - (is_label ? acc_t(1) : acc_t(0)));
}

// The running sums one image row contributes to the loss and the stats:
// [sum of ce over accepted pixels, valid pixels, accepted pixels, sum of conf over valid pixels].
constexpr int kRowSums = 4;

// ---- The whole per-pixel forward and per-element backward, straight from the NCHW low-res logits. These are the
// bodies of the CUDA kernels (one thread each); the CPU runs the same functions on its per-pixel path
// (SEMIVL_FAST_PSEUDO_LABEL_LOSS_CPU=pixel), which is how they are tested without a GPU.

template <typename acc_t>
struct PixelLoss {
  PixelTarget<acc_t> target;
  acc_t lse;  // the student's logsumexp at the pixel (0 unless accepted)
  acc_t ce;   // its cross-entropy (0 unless accepted)
};

// Pixel (y, x) of one image. student/teacher/mix point at the image's (N, h, w) planes; teacher == nullptr: the
// label is given (label_given); mix == nullptr: no CutMix, else box is the image's [y0, x0, y1, x1).
template <typename acc_t, typename scalar_t, typename tscalar_t>
SVF_HD PixelLoss<acc_t> pseudo_label_loss_pixel(int64_t y, int64_t x, int64_t N, int64_t H, int64_t W,
                                                const scalar_t* student, int64_t hs, int64_t ws,
                                                const tscalar_t* teacher, int64_t ht, int64_t wt, const tscalar_t* mix,
                                                int64_t hm, int64_t wm, const int64_t* box, int64_t label_given,
                                                bool pad, bool pad_mix, bool use_threshold, acc_t threshold,
                                                acc_t scale) {
  PixelLoss<acc_t> r;
  if (teacher == nullptr) {
    r.target = given_target<acc_t>(label_given, use_threshold, threshold);
  } else {
    const bool mixed = mix != nullptr && box_contains(box, y, x);
    const tscalar_t* plane = mixed ? mix : teacher;
    const int64_t h = mixed ? hm : ht, w = mixed ? wm : wt;
    const auto ty = linear_tap<acc_t>(y, h, H);
    const auto tx = linear_tap<acc_t>(x, w, W);
    auto st = softmax_max_init<acc_t>();
    for (int64_t n = 0; n < N; ++n, plane += h * w) softmax_max_update(st, scale * bilinear_at(plane, w, ty, tx), n);
    r.target = teacher_target<acc_t>(st.sum, st.argmax, mixed ? pad_mix : pad, use_threshold, threshold);
  }
  r.lse = acc_t(0);
  r.ce = acc_t(0);
  if (r.target.accepted) {
    const auto ty = linear_tap<acc_t>(y, hs, H);
    const auto tx = linear_tap<acc_t>(x, ws, W);
    auto st = softmax_max_init<acc_t>();
    acc_t label_logit = acc_t(0);
    const scalar_t* plane = student;
    for (int64_t n = 0; n < N; ++n, plane += hs * ws) {
      const acc_t v = bilinear_at(plane, ws, ty, tx);
      label_logit = n == r.target.label ? v : label_logit;
      softmax_max_update(st, v, n);
    }
    r.lse = logsumexp_from(st.max, st.sum);
    r.ce = r.lse - label_logit;
  }
  return r;
}

// Gradient of low-res logit (n, i, j) of one image before the per-image scale: the adjoint of the bilinear
// upsampling as a gather over the high-res pixels whose taps include (i, j), sum_p w_y w_x (softmax_n(p) - [n ==
// label(p)]) over the accepted pixels. plane: the image's (h, w) plane of class n; lse/code: the image's (H, W).
template <typename acc_t, typename scalar_t>
SVF_HD acc_t pseudo_label_loss_grad_element(int64_t n, int64_t i, int64_t j, int64_t h, int64_t w, int64_t H,
                                            int64_t W, const scalar_t* plane, const acc_t* lse, const int32_t* code) {
  int64_t y_first, y_last, x_first, x_last;
  tap_range<acc_t>(i, h, H, y_first, y_last);
  tap_range<acc_t>(j, w, W, x_first, x_last);
  acc_t acc = acc_t(0);
  for (int64_t y = y_first; y <= y_last; ++y) {
    const auto ty = linear_tap<acc_t>(y, h, H);
    const acc_t wy = tap_weight(ty, i);
    if (wy == acc_t(0)) continue;
    for (int64_t x = x_first; x <= x_last; ++x) {
      const int32_t c = code[y * W + x];
      if (c < 0) continue;
      const auto tx = linear_tap<acc_t>(x, w, W);
      acc += wy * tap_weight(tx, j) * ce_grad(bilinear_at(plane, w, ty, tx), lse[y * W + x], c == n, acc_t(1));
    }
  }
  return acc;
}

}  // namespace semivl_fast
