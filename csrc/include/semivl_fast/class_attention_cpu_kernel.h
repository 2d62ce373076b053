// Class attention on the CPU: the math of one (sequence, head) problem, for one SIMD width.
//
// NO include guard on purpose: csrc/cpu/class_attention.cpp includes this file once per instruction set, each time
// inside its own namespace and `#pragma GCC target` region, with three macros defined:
//   SVF_CA_VBYTES  bytes of one SIMD vector (16 = SSE2/NEON, 32 = AVX2, 64 = AVX-512)
//   SVF_CA_MR      rows of the GEMM micro-kernel (its accumulators are SVF_CA_MR x SVF_CA_NV vectors)
//   SVF_CA_NV      most vectors per micro-kernel row
// and <algorithm>, <cmath>, <cstdint>, <cstring>, <limits>, <type_traits> and semivl_fast/class_attention.h (Rows)
// already included. The code uses GCC/Clang
// vector extensions, so one source gives AVX-512, AVX2 and SSE2 code from the same lines.
//
// A problem is one softmax attention O = softmax(scale * Q K^T) V over N tokens of head dim D. Everything works on
// row-strided operands (Rows: pointer + row stride) with Dp columns each (Dp = D rounded up to the vector width; the
// caller packs into scratch with zero columns beyond D when D is not a multiple, or converts 16-bit types, else
// passes the tensors' own rows), and on score-shaped scratch N x Np (Np = N rounded up). Both products are small GEMMs
// C (+)= alpha * A B with B row-major and vectorised along its rows; A is read through (row, col) strides, so the
// transposed products of the backward (P^T dO, dS^T Q) need no transposed copy.
//   forward:  S = scale Q K^T;  E = exp(S - rowmax);  O = (E V) / rowsum;  lse = rowmax + log(rowsum)
//   backward: P = exp(scale Q K^T - lse) (recomputed);  dV = P^T dO;  dP = dO V^T;  dS = P * (dP - delta) with
//             delta = rowsum(dO * O);  dQ = scale dS K;  dK = scale dS^T Q.

template <typename T>
struct Simd;
template <>
struct Simd<float> {
  typedef float V __attribute__((vector_size(SVF_CA_VBYTES)));
  typedef int32_t I __attribute__((vector_size(SVF_CA_VBYTES)));
};
template <>
struct Simd<double> {
  typedef double V __attribute__((vector_size(SVF_CA_VBYTES)));
  typedef int64_t I __attribute__((vector_size(SVF_CA_VBYTES)));
};

template <typename T>
inline constexpr int64_t kLanes = SVF_CA_VBYTES / static_cast<int64_t>(sizeof(T));

template <typename T>
inline typename Simd<T>::V vload(const T* p) {
  typename Simd<T>::V v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

template <typename T>
inline void vstore(T* p, typename Simd<T>::V v) {
  std::memcpy(p, &v, sizeof(v));
}

template <typename T>
inline typename Simd<T>::V vsplat(T s) {
  return typename Simd<T>::V{} + s;
}

// e^x for float vectors (Cephes expf: range reduction by ln 2, degree-6 polynomial, exponent by bit shift), about
// 1 ulp. Inputs below -87.3 give about 1e-38 instead of 0; callers zero the padding columns themselves.
inline Simd<float>::V vexp(Simd<float>::V x) {
  using V = Simd<float>::V;
  using I = Simd<float>::I;
  const V lo = vsplat(-87.3f), hi = vsplat(88.0f);
  x = x < lo ? lo : x;
  x = x > hi ? hi : x;
  const V magic = vsplat(12582912.0f);  // 1.5 * 2^23: adding and subtracting it rounds to the nearest integer
  const V n = (x * 1.44269504088896341f + magic) - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V y = vsplat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const I bits = (__builtin_convertvector(n, I) + 127) << 23;
  V pow2;
  std::memcpy(&pow2, &bits, sizeof(pow2));
  return y * pow2;
}

// row[j] = exp(row[j] - shift) for j < n, 0 for n <= j < np (np a multiple of the vector width); returns the sum.
template <typename T>
inline T exp_shift_row(T* row, int64_t n, int64_t np, T shift) {
  constexpr int64_t W = kLanes<T>;
  T sum = 0;
  if constexpr (std::is_same_v<T, float>) {
    using V = typename Simd<T>::V;
    using I = typename Simd<T>::I;
    I lane;
    for (int l = 0; l < W; ++l) lane[l] = l;
    V acc{};
    const V s = vsplat(shift);
    for (int64_t j = 0; j < np; j += W) {
      V e = vexp(vload(row + j) - s);
      e = lane < static_cast<int32_t>(n - j) ? e : V{};  // zero the padding lanes (a mask, not a spill)
      vstore(row + j, e);
      acc += e;
    }
    for (int64_t l = 0; l < W; ++l) sum += acc[l];
  } else {  // double: libm exp (float64 is for gradcheck, where every ulp counts)
    for (int64_t j = 0; j < n; ++j) {
      row[j] = std::exp(row[j] - shift);
      sum += row[j];
    }
    for (int64_t j = n; j < np; ++j) row[j] = 0;
  }
  return sum;
}

// Max of row[0..n), row of np elements (np a multiple of the vector width).
template <typename T>
inline T row_max(const T* row, int64_t n) {
  using V = typename Simd<T>::V;
  constexpr int64_t W = kLanes<T>;
  T m = -std::numeric_limits<T>::infinity();
  int64_t j = 0;
  if (n >= W) {
    V acc = vload(row);
    for (j = W; j + W <= n; j += W) {
      const V x = vload(row + j);
      acc = x > acc ? x : acc;
    }
    for (int64_t l = 0; l < W; ++l) m = std::max(m, acc[l]);
  }
  for (; j < n; ++j) m = std::max(m, row[j]);
  return m;
}

// C[r, 0 : NV*W] = alpha * sum_k A[r*ars + k*acs] * B[k*ldb + 0 : NV*W] (+ C when accumulate), r < MR.
template <typename T, int MR, int NV>
void micro_kernel(int64_t K, const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb, T* C, int64_t ldc,
                  T alpha, bool accumulate) {
  using V = typename Simd<T>::V;
  constexpr int64_t W = kLanes<T>;
  V c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) c[r][v] = V{};
  for (int64_t k = 0; k < K; ++k) {
    const T* b = B + k * ldb;
    const T* a = A + k * acs;
    V bv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bv[v] = vload(b + v * W);
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const T s = a[r * ars];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) c[r][v] += s * bv[v];
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      V out = c[r][v] * alpha;
      if (accumulate) out += vload(C + r * ldc + v * W);
      vstore(C + r * ldc + v * W, out);
    }
}

template <typename T, int MR>
inline void micro_cols(int nv, int64_t K, const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb, T* C,
                       int64_t ldc, T alpha, bool acc) {
  if constexpr (SVF_CA_NV >= 4)
    if (nv == 4) return micro_kernel<T, MR, 4>(K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
  if constexpr (SVF_CA_NV >= 3)
    if (nv == 3) return micro_kernel<T, MR, 3>(K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
  if constexpr (SVF_CA_NV >= 2)
    if (nv == 2) return micro_kernel<T, MR, 2>(K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
  micro_kernel<T, MR, 1>(K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
}

template <typename T>
inline void micro(int mr, int nv, int64_t K, const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb, T* C,
                  int64_t ldc, T alpha, bool acc) {
  switch (mr) {
    case 1: return micro_cols<T, 1>(nv, K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
    case 2: return micro_cols<T, 2>(nv, K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
    case 3: return micro_cols<T, 3>(nv, K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
    default: break;
  }
  if constexpr (SVF_CA_MR >= 4)
    if (mr == 4) return micro_cols<T, 4>(nv, K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
  if constexpr (SVF_CA_MR >= 5)
    if (mr == 5) return micro_cols<T, 5>(nv, K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
  if constexpr (SVF_CA_MR >= 6)
    if (mr == 6) return micro_cols<T, 6>(nv, K, A, ars, acs, B, ldb, C, ldc, alpha, acc);
}

// C[M x Nc] = alpha * A[M x K] B[K x Nc] (+ C), with A(m, k) = A[m*ars + k*acs], B and C row-major (ldb, ldc) and
// Nc a multiple of the vector width. Column panels outside, so a K x (SVF_CA_NV vectors) panel of B stays in L1.
template <typename T>
void small_gemm(int64_t M, int64_t Nc, int64_t K, const T* A, int64_t ars, int64_t acs, const T* B, int64_t ldb,
                T* C, int64_t ldc, T alpha, bool accumulate) {
  constexpr int64_t W = kLanes<T>;
  for (int64_t n0 = 0; n0 < Nc; n0 += SVF_CA_NV * W) {
    const int nv = static_cast<int>(std::min<int64_t>(SVF_CA_NV, (Nc - n0) / W));
    for (int64_t m0 = 0; m0 < M; m0 += SVF_CA_MR) {
      const int mr = static_cast<int>(std::min<int64_t>(SVF_CA_MR, M - m0));
      micro<T>(mr, nv, K, A + m0 * ars, ars, acs, B + n0, ldb, C + m0 * ldc + n0, ldc, alpha, accumulate);
    }
  }
}

#if defined(__GNUC__) && !defined(__clang__)
// One stage of the in-register W x W transpose: swaps bit B of the row and column indices, i.e. the off-diagonal
// B x B blocks of every 2B x 2B block, with two-source shuffles (vpermt2ps on AVX-512). log2(W) stages transpose.
template <typename T, int B>
inline void transpose_stage(typename Simd<T>::V* r) {
  using I = typename Simd<T>::I;
  constexpr int W = static_cast<int>(kLanes<T>);
  I lo, hi;
  for (int c = 0; c < W; ++c) {
    lo[c] = (c & B) ? W + c - B : c;  // new row i (bit B clear): r[i][c], or r[i + B][c - B]
    hi[c] = (c & B) ? W + c : c + B;  // new row i + B: r[i][c + B], or r[i + B][c]
  }
#pragma GCC unroll 16
  for (int i = 0; i < W; ++i) {
    if (i & B) continue;
    const auto a = r[i], b = r[i + B];
    r[i] = __builtin_shuffle(a, b, lo);
    r[i + B] = __builtin_shuffle(a, b, hi);
  }
  if constexpr (B > 1) transpose_stage<T, B / 2>(r);
}
#endif

// dst (Dp x Np) = src^T (src: N rows of Dp columns); columns N..Np of dst are zero.
template <typename T>
inline void transpose_pad(Rows<const T> src, int64_t N, int64_t Dp, int64_t Np, T* dst) {
#if defined(__GNUC__) && !defined(__clang__)
  using V = typename Simd<T>::V;
  constexpr int64_t W = kLanes<T>;
  V r[W];
  for (int64_t j0 = 0; j0 < Np; j0 += W) {
    for (int64_t d0 = 0; d0 < Dp; d0 += W) {
      for (int64_t i = 0; i < W; ++i) r[i] = j0 + i < N ? vload(src.p + (j0 + i) * src.ld + d0) : V{};
      transpose_stage<T, static_cast<int>(W / 2)>(r);
      for (int64_t i = 0; i < W; ++i) vstore(dst + (d0 + i) * Np + j0, r[i]);
    }
  }
#else
  for (int64_t j = 0; j < N; ++j)
    for (int64_t d = 0; d < Dp; ++d) dst[d * Np + j] = src.p[j * src.ld + d];
  for (int64_t d = 0; d < Dp; ++d)
    for (int64_t j = N; j < Np; ++j) dst[d * Np + j] = 0;
#endif
}

// One forward problem. In: q, k, v. Scratch: kt (Dp x Np), p (N x Np), rowmax, rowsum (N). Out: o, lse (N).
// P stays unnormalised; O's rows are divided by the row sums (N*D multiplications instead of N*N).
template <typename T>
void forward_problem(int64_t N, int64_t D, int64_t Dp, int64_t Np, T scale, Rows<const T> q, Rows<const T> k,
                     Rows<const T> v, T* kt, T* p, T* rowmax, T* rowsum, Rows<T> o, T* lse) {
  transpose_pad(k, N, Dp, Np, kt);
  small_gemm<T>(N, Np, D, q.p, q.ld, 1, kt, Np, p, Np, scale, false);  // S = scale Q K^T
  for (int64_t i = 0; i < N; ++i) {  // unnormalised P = exp(S - rowmax), row sums
    T* row = p + i * Np;
    rowmax[i] = row_max(row, N);
    rowsum[i] = exp_shift_row(row, N, Np, rowmax[i]);
  }
  small_gemm<T>(N, Dp, N, p, Np, 1, v.p, v.ld, o.p, o.ld, T(1), false);  // O = P V, then rows / rowsum
  using V = typename Simd<T>::V;
  constexpr int64_t W = kLanes<T>;
  for (int64_t i = 0; i < N; ++i) {
    const V inv = vsplat(T(1) / rowsum[i]);
    T* row = o.p + i * o.ld;
    for (int64_t c = 0; c < Dp; c += W) vstore(row + c, vload(row + c) * inv);
    lse[i] = rowmax[i] + std::log(rowsum[i]);
  }
}

// delta[i] = sum_c a[i, c] * b[i, c] over Dp columns (zero beyond D), i < N.
template <typename T>
inline void row_dots(int64_t N, int64_t Dp, Rows<const T> a, Rows<const T> b, T* delta) {
  using V = typename Simd<T>::V;
  constexpr int64_t W = kLanes<T>;
  for (int64_t i = 0; i < N; ++i) {
    V acc{};
    for (int64_t c = 0; c < Dp; c += W) acc += vload(a.p + i * a.ld + c) * vload(b.p + i * b.ld + c);
    T sum = 0;
    for (int64_t l = 0; l < W; ++l) sum += acc[l];
    delta[i] = sum;
  }
}

// One backward problem. In: q, k, v, out, dout, lse (N). Scratch: kt, vt (Dp x Np), p, ds (N x Np), delta (N).
// Out: dq, dk, dv.
template <typename T>
void backward_problem(int64_t N, int64_t D, int64_t Dp, int64_t Np, T scale, Rows<const T> q, Rows<const T> k,
                      Rows<const T> v, Rows<const T> out, Rows<const T> dout, const T* lse, T* delta, T* kt, T* vt,
                      T* p, T* ds, Rows<T> dq, Rows<T> dk, Rows<T> dv) {
  row_dots(N, Dp, dout, out, delta);  // delta = rowsum(dO * O)
  transpose_pad(k, N, Dp, Np, kt);
  transpose_pad(v, N, Dp, Np, vt);
  small_gemm<T>(N, Np, D, q.p, q.ld, 1, kt, Np, p, Np, scale, false);  // S = scale Q K^T
  for (int64_t i = 0; i < N; ++i) exp_shift_row(p + i * Np, N, Np, lse[i]);  // P = exp(S - lse)
  small_gemm<T>(N, Dp, N, p, 1, Np, dout.p, dout.ld, dv.p, dv.ld, T(1), false);  // dV = P^T dO
  small_gemm<T>(N, Np, D, dout.p, dout.ld, 1, vt, Np, ds, Np, T(1), false);  // dP = dO V^T
  using V = typename Simd<T>::V;
  constexpr int64_t W = kLanes<T>;
  for (int64_t i = 0; i < N; ++i) {  // dS = P * (dP - delta); padding columns stay 0 because P is 0 there
    T* dsr = ds + i * Np;
    const T* pr = p + i * Np;
    const V di = vsplat(delta[i]);
    for (int64_t j = 0; j < Np; j += W) vstore(dsr + j, vload(pr + j) * (vload(dsr + j) - di));
  }
  small_gemm<T>(N, Dp, N, ds, Np, 1, k.p, k.ld, dq.p, dq.ld, scale, false);  // dQ = scale dS K
  small_gemm<T>(N, Dp, N, ds, 1, Np, q.p, q.ld, dk.p, dk.ld, scale, false);  // dK = scale dS^T Q
}
