// CPU kernel of the dense vision-text cost volume: per-pixel L2 normalisation fused with the dot products against
// unit text rows, optional concept max (max over each class's rows), forward and backward.
//
// The image is NCHW, so a block of P neighbouring pixels of one image (P <= 1024, a whole 32x32 map) is a (C x P)
// matrix with leading dimension H*W. Blocks are processed in order; per block the P inverse norms come from one pass
// over the block, the (R x P) raw scores from one BLAS GEMM (text (R x C) @ block), and the output is the scores
// scaled by the inverse norms, or their per-class maximum. Scratch is O(P * (R + C)); no normalised image and no
// (B, R, H, W) tensor exist besides the output. float16/bfloat16 blocks are converted to float32 scratch first.
// Backward recomputes what it needs per block (norms; scores and the arg-max pattern for the concept max) and runs
// two more GEMMs: d = text^T G (C x P) for the image gradient, and G x_hat^T accumulated into one (R x C) buffer for
// the text gradient (deterministic: blocks in order).
//
// Threads: the GEMMs run outside parallel regions on the multi-threaded BLAS, the per-pixel passes with
// at::parallel_for over pixel chunks. (BLAS inside at::parallel_for would oversubscribe: PyTorch turns MKL's
// dynamic threading off, so nested calls spawn their own threads.)
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#include "semivl_fast/cost_volume.h"
#include "semivl_fast/cost_volume_math.h"

namespace semivl_fast {
namespace {

constexpr int64_t kBlock = 1024;  // pixels per block: GEMMs large enough for threaded BLAS, scratch O(kBlock * R)
constexpr int64_t kGrain = 64;    // pixels per parallel chunk of the per-pixel passes

template <typename F>
void for_pixels(int64_t np, const F& f) {
  at::parallel_for(0, np, kGrain, f);
}

template <typename acc_t>
at::Tensor wrap(const acc_t* p, int64_t rows, int64_t cols, int64_t ld) {
  return at::from_blob(const_cast<acc_t*>(p), {rows, cols}, {ld, 1},
                       at::TensorOptions().dtype(c10::CppTypeToScalarType<acc_t>::value));
}

// The (C x np) block of image pixels `img` (leading dimension HW) as acc_t with leading dimension *ld: the image
// itself when it already has the accumulation type, else a converted copy in `scratch` (leading dimension np).
template <typename scalar_t, typename acc_t>
const acc_t* block_pixels(const scalar_t* img, int64_t C, int64_t HW, int64_t np, acc_t* scratch, int64_t* ld) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    *ld = HW;
    return img;
  } else {
    for_pixels(np, [&](int64_t pb, int64_t pe) {
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t p = pb; p < pe; ++p) scratch[c * np + p] = static_cast<acc_t>(img[c * HW + p]);
      }
    });
    *ld = np;
    return scratch;
  }
}

// Squared norms and inverse norms of pixels [pb, pe) of a (C x np) block with leading dimension ld.
template <typename acc_t>
void block_norms(const acc_t* x, int64_t ld, int64_t C, int64_t pb, int64_t pe, acc_t* sumsq, acc_t* rn) {
  std::fill(sumsq + pb, sumsq + pe, acc_t(0));
  for (int64_t c = 0; c < C; ++c) {
    const acc_t* row = x + c * ld;
    for (int64_t p = pb; p < pe; ++p) sumsq[p] += row[p] * row[p];
  }
  for (int64_t p = pb; p < pe; ++p) rn[p] = cv_inv_norm(sumsq[p]);
}

// Per-class maximum (K x np) of the raw scores S (R x np) over pixels [pb, pe) and, optionally, how many rows attain
// it.
template <typename acc_t>
void class_max(const acc_t* S, const int64_t* groups, int64_t R, int64_t K, int64_t np, int64_t pb, int64_t pe,
               acc_t* M, acc_t* count) {
  for (int64_t k = 0; k < K; ++k) std::fill(M + k * np + pb, M + k * np + pe, -std::numeric_limits<acc_t>::infinity());
  for (int64_t r = 0; r < R; ++r) {
    const acc_t* s = S + r * np;
    acc_t* m = M + groups[r] * np;
    for (int64_t p = pb; p < pe; ++p) m[p] = s[p] > m[p] ? s[p] : m[p];
  }
  if (count == nullptr) return;
  for (int64_t k = 0; k < K; ++k) std::fill(count + k * np + pb, count + k * np + pe, acc_t(0));
  for (int64_t r = 0; r < R; ++r) {
    const acc_t* s = S + r * np;
    const acc_t* m = M + groups[r] * np;
    acc_t* n = count + groups[r] * np;
    for (int64_t p = pb; p < pe; ++p) n[p] += s[p] == m[p] ? acc_t(1) : acc_t(0);
  }
}

// For every text row, the first row of the same class with bitwise-identical values (itself if none). Identical rows
// must tie exactly in the concept max, but a GEMM may round them differently (BLAS edge tiles), so the backward
// copies the representative's scores onto its duplicates before looking for ties.
template <typename scalar_t>
std::vector<int64_t> duplicate_rows(const scalar_t* t, const int64_t* groups, int64_t R, int64_t C) {
  std::vector<int64_t> rep(R);
  for (int64_t r = 0; r < R; ++r) {
    rep[r] = r;
    for (int64_t q = 0; q < r; ++q) {
      if (rep[q] == q && groups[q] == groups[r] && std::memcmp(t + q * C, t + r * C, C * sizeof(scalar_t)) == 0) {
        rep[r] = q;
        break;
      }
    }
  }
  return rep;
}

void check_groups_range(const c10::optional<at::Tensor>& groups, int64_t num_classes) {
  if (!groups.has_value()) return;
  const int64_t* g = groups->const_data_ptr<int64_t>();
  for (int64_t r = 0; r < groups->size(0); ++r) {
    SVF_CHECK_ARG(g[r] >= 0 && g[r] < num_classes, kCostVolumeOp, "groups", "values must lie in [0, num_classes = ",
                  num_classes, "), got ", g[r], " at row ", r);
  }
}

template <typename scalar_t>
void forward_kernel(const at::Tensor& image, const at::Tensor& text, const int64_t* groups, int64_t K,
                    at::Tensor& out) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool convert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t B = image.size(0), C = image.size(1), HW = image.size(2) * image.size(3), R = text.size(0);
  const int64_t P = std::min(kBlock, HW), rows = groups != nullptr ? K : R;
  const at::Tensor t = text.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const scalar_t* x = image.const_data_ptr<scalar_t>();
  scalar_t* o = out.mutable_data_ptr<scalar_t>();
  std::vector<acc_t> xbuf(convert ? C * P : 0), S(R * P), sumsq(P), rn(P), M(groups != nullptr ? K * P : 0);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p0 = 0; p0 < HW; p0 += P) {
      const int64_t np = std::min(P, HW - p0);
      int64_t ld = 0;
      const acc_t* xs = block_pixels<scalar_t, acc_t>(x + (b * C) * HW + p0, C, HW, np, xbuf.data(), &ld);
      at::Tensor s = wrap(S.data(), R, np, np);
      at::mm_out(s, t, wrap(xs, C, np, ld));
      scalar_t* ob = o + (b * rows) * HW + p0;
      for_pixels(np, [&](int64_t pb, int64_t pe) {
        block_norms(xs, ld, C, pb, pe, sumsq.data(), rn.data());
        const acc_t* src = S.data();
        if (groups != nullptr) {
          class_max<acc_t>(S.data(), groups, R, K, np, pb, pe, M.data(), nullptr);
          src = M.data();
        }
        for (int64_t r = 0; r < rows; ++r) {
          for (int64_t p = pb; p < pe; ++p) ob[r * HW + p] = static_cast<scalar_t>(src[r * np + p] * rn[p]);
        }
      });
    }
  }
}

void cost_volume_forward_cpu(const at::Tensor& image, const at::Tensor& text, const c10::optional<at::Tensor>& groups,
                             int64_t num_classes, at::Tensor& out) {
  check_cost_volume_args(image, text, groups, num_classes);
  check_groups_range(groups, num_classes);
  const int64_t K = cost_volume_out_channels(text, groups, num_classes);
  check_cost_volume_buffer(out, "out", cost_volume_out_shape(image, K), image.scalar_type(), image.device());
  const int64_t* g = groups.has_value() ? groups->const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "cost_volume_forward_cpu", [&] {
    forward_kernel<scalar_t>(image, text, g, K, out);
  });
}

template <typename scalar_t>
void backward_kernel(const at::Tensor& grad, const at::Tensor& image, const at::Tensor& text, const int64_t* groups,
                     int64_t K, scalar_t* gx, scalar_t* gt) {
  using acc_t = at::opmath_type<scalar_t>;
  constexpr bool convert = !std::is_same_v<scalar_t, acc_t>;
  const int64_t B = image.size(0), C = image.size(1), HW = image.size(2) * image.size(3), R = text.size(0);
  const int64_t P = std::min(kBlock, HW);
  const at::Tensor t = text.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
  const at::Tensor tT = t.t();
  const scalar_t* x = image.const_data_ptr<scalar_t>();
  const scalar_t* go = grad.const_data_ptr<scalar_t>();
  const bool grouped = groups != nullptr;
  const std::vector<int64_t> rep =
      grouped ? duplicate_rows(text.const_data_ptr<scalar_t>(), groups, R, C) : std::vector<int64_t>();
  at::Tensor dT = gt != nullptr ? at::zeros({R, C}, t.options()) : at::Tensor();
  std::vector<acc_t> xbuf(convert ? C * P : 0), S(grouped ? R * P : 0), G(R * P), D(gx != nullptr ? C * P : 0),
      M(grouped ? K * P : 0), count(grouped ? K * P : 0), sumsq(P), rn(P), coef(P);
  for (int64_t b = 0; b < B; ++b) {
    for (int64_t p0 = 0; p0 < HW; p0 += P) {
      const int64_t np = std::min(P, HW - p0);
      int64_t ld = 0;
      const acc_t* xs = block_pixels<scalar_t, acc_t>(x + (b * C) * HW + p0, C, HW, np, xbuf.data(), &ld);
      const at::Tensor xw = wrap(xs, C, np, ld);
      // G (R x np): the upstream gradient of every row's score (and the norms, in the same pass)
      if (!grouped) {
        const scalar_t* g = go + (b * R) * HW + p0;
        for_pixels(np, [&](int64_t pb, int64_t pe) {
          block_norms(xs, ld, C, pb, pe, sumsq.data(), rn.data());
          for (int64_t r = 0; r < R; ++r) {
            for (int64_t p = pb; p < pe; ++p) G[r * np + p] = static_cast<acc_t>(g[r * HW + p]);
          }
        });
      } else {  // only rows attaining their class maximum get the class gradient, split evenly between ties
        at::Tensor s = wrap(S.data(), R, np, np);
        at::mm_out(s, t, xw);
        const scalar_t* g = go + (b * K) * HW + p0;
        for_pixels(np, [&](int64_t pb, int64_t pe) {
          block_norms(xs, ld, C, pb, pe, sumsq.data(), rn.data());
          for (int64_t r = 0; r < R; ++r) {
            const acc_t* from = S.data() + rep[r] * np;
            if (rep[r] != r) std::copy(from + pb, from + pe, S.data() + r * np + pb);
          }
          class_max<acc_t>(S.data(), groups, R, K, np, pb, pe, M.data(), count.data());
          for (int64_t r = 0; r < R; ++r) {
            const int64_t k = groups[r];
            for (int64_t p = pb; p < pe; ++p) {
              G[r * np + p] = S[r * np + p] == M[k * np + p]
                                  ? static_cast<acc_t>(g[k * HW + p]) / count[k * np + p] : acc_t(0);
            }
          }
        });
      }
      const at::Tensor gw = wrap(G.data(), R, np, np);
      // G * rn: the text gradient's left operand, scaled in the pass that writes dx (d = text^T G comes first)
      const auto scale_g = [&](int64_t pb, int64_t pe) {
        if (gt == nullptr) return;
        for (int64_t r = 0; r < R; ++r) {
          for (int64_t p = pb; p < pe; ++p) G[r * np + p] *= rn[p];
        }
      };
      if (gx != nullptr) {
        at::Tensor d = wrap(D.data(), C, np, np);
        at::mm_out(d, tT, gw);
        scalar_t* dst = gx + (b * C) * HW + p0;
        for_pixels(np, [&](int64_t pb, int64_t pe) {
          scale_g(pb, pe);
          std::fill(coef.begin() + pb, coef.begin() + pe, acc_t(0));  // beta = d . x first
          for (int64_t c = 0; c < C; ++c) {
            for (int64_t p = pb; p < pe; ++p) coef[p] += D[c * np + p] * xs[c * ld + p];
          }
          for (int64_t p = pb; p < pe; ++p) coef[p] = cv_proj_coef(sumsq[p], rn[p], coef[p]);
          for (int64_t c = 0; c < C; ++c) {
            for (int64_t p = pb; p < pe; ++p) {
              dst[c * HW + p] = static_cast<scalar_t>(cv_grad_x(D[c * np + p], xs[c * ld + p], rn[p], coef[p]));
            }
          }
        });
      }
      if (gt != nullptr) {  // dT += (G * rn) @ x^T
        if (gx == nullptr) for_pixels(np, scale_g);
        dT.addmm_(gw, xw.t());
      }
    }
  }
  if (gt != nullptr) {
    const acc_t* s = dT.const_data_ptr<acc_t>();
    for (int64_t i = 0; i < R * C; ++i) gt[i] = static_cast<scalar_t>(s[i]);
  }
}

void cost_volume_backward_cpu(const at::Tensor& grad, const at::Tensor& image, const at::Tensor& text,
                              const c10::optional<at::Tensor>& groups, int64_t num_classes,
                              const c10::optional<at::Tensor>& grad_image, const c10::optional<at::Tensor>& grad_text) {
  check_cost_volume_args(image, text, groups, num_classes);
  check_groups_range(groups, num_classes);
  const int64_t K = cost_volume_out_channels(text, groups, num_classes);
  check_cost_volume_buffer(grad, "grad", cost_volume_out_shape(image, K), image.scalar_type(), image.device());
  if (grad_image.has_value()) {
    check_cost_volume_buffer(*grad_image, "grad_image", image.sizes(), image.scalar_type(), image.device());
  }
  if (grad_text.has_value()) {
    check_cost_volume_buffer(*grad_text, "grad_text", text.sizes(), text.scalar_type(), image.device());
  }
  const int64_t* g = groups.has_value() ? groups->const_data_ptr<int64_t>() : nullptr;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, image.scalar_type(), "cost_volume_backward_cpu", [&] {
    scalar_t* gx = grad_image.has_value() ? grad_image->mutable_data_ptr<scalar_t>() : nullptr;
    scalar_t* gt = grad_text.has_value() ? grad_text->mutable_data_ptr<scalar_t>() : nullptr;
    if (gx == nullptr && gt == nullptr) return;
    backward_kernel<scalar_t>(grad, image, text, g, K, gx, gt);
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(semivl_fast_C, CPU, m) {
  m.impl("cost_volume_forward_", &cost_volume_forward_cpu);
  m.impl("cost_volume_backward_", &cost_volume_backward_cpu);
}

}  // namespace semivl_fast
