// Per-pixel math of the pseudo-label filter, shared verbatim by the CPU and the CUDA kernels.
//
// For one pixel with class logits x_0..x_{N-1}, the filter computes the softmax of (scale * x) over the classes
// and returns its maximum (the confidence), the argmax (the label, first index on ties) and whether the pixel is
// kept (confidence >= threshold and not ignored). It is an online softmax: one pass over the classes keeps the
// running maximum m and the running sum s = sum_c exp(scale * x_c - m); the confidence is then 1 / s.
#pragma once

#include <cmath>
#include <cstdint>

#include "semivl_fast/macros.h"

namespace semivl_fast {

template <typename acc_t>
struct SoftmaxMaxState {
  acc_t max;       // running maximum of scale * x
  acc_t sum;       // running sum of exp(scale * x - max)
  int64_t argmax;  // index of the running maximum
};

template <typename acc_t>
SVF_HD SoftmaxMaxState<acc_t> softmax_max_init() {
  return {-INFINITY, acc_t(0), 0};
}

// Adds class `c` with scaled logit `v` to the state.
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

template <typename acc_t>
struct PixelDecision {
  acc_t conf;
  int64_t label;
  bool keep;
};

template <typename acc_t>
SVF_HD PixelDecision<acc_t> pseudo_label_decide(const SoftmaxMaxState<acc_t>& st, acc_t threshold, bool ignored) {
  const acc_t conf = acc_t(1) / st.sum;
  return {conf, st.argmax, !ignored && conf >= threshold};
}

}  // namespace semivl_fast
