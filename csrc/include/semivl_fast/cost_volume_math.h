// Per-pixel math of the cost volume, shared by every C++ face (the Triton kernels transcribe the same formulas).
//
// For a pixel feature x (C channels) with squared norm q = |x|^2, F.normalize gives x_hat = x * rn with
// rn = 1 / max(|x|, eps). The score of a unit text row t is s = t . x_hat = (t . x) * rn, so the GEMM runs on the raw
// features and each output column is scaled by rn afterwards: no normalised copy of the image exists.
//
// Backward: with d = sum_r G_r t_r (the upstream gradient gathered back to the rows, a GEMM) and
// beta = d . x, the gradient of x through the normalisation is
//     dL/dx = rn * (d - (d . x_hat) x_hat) = rn * d - coef * x,   coef = rn^3 * beta    (|x| >= eps),
// and coef = 0 when |x| < eps (F.normalize's clamp passes no gradient to the norm there).
// The text side gets dL/dt_r = sum_pixels G_r x_hat = sum_pixels (G_r rn) x.
#pragma once

#include <cmath>

#include "semivl_fast/macros.h"

namespace semivl_fast {

constexpr double kCostVolumeEps = 1e-12;  // F.normalize's default

template <typename acc_t>
SVF_HD acc_t cv_inv_norm(acc_t sumsq) {
  const acc_t n = ::sqrt(sumsq);
  return acc_t(1) / (n > acc_t(kCostVolumeEps) ? n : acc_t(kCostVolumeEps));
}

// coef of the projection term for a pixel with squared norm `sumsq`, inverse norm `rn` and beta = d . x.
template <typename acc_t>
SVF_HD acc_t cv_proj_coef(acc_t sumsq, acc_t rn, acc_t beta) {
  return ::sqrt(sumsq) >= acc_t(kCostVolumeEps) ? rn * rn * rn * beta : acc_t(0);
}

template <typename acc_t>
SVF_HD acc_t cv_grad_x(acc_t d, acc_t x, acc_t rn, acc_t coef) {
  return rn * d - coef * x;
}

}  // namespace semivl_fast
