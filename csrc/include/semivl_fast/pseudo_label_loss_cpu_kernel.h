// Vector-width-agnostic CPU kernel of the fused pseudo-label loss (contract: csrc/registration.cpp).
//
// NOT a normal header: csrc/cpu/pseudo_label_loss.cpp includes it once per instruction set, inside a namespace that
// provides Vec<T> (at::vec::Vectorized<T> compiled for AVX2, or a one-lane portable stand-in) and the adapters
// vmax, vexp, hmax, hsum, first_equal. Hence no include guard. The per-pixel math that the CUDA kernel uses too
// (bilinear taps, targets, CE) comes from pseudo_label_loss_math.h; this file only vectorises the class loops.
//
// Layout: the NCHW low-res logits are read through a cache of *transposed* low-res rows (w, Np): one pixel's
// classes are contiguous there (Np = N rounded up to the vector width, padding lanes masked with -inf). For a
// high-res row y the two cached rows are blended vertically once (R, (w, Np)); each high-res pixel then blends two
// R entries horizontally, a few vector FMAs per class vector. Nothing of size (N, H, W) ever exists.

// Padding lanes of the last class vector: 0 for real classes, -inf for padding (x + -inf = -inf, exp(-inf) = 0).
template <typename acc_t>
inline Vec<acc_t> tail_vector(int64_t N, int64_t Np) {
  constexpr int64_t L = Vec<acc_t>::size();
  acc_t lanes[L];
  for (int64_t t = 0; t < L; ++t) lanes[t] = (Np - L + t) < N ? acc_t(0) : -std::numeric_limits<acc_t>::infinity();
  return Vec<acc_t>::loadu(lanes);
}

// A cache of two transposed low-res rows of one image of a (B, N, h, w) tensor.
template <typename acc_t>
class RowCache {
 public:
  RowCache(const LowRes<acc_t>& src, int64_t N, int64_t Np)
      : src_(src), N_(N), Np_(Np), slots_{std::vector<acc_t>(src.w * Np, acc_t(0)),
                                          std::vector<acc_t>(src.w * Np, acc_t(0))} {}

  const acc_t* get(int64_t b, int64_t i) {
    const int64_t key = b * src_.h + i;
    for (int s = 0; s < 2; ++s) {
      if (keys_[s] == key) {
        last_ = s;
        return slots_[s].data();
      }
    }
    const int s = 1 - last_;  // evict the row not used last
    src_.load(src_.data, b, i, N_, src_.h, src_.w, Np_, slots_[s].data());
    keys_[s] = key;
    last_ = s;
    return slots_[s].data();
  }

 private:
  const LowRes<acc_t>& src_;
  int64_t N_, Np_;
  std::vector<acc_t> slots_[2];
  int64_t keys_[2] = {-1, -1};
  int last_ = 1;
};

// R = l0 * T0 + l1 * T1 over n elements (the vertical blend of two cached rows).
template <typename acc_t>
inline void blend_rows(const acc_t* t0, const acc_t* t1, acc_t l0, acc_t l1, int64_t n, acc_t* r) {
  using V = Vec<acc_t>;
  const V v0(l0), v1(l1);
  for (int64_t k = 0; k < n; k += V::size()) (V::loadu(t0 + k) * v0 + V::loadu(t1 + k) * v1).store(r + k);
}

// buf = [scale *] (l0 * r0 + l1 * r1) over the Np class lanes (padding -inf); returns the maximum.
template <bool kScaled, typename acc_t>
inline acc_t blend_pixel(const acc_t* r0, const acc_t* r1, acc_t l0, acc_t l1, acc_t scale, int64_t Np,
                         const Vec<acc_t>& tail, acc_t* buf) {
  using V = Vec<acc_t>;
  const V v0(l0), v1(l1), vs(scale);
  V vm(-std::numeric_limits<acc_t>::infinity());
  const int64_t last = Np - V::size();
  for (int64_t k = 0; k <= last; k += V::size()) {
    V v = V::loadu(r0 + k) * v0 + V::loadu(r1 + k) * v1;
    if constexpr (kScaled) v = v * vs;
    if (k == last) v = v + tail;
    v.store(buf + k);
    vm = vmax(vm, v);
  }
  return hmax(vm);
}

// sum_c exp(buf_c - m).
template <typename acc_t>
inline acc_t sum_exp(const acc_t* buf, acc_t m, int64_t Np) {
  using V = Vec<acc_t>;
  const V vm(m);
  V s(acc_t(0));
  for (int64_t k = 0; k < Np; k += V::size()) s = s + vexp(V::loadu(buf + k) - vm);
  return hsum(s);
}

// First class whose value equals m (the argmax; first index on ties, like torch.max).
template <typename acc_t>
inline int64_t first_index_of(const acc_t* buf, acc_t m, int64_t Np) {
  using V = Vec<acc_t>;
  for (int64_t k = 0; k < Np; k += V::size()) {
    const int lane = first_equal(V::loadu(buf + k), m);
    if (lane >= 0) return k + lane;
  }
  return 0;  // unreachable for finite logits
}

// g0 += gl0 * p, g1 += gl1 * p with p = softmax = exp(l0 * r0 + l1 * r1 - lse) (g0, g1 may alias at the border).
template <typename acc_t>
inline void scatter_softmax(const acc_t* r0, const acc_t* r1, acc_t l0, acc_t l1, acc_t lse, acc_t gl0, acc_t gl1,
                            int64_t Np, const Vec<acc_t>& tail, acc_t* g0, acc_t* g1) {
  using V = Vec<acc_t>;
  const V v0(l0), v1(l1), vlse(lse), w0(gl0), w1(gl1);
  const int64_t last = Np - V::size();
  for (int64_t k = 0; k <= last; k += V::size()) {
    V v = V::loadu(r0 + k) * v0 + V::loadu(r1 + k) * v1 - vlse;
    if (k == last) v = v + tail;
    const V p = vexp(v);
    (V::loadu(g0 + k) + p * w0).store(g0 + k);
    (V::loadu(g1 + k) + p * w1).store(g1 + k);
  }
}

// Forward over the high-res rows [y_begin, y_end) of image b.
template <typename acc_t>
void forward_rows(const FwdProblem<acc_t>& P, int64_t b, int64_t y_begin, int64_t y_end) {
  const int64_t N = P.N, Np = P.Np, H = P.H, W = P.W;
  const bool supervised = P.target != nullptr, has_mix = P.mix.data != nullptr;
  const Vec<acc_t> tail = tail_vector<acc_t>(N, Np);
  RowCache<acc_t> cache_s(P.student, N, Np);
  std::vector<acc_t> Rs(P.student.w * Np), buf(Np);
  std::optional<RowCache<acc_t>> cache_t, cache_m;
  std::vector<acc_t> Rt, Rm;
  if (!supervised) {
    cache_t.emplace(P.teacher, N, Np);
    Rt.resize(P.teacher.w * Np);
    if (has_mix) {
      cache_m.emplace(P.mix, N, Np);
      Rm.resize(P.mix.w * Np);
    }
  }
  const int64_t* box = has_mix ? P.boxes + 4 * b : nullptr;
  for (int64_t y = y_begin; y < y_end; ++y) {
    const int64_t pix = (b * H + y) * W;
    acc_t* lse_row = P.lse + pix;
    int32_t* code_row = P.code + pix;
    double sums[kRowSums] = {0, 0, 0, 0};
    // The CutMix box's columns on this row, [bx0, bx1) (empty when the row misses the box).
    int64_t bx0 = 0, bx1 = 0;
    if (has_mix && y >= box[0] && y < box[2]) {
      bx0 = std::clamp<int64_t>(box[1], 0, W);
      bx1 = std::clamp<int64_t>(box[3], 0, W);
      if (bx1 < bx0) bx1 = bx0;
    }
    // 1) targets
    if (supervised) {
      const int64_t* t = P.target + pix;
      for (int64_t x = 0; x < W; ++x) {
        TORCH_CHECK(label_in_range(t[x], N), kPseudoLabelLossOp, ": argument 'target' has label ", t[x], " at (", b,
                    ", ", y, ", ", x, "); labels must be in [0, ", N, ") or ", kIgnoreIndex, " (ignore)");
        const auto pt = given_target<acc_t>(t[x], P.use_threshold, P.threshold);
        sums[1] += pt.valid;
        sums[2] += pt.accepted;
        sums[3] += pt.valid ? double(pt.conf) : 0.0;
        code_row[x] = pt.accepted ? static_cast<int32_t>(pt.label) : -1;
      }
    } else {
      const bool need_t = bx1 - bx0 < W, need_m = bx1 > bx0;
      if (need_t) {
        const auto ty = linear_tap<acc_t>(y, P.teacher.h, H);
        const acc_t* t0 = cache_t->get(b, ty.i0);
        const acc_t* t1 = cache_t->get(b, ty.i1);
        blend_rows(t0, t1, ty.l0, ty.l1, P.teacher.w * Np, Rt.data());
      }
      if (need_m) {
        const auto ty = linear_tap<acc_t>(y, P.mix.h, H);
        const acc_t* t0 = cache_m->get(b, ty.i0);
        const acc_t* t1 = cache_m->get(b, ty.i1);
        blend_rows(t0, t1, ty.l0, ty.l1, P.mix.w * Np, Rm.data());
      }
      for (int64_t x = 0; x < W; ++x) {
        const bool mixed = x >= bx0 && x < bx1;
        const LowRes<acc_t>& src = mixed ? P.mix : P.teacher;
        const acc_t* R = mixed ? Rm.data() : Rt.data();
        const uint8_t* pad = mixed ? P.ignore_mix : P.ignore;
        const auto& tx = src.xtaps[x];
        const acc_t m = blend_pixel<true>(R + tx.i0 * Np, R + tx.i1 * Np, tx.l0, tx.l1, P.scale, Np, tail, buf.data());
        const acc_t s = sum_exp(buf.data(), m, Np);
        const int64_t arg = first_index_of(buf.data(), m, Np);
        const auto pt = teacher_target<acc_t>(s, arg, pad != nullptr && pad[pix + x] != 0, P.use_threshold,
                                              P.threshold);
        sums[1] += pt.valid;
        sums[2] += pt.accepted;
        sums[3] += pt.valid ? double(pt.conf) : 0.0;
        code_row[x] = pt.accepted ? static_cast<int32_t>(pt.label) : -1;
      }
    }
    // 2) the student's cross-entropy on the accepted pixels
    bool any = false;
    for (int64_t x = 0; x < W && !any; ++x) any = code_row[x] >= 0;
    if (any) {
      const auto ty = linear_tap<acc_t>(y, P.student.h, H);
      const acc_t* t0 = cache_s.get(b, ty.i0);
      const acc_t* t1 = cache_s.get(b, ty.i1);
      blend_rows(t0, t1, ty.l0, ty.l1, P.student.w * Np, Rs.data());
    }
    for (int64_t x = 0; x < W; ++x) {
      if (code_row[x] < 0) {
        lse_row[x] = acc_t(0);
        continue;
      }
      const auto& tx = P.student.xtaps[x];
      const acc_t m = blend_pixel<false>(Rs.data() + tx.i0 * Np, Rs.data() + tx.i1 * Np, tx.l0, tx.l1, acc_t(1), Np,
                                         tail, buf.data());
      const acc_t lse = logsumexp_from(m, sum_exp(buf.data(), m, Np));
      lse_row[x] = lse;
      sums[0] += double(lse - buf[code_row[x]]);
    }
    double* out = P.rows + (b * H + y) * kRowSums;
    for (int k = 0; k < kRowSums; ++k) out[k] = sums[k];
  }
}

// Backward for the low-res rows [i_begin, i_end) of image b: gathers from every high-res row whose taps touch them
// (the rows at the chunk's edges are recomputed by both neighbouring chunks: no atomics, deterministic).
template <typename acc_t>
void backward_rows(const BwdProblem<acc_t>& P, int64_t b, int64_t i_begin, int64_t i_end) {
  const int64_t N = P.N, Np = P.Np, H = P.H, W = P.W, h = P.student.h, w = P.student.w;
  const Vec<acc_t> tail = tail_vector<acc_t>(N, Np);
  RowCache<acc_t> cache(P.student, N, Np);
  std::vector<acc_t> G((i_end - i_begin) * w * Np, acc_t(0)), R(w * Np), GR(w * Np);
  int64_t y_first, y_last, unused;
  tap_range<acc_t>(i_begin, h, H, y_first, unused);
  tap_range<acc_t>(i_end - 1, h, H, unused, y_last);
  const acc_t gs = P.gscale[b];
  for (int64_t y = y_first; y <= y_last; ++y) {
    const int64_t pix = (b * H + y) * W;
    const int32_t* code_row = P.code + pix;
    const acc_t* lse_row = P.lse + pix;
    bool any = false;
    for (int64_t x = 0; x < W && !any; ++x) any = code_row[x] >= 0;
    if (!any) continue;
    const auto ty = linear_tap<acc_t>(y, h, H);
    const bool use0 = ty.i0 >= i_begin && ty.i0 < i_end, use1 = ty.i1 >= i_begin && ty.i1 < i_end;
    if (!use0 && !use1) continue;
    blend_rows(cache.get(b, ty.i0), cache.get(b, ty.i1), ty.l0, ty.l1, w * Np, R.data());
    std::fill(GR.begin(), GR.end(), acc_t(0));
    for (int64_t x = 0; x < W; ++x) {
      const int32_t label = code_row[x];
      if (label < 0) continue;
      const auto& tx = P.student.xtaps[x];
      acc_t* g0 = GR.data() + tx.i0 * Np;
      acc_t* g1 = GR.data() + tx.i1 * Np;
      const acc_t gl0 = gs * tx.l0, gl1 = gs * tx.l1;
      scatter_softmax(R.data() + tx.i0 * Np, R.data() + tx.i1 * Np, tx.l0, tx.l1, lse_row[x], gl0, gl1, Np, tail, g0,
                      g1);
      g0[label] -= gl0;
      g1[label] -= gl1;
    }
    if (use0) blend_rows(G.data() + (ty.i0 - i_begin) * w * Np, GR.data(), acc_t(1), ty.l0, w * Np,
                         G.data() + (ty.i0 - i_begin) * w * Np);
    if (use1) blend_rows(G.data() + (ty.i1 - i_begin) * w * Np, GR.data(), acc_t(1), ty.l1, w * Np,
                         G.data() + (ty.i1 - i_begin) * w * Np);
  }
  P.store(G.data(), b, i_begin, i_end, N, Np, h, w, P.grad);
}
