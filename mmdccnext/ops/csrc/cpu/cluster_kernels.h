// Clustering kernels of DCConv, one copy per ISA: included by common/isa_instantiate.h (from
// cpu/cluster.cpp) once per ISA, inside that ISA's target pragma; no include guard on
// purpose, and no #include (every header comes first, see "ODR" in common/dcconv_common.h).
//
// ---------------------------------------------------------------------------------------
// Clustering
//
// The canonical distance e_j (separately rounded multiply and add, see the top of
// common/dcconv_common.h) decides the clusters. To run at fused-multiply-add speed, the
// register blocks compute a *screening* distance s_j where the compiler may fuse
// (fp-contract=fast: FMA in the AVX2 and AVX-512 copies; the baseline SSE2 copy has no FMA
// and rounds separately, which the bounds below cover as well). Both are sums of the same D
// non-negative terms (x_i[t] - x_j[t])^2 (identical rounded differences) with at most one
// rounding more or less per step, so with u = 2^-24 (2^-53 for double), S the exact sum of
// the terms and g = D u / (1 - D u):  |s_j - S| <= g S  and  |e_j - S| <= g S, hence
//     e_j <= screen(s_j)  and  s_j <= screen(e_j),   screen(v) = v (1 + 3 (D + 1) u) + slack
// (slack covers subnormals; screen(v) = inf for v near overflow, where no bound is used).
//
// Vector width. A vector lane holds one column j of a panel, and each lane accumulates its
// own D terms in increasing t, one multiply(-add) per term, whatever the number of lanes:
// the roundings each s_j goes through, and so every bound here and below, are the same
// for 16-byte (generic), 32-byte (AVX2) and 64-byte (AVX-512) vectors. Only which columns
// share a register changes.
//
// Per row a candidate list is kept (unsorted) that provably contains the exact top-(K-1) by
// (e, j) among the columns seen so far: if s_(m) is the m-th smallest screened distance in
// the list, no column with s_j > band = screen(screen(s_(m))) can beat all of those m
// columns, so such columns are never appended. The band only matters as an upper limit, so
// it may lag: the blocks append every lane under the row's current band (a compare, a
// compressed store, a count), and only when the list has grown by a few dozen entries is it
// "flushed": the band is recomputed from the list's m-th smallest screened distance and the
// entries above it are dropped. (Keeping the list sorted and the band exact at every
// insertion cost a data-dependent branch per lane: about 95 insertions per row for
// N = 4000, K = 12, mostly mispredicted.) Near ties (or exact ties, e.g. duplicated
// patches) can leave many entries under the band; when more than a few dozen survive a
// flush the list is "resolved": canonical distances are computed for its entries and only
// the exact top-(K-1) is kept. At the end of the row the list is flushed once more and the
// canonical distances of the (about K-1) survivors are computed and sorted by (e, j). The
// result is therefore identical to evaluating the canonical distance for every pair, in
// any order of the columns, at the cost of ~K canonical evaluations per row.
//
// Expansion screen. For images whose sub-vectors are all finite and D >= 8, the screen
// reads the sub-vectors centred on the image mean, c_j = fl(x_j - mean) (distances are
// translation invariant; centring keeps the norms and so the bound small), and computes
// s_j = |c_i|^2 + |c_j|^2 - 2 <c_i, c_j> (one FMA per pair and channel instead of a
// subtraction and an FMA). With S the exact squared distance of the raw sub-vectors and S'
// that of the centred ones, |S' - S| <= 2u (|c_i|^2 + |c_j|^2) + u S (rounding of the
// centring) and |s_j - S'| <= (2D + 5) u (|c_i|^2 + |c_j|^2) (norms, dot product, final
// combination; the dot product of a lane is again D steps in increasing t, fused or not), so
// |s_j - S| <= E_i + u S with E_i = (2D + 12) u (|c_i|^2 + max_j |c_j|^2) + subnormal slack,
// while the canonical distance satisfies |e_j - S| <= (D + 4) u S. Hence a column can beat
// the m-th list entry (screened s_(m)) only if
// s_j <= dot_band(s_(m)) = (s_(m) + E_i)(1 + (3D + 16) u) + E_i (rounded up), and the list
// logic above is unchanged (it only needs a band that is monotone in s).
// Images with non-finite values, huge norms or D < 8 use the direct screen.
// ---------------------------------------------------------------------------------------
#ifndef DCCONV_ISA
#error "cluster_kernels.h is compiled through common/isa_instantiate.h"
#endif

namespace dcconv {
namespace DCCONV_ISA {

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(DCCONV_VEC_BYTES)));
  static constexpr int L = DCCONV_VEC_BYTES / 4;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(DCCONV_VEC_BYTES)));
  static constexpr int L = DCCONV_VEC_BYTES / 8;
};

constexpr int kRowSub = DCCONV_ROW_SUB;  // rows of one register block
constexpr int kPanelVecs = DCCONV_PANEL_VECS;  // vectors (of L columns) per block / panel

// r + k * denorm_min (k < 2^20), without subnormal arithmetic (very slow on x86) in the
// common case: for r > 2^20 * min_normal the sum rounds back to r anyway.
template <typename T>
inline T add_tiny(T r, int64_t k) {
  if (r > std::numeric_limits<T>::min() * T(1 << 20)) return r;
  return r + T(k) * std::numeric_limits<T>::denorm_min();
}

template <typename T>
inline T screen_bound(T v, int64_t D) {
  const T u = std::numeric_limits<T>::epsilon() / 2;
  if (!(v < std::numeric_limits<T>::max() / 8)) return std::numeric_limits<T>::infinity();
  T r = v * (T(1) + T(3 * (D + 1)) * u);
  return add_tiny(r, 4 * (D + 1));
}

// Band of the norm-expansion screen (regular images, see "Expansion screen" above): with
// E the row's bound |screen - S| <= E, a column can still beat the m-th entry (screened v)
// only if its screened distance is <= (v + E) (1 + c) + E.
template <typename T>
inline T dot_band(T v, T E, int64_t D) {
  const T u = std::numeric_limits<T>::epsilon() / 2;
  T r = (v + E) * (T(1) + T(3 * D + 16) * u) + E;
  r = add_tiny(r * (T(1) + T(4) * u), 4);
  return r < std::numeric_limits<T>::max() / 4 ? r : std::numeric_limits<T>::infinity();
}

// Candidate list of one row (see above), unsorted; storage is provided by the caller. The
// register blocks append the lanes under the band (append_lanes); the band is tightened
// only when the list grows past a threshold (flush), so a panel costs a row one mask and,
// where the mask is not empty, one compressed store and one count: no branch per lane.
template <typename T>
struct RowCands {
  T* sig;        // screened distances
  int32_t* idx;  // column indices (N < 2^31, checked by cluster_forward)
  T* ex;         // scratch for canonical distances
  int64_t n;     // entries
  T band;        // insertion threshold on screened distances (+inf until the first flush)
  T eps;         // expansion screen: error bound E_i of the row; < 0: direct screen
};

template <typename T>
struct ListCtx {
  const T* srow;   // sub-vector of the row
  const T* s;      // sub-vectors of the image
  int64_t D, m;
  int64_t keep;    // entries a flush may leave before resolving near-ties exactly
  std::vector<int64_t>* ord;   // scratch
  std::vector<T>* tmp;         // scratch
  std::vector<int32_t>* tmpi;  // scratch
};

template <typename T>
inline T row_band(const RowCands<T>& c, const ListCtx<T>& x, T v) {
  return c.eps < 0 ? screen_bound<T>(screen_bound<T>(v, x.D), x.D) : dot_band<T>(v, c.eps, x.D);
}

// Canonical distances of all entries and the permutation sorting them by (canonical, index).
template <typename T>
void exact_order(RowCands<T>& c, const ListCtx<T>& x) {
  std::vector<int64_t>& ord = *x.ord;
  ord.resize(c.n);
  for (int64_t q = 0; q < c.n; ++q) {
    ord[q] = q;
    c.ex[q] = exact_sq_dist<T>(x.srow, x.s + int64_t(c.idx[q]) * x.D, x.D);
  }
  std::sort(ord.begin(), ord.end(), KeyThenIndex<T, int32_t>{c.ex, c.idx});
}

// Keep only the exact top-m of the list (near-ties filled it up); returns the largest
// screened distance among them.
template <typename T>
T resolve_exact(RowCands<T>& c, const ListCtx<T>& x) {
  exact_order(c, x);
  std::vector<int64_t>& ord = *x.ord;
  std::vector<T>& sg = *x.tmp;
  std::vector<int32_t>& id = *x.tmpi;
  const int64_t k = std::min(x.m, c.n);
  sg.resize(k);
  id.resize(k);
  T top = -std::numeric_limits<T>::infinity();
  for (int64_t q = 0; q < k; ++q) {
    sg[q] = c.sig[ord[q]];
    id[q] = c.idx[ord[q]];
    top = std::max(top, sg[q]);
  }
  for (int64_t q = 0; q < k; ++q) {
    c.sig[q] = sg[q];
    c.idx[q] = id[q];
  }
  c.n = k;
  return top;
}

template <typename T>
struct MaskInt;
template <>
struct MaskInt<float> {
  typedef int32_t type __attribute__((vector_size(DCCONV_VEC_BYTES)));
};
template <>
struct MaskInt<double> {
  typedef int64_t type __attribute__((vector_size(DCCONV_VEC_BYTES)));
};

// The m-th smallest of a[0, n) (1 <= m <= n, no NaN): the smallest a[q] with at least m
// values <= a[q]. Counted for a vector of q at a time against every value, without
// branches (n is below a hundred); a[n, n + L) is scratch (padded with NaN, never <=).
template <typename T>
T mth_smallest(T* a, int64_t n, int64_t m) {
  typedef typename Vec<T>::type V;
  typedef T VU __attribute__((vector_size(DCCONV_VEC_BYTES), aligned(alignof(T))));
  typedef typename MaskInt<T>::type M;
  typedef std::remove_reference_t<decltype(M{}[0])> I;
  constexpr int L = Vec<T>::L;
  const T nan = std::numeric_limits<T>::quiet_NaN();
  for (int l = 0; l < L; ++l) a[n + l] = nan;
  const V inf = V{} + std::numeric_limits<T>::infinity();
  V best = inf;
  for (int64_t q0 = 0; q0 < n; q0 += L) {
    const V vq = *reinterpret_cast<const VU*>(a + q0);
    M count = M{};
    for (int64_t w = 0; w < n; ++w) count -= (V{} + a[w]) <= vq;  // true is -1
    best = count >= static_cast<I>(m) ? (vq < best ? vq : best) : best;
  }
  T r = best[0];
  for (int l = 1; l < L; ++l) r = std::min<T>(r, best[l]);
  return r;
}

// Tighten the band to the m-th smallest screened distance of the list and drop the entries
// above it (no column above it can beat all of those m: see above); resolve near-ties
// exactly when more than `keep` entries survive.
template <typename T>
void flush(RowCands<T>& c, const ListCtx<T>& x) {
  if (c.n < x.m) return;  // the band stays +inf
  c.band = row_band(c, x, mth_smallest(c.sig, c.n, x.m));
  int64_t k = 0;
  for (int64_t q = 0; q < c.n; ++q) {  // without a data-dependent branch
    c.sig[k] = c.sig[q];
    c.idx[k] = c.idx[q];
    k += c.sig[q] <= c.band;
  }
  c.n = k;
  if (c.n > x.keep) c.band = row_band(c, x, resolve_exact(c, x));
}

template <typename T>
void finish_row(RowCands<T>& c, const ListCtx<T>& x, int64_t* out) {
  // the list holds every other patch (N - 1 <= m) or a superset of the exact top-m
  exact_order(c, x);
  const std::vector<int64_t>& ord = *x.ord;
  for (int64_t q = 0; q < x.m; ++q) out[q] = c.idx[ord[q]];
}

// Bit l of the result: lane l (over the kPanelVecs vectors) of a is <= the same lane of w.
// NaN lanes are not (an ordered comparison). DCCONV_MASK picks the instructions: 3: one
// compare into a mask register per vector (AVX-512); 1 / 2: one compare and one movemask
// per vector (AVX / SSE2); 0: portable GCC vector code, the lanes' bits OR-reduced into lane
// 0 by log2(L) shuffles (no copy uses it on x86; it stays for other targets).
template <typename T>
DCCONV_INLINE uint32_t le_mask(const typename Vec<T>::type* a, const typename Vec<T>::type* w) {
  typedef typename Vec<T>::type V;
  constexpr int L = Vec<T>::L;
  static_assert(kPanelVecs * L <= 32, "mask layout");
#if DCCONV_MASK == 1 || DCCONV_MASK == 2 || DCCONV_MASK == 3
  uint32_t m = 0;
  for (int v = 0; v < kPanelVecs; ++v) {
    uint32_t mv;
#if DCCONV_MASK == 3
    if constexpr (std::is_same_v<T, float>)
      mv = _mm512_cmp_ps_mask((__m512)a[v], (__m512)w[v], _CMP_LE_OQ);
    else
      mv = _mm512_cmp_pd_mask((__m512d)a[v], (__m512d)w[v], _CMP_LE_OQ);
#elif DCCONV_MASK == 1
    if constexpr (std::is_same_v<T, float>)
      mv = _mm256_movemask_ps(_mm256_cmp_ps((__m256)a[v], (__m256)w[v], _CMP_LE_OQ));
    else
      mv = _mm256_movemask_pd(_mm256_cmp_pd((__m256d)a[v], (__m256d)w[v], _CMP_LE_OQ));
#else
    if constexpr (std::is_same_v<T, float>)
      mv = _mm_movemask_ps(_mm_cmple_ps((__m128)a[v], (__m128)w[v]));
    else
      mv = _mm_movemask_pd(_mm_cmple_pd((__m128d)a[v], (__m128d)w[v]));
#endif
    m |= mv << (v * L);
  }
  return m;
#else
  typedef typename MaskInt<T>::type M;
  typedef std::remove_reference_t<decltype(M{}[0])> I;
  M bit;
  for (int l = 0; l < L; ++l) bit[l] = I(1) << l;
  const M zero = M{};
  M m = zero;
  for (int v = 0; v < kPanelVecs; ++v) m = m | ((a[v] <= w[v]) ? (bit << (v * L)) : zero);
  if constexpr (L == 16) {
    m = m | __builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    m = m | __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
    m = m | __builtin_shufflevector(m, m, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
    m = m | __builtin_shufflevector(m, m, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
  } else if constexpr (L == 8) {
    m = m | __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3);
    m = m | __builtin_shufflevector(m, m, 2, 3, 0, 1, 2, 3, 0, 1);
    m = m | __builtin_shufflevector(m, m, 1, 0, 1, 0, 1, 0, 1, 0);
  } else if constexpr (L == 4) {
    m = m | __builtin_shufflevector(m, m, 2, 3, 0, 1);
    m = m | __builtin_shufflevector(m, m, 1, 0, 1, 0);
  } else {
    static_assert(L == 2, "vector lanes");
    m = m | __builtin_shufflevector(m, m, 1, 0);
  }
  return static_cast<uint32_t>(m[0]);
#endif
}

// Bit l: lane l of a is <= w.
template <typename T>
DCCONV_INLINE uint32_t le_mask(const typename Vec<T>::type* a, T w) {
  typename Vec<T>::type wv[kPanelVecs];
  for (int v = 0; v < kPanelVecs; ++v) wv[v] = typename Vec<T>::type{} + w;
  return le_mask<T>(a, wv);
}

#if DCCONV_MASK == 1
// vpermps indices that move the lanes set in an 8-bit mask to the front, in order (AVX2 has
// no compress instruction).
struct Compress8 {
  alignas(32) int32_t perm[256][8];
  constexpr Compress8() : perm{} {
    for (int mask = 0; mask < 256; ++mask) {
      int k = 0;
      for (int lane = 0; lane < 8; ++lane)
        if (mask >> lane & 1) perm[mask][k++] = lane;
    }
  }
};
inline constexpr Compress8 kCompress8{};
#endif

// Append one screened distance (column j) to a list.
template <typename T>
DCCONV_INLINE void append_one(RowCands<T>& c, T sig, int64_t j) {
  c.sig[c.n] = sig;
  c.idx[c.n] = static_cast<int32_t>(j);
  ++c.n;
}

// Append the lanes of one row of a spilled block (PW screened distances of the columns j0,
// j0 + 1, ...) whose bit is set in `mask` to the row's list. Float lists on AVX-512 and AVX2
// compress each vector in registers and store it whole (the list has room for a panel past
// its flush threshold), without a branch per lane; the other copies walk the bits.
template <typename T>
DCCONV_INLINE void append_lanes(RowCands<T>& c, const T* lanes, uint32_t mask, int64_t j0) {
#if DCCONV_MASK == 3
  if constexpr (std::is_same_v<T, float>) {
    const __m512i iota = _mm512_set_epi32(15, 14, 13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0);
    for (int v = 0; v < kPanelVecs; ++v) {
      const __mmask16 mv = static_cast<__mmask16>(mask >> (16 * v));
      const __m512i id =
          _mm512_add_epi32(iota, _mm512_set1_epi32(static_cast<int32_t>(j0 + 16 * v)));
      _mm512_storeu_ps(c.sig + c.n,
                       _mm512_maskz_compress_ps(mv, _mm512_load_ps(lanes + 16 * v)));
      _mm512_storeu_si512(c.idx + c.n, _mm512_maskz_compress_epi32(mv, id));
      c.n += __builtin_popcount(mv);
    }
    return;
  }
#elif DCCONV_MASK == 1
  if constexpr (std::is_same_v<T, float>) {
    const __m256i iota = _mm256_set_epi32(7, 6, 5, 4, 3, 2, 1, 0);
    for (int v = 0; v < kPanelVecs; ++v) {
      const uint32_t mv = (mask >> (8 * v)) & 0xFFu;
      const __m256i perm =
          _mm256_load_si256(reinterpret_cast<const __m256i*>(kCompress8.perm[mv]));
      const __m256i id =
          _mm256_add_epi32(iota, _mm256_set1_epi32(static_cast<int32_t>(j0 + 8 * v)));
      _mm256_storeu_ps(c.sig + c.n,
                       _mm256_permutevar8x32_ps(_mm256_load_ps(lanes + 8 * v), perm));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(c.idx + c.n),
                          _mm256_permutevar8x32_epi32(id, perm));
      c.n += __builtin_popcount(mv);
    }
    return;
  }
#endif
  while (mask) {
    const int lane = __builtin_ctz(mask);
    mask &= mask - 1;
    append_one<T>(c, lanes[lane], j0 + lane);
  }
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
// Rows [i0, i1) of image b: screening distances to all N patches, panel by panel, in
// kRowSub x PW register blocks; lanes under a row's band are appended to its list. With
// kPairs (i0 = 0, i1 = N: one task per image) each pair is screened once, in the block of
// its smaller index's row: the block's lanes go to the row's list (columns above the row)
// and, compared with each column's own band, to the columns' lists (the row as their
// candidate), which halves the multiply-adds; the lists then take their columns in another
// order, which the lists allow (see above).
// Everything in this push_options region may be FMA-contracted: only screening arithmetic
// and bounds with margins (the canonical distance is exact_sq_dist, out of line).
template <typename T, bool kDot, bool kPairs>
DCCONV_INLINE void cluster_rows_impl(const ClusterArgs<T>& a, int64_t b, int64_t i0,
                                     int64_t i1) {
  typedef typename Vec<T>::type V;
  typedef T VU __attribute__((vector_size(DCCONV_VEC_BYTES), aligned(alignof(T))));
  constexpr int L = Vec<T>::L;
  constexpr int PW = L * kPanelVecs;
  const int64_t N = a.N, D = a.D, Kc = a.Kc, m = Kc - 1;
  const int64_t R = i1 - i0;
  int64_t* out = a.out + (b * N + i0) * Kc;
  if (m == 0) {
    for (int64_t r = 0; r < R; ++r) out[r * Kc] = i0 + r;
    return;
  }
  const T inf = std::numeric_limits<T>::infinity();
  // a flush leaves at most `keep` entries and happens from `flush_at` on; one more panel of
  // whole-vector stores past it must fit
  const int64_t keep = m + 16, flush_at = m + 32, cap = flush_at + PW + 16;
  std::vector<T> sig(R * cap), ex(R * cap);
  std::vector<int32_t> ids(R * cap);
  std::vector<RowCands<T>> cands(R);
  std::vector<int64_t> ord;
  std::vector<int32_t> tmpi;
  std::vector<T> tmp;
  ord.reserve(cap);
  tmp.reserve(cap);
  const T* s = a.s + b * N * D;
  const T* scr = a.scr + b * N * D;
  const T* panels = a.panels + b * a.P * D * PW;
  const T* norms = a.norms + b * a.P * PW;
  const T u = std::numeric_limits<T>::epsilon() / 2;
  for (int64_t r = 0; r < R; ++r) {
    T eps = -1;
    if (kDot) {
      eps = T(2 * D + 12) * u * (norms[i0 + r] + a.nbmax[b]);
      eps = add_tiny(eps * (T(1) + T(4) * u), 16 * (D + 2));
    }
    cands[r] = RowCands<T>{sig.data() + r * cap, ids.data() + r * cap, ex.data() + r * cap, 0,
                           inf, eps};
  }
  // kPairs: every list's band, by column, for the vector compare of the columns' lists
  std::vector<T> bands(kPairs ? a.P * PW : 0, inf);
  const uint32_t all_lanes = PW == 32 ? 0xFFFFFFFFu : ((1u << PW) - 1u);
  // after entries were appended to the list of row `row`
  auto appended = [&](int64_t row) {
    RowCands<T>& c = cands[row];
    if (c.n >= (c.band == inf ? m : flush_at)) {
      const int64_t i = i0 + row;
      const ListCtx<T> ctx{s + i * D, s, D, m, keep, &ord, &tmp, &tmpi};
      flush<T>(c, ctx);
      if (kPairs) bands[i] = c.band;
    }
  };

  // kPairs: tiles of rows, each against the panels from its first row on, so that the
  // tile's lists and the panel's columns' lists are both at hand (as the row blocks of a
  // task are without kPairs)
  const int64_t tile = kPairs ? 16 * kRowSub : R;
  for (int64_t t0 = 0; t0 < R; t0 += tile)
  for (int64_t p = kPairs ? t0 / PW : 0; p < a.P; ++p) {
    const T* pan = panels + p * D * PW;
    const int64_t j0 = p * PW;
    // lanes of real columns (the last panel is zero padded)
    const uint32_t valid = N - j0 >= PW ? all_lanes : ((1u << (N - j0)) - 1u);
    // kPairs: the tile's rows below the panel's last column (the pairs of the rows after it
    // are screened in those rows' blocks)
    const int64_t rend = std::min<int64_t>(kPairs ? j0 + PW : R, t0 + tile);
    for (int64_t r0 = t0; r0 < rend; r0 += kRowSub) {
      const T* rp[kRowSub];
      for (int r = 0; r < kRowSub; ++r)
        rp[r] = scr + std::min<int64_t>(i0 + r0 + r, N - 1) * D;
      V acc[kRowSub][kPanelVecs];
      for (int r = 0; r < kRowSub; ++r)
        for (int v = 0; v < kPanelVecs; ++v) acc[r][v] = V{};
      for (int64_t t = 0; t < D; ++t) {
        V c[kPanelVecs];
        for (int v = 0; v < kPanelVecs; ++v)
          c[v] = *reinterpret_cast<const V*>(pan + t * PW + v * L);
        for (int r = 0; r < kRowSub; ++r) {
          const T rv = rp[r][t];
          for (int v = 0; v < kPanelVecs; ++v) {
            if (kDot) {
              acc[r][v] = acc[r][v] + rv * c[v];  // fused (screening only)
            } else {
              V diff = rv - c[v];
              acc[r][v] = acc[r][v] + diff * diff;  // may be fused (screening only)
            }
          }
        }
      }
      if (kDot) {
        for (int r = 0; r < kRowSub; ++r) {
          const T na = norms[std::min<int64_t>(i0 + r0 + r, N - 1)];
          for (int v = 0; v < kPanelVecs; ++v) {
            const V nb = *reinterpret_cast<const V*>(norms + j0 + v * L);
            acc[r][v] = (na + nb) - (acc[r][v] + acc[r][v]);
          }
        }
      } else {  // NaN (non-finite images) screens as +inf: offered while a list is short
        for (int r = 0; r < kRowSub; ++r)
          for (int v = 0; v < kPanelVecs; ++v)
            acc[r][v] = acc[r][v] == acc[r][v] ? acc[r][v] : V{} + inf;
      }
      // spill the block once (reading single lanes right after a vector store would stall
      // on store forwarding)
      alignas(64) T block[kRowSub][PW];
      for (int r = 0; r < kRowSub; ++r)
        for (int v = 0; v < kPanelVecs; ++v)
          *reinterpret_cast<V*>(&block[r][v * L]) = acc[r][v];
      const int rn = static_cast<int>(std::min<int64_t>(kRowSub, R - r0));
      for (int r = 0; r < rn; ++r) {
        const int64_t i = i0 + r0 + r;
        const V* lanes = reinterpret_cast<const V*>(block[r]);
        // the columns this block screens for row i: all but i itself, or (kPairs) those
        // above i
        uint32_t cols = valid;
        if (i >= j0) {
          const int64_t k = i - j0;
          if (kPairs)
            cols &= k < PW ? ~((2u << k) - 1u) : 0u;
          else if (k < PW)
            cols &= ~(1u << k);
        }
        // from the spilled block (acc itself would be spilled a second time)
        const T band = kPairs ? bands[i] : cands[r0 + r].band;  // kPairs: a smaller array
        const uint32_t mask = le_mask<T>(lanes, band) & cols;
        if (mask) {  // most panels skip, once the bands are tight
          append_lanes<T>(cands[r0 + r], block[r], mask, j0);
          appended(r0 + r);
        }
        if (kPairs) {
          V cb[kPanelVecs];
          for (int v = 0; v < kPanelVecs; ++v)
            cb[v] = *reinterpret_cast<const VU*>(bands.data() + j0 + v * L);
          uint32_t tmask = le_mask<T>(lanes, cb) & cols;
          while (tmask) {  // row i as a candidate of column j's list
            const int lane = __builtin_ctz(tmask);
            tmask &= tmask - 1;
            append_one<T>(cands[j0 + lane], block[r][lane], i);
            appended(j0 + lane);
          }
        }
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t i = i0 + r;
    out[r * Kc] = i;
    const ListCtx<T> ctx{s + i * D, s, D, m, keep, &ord, &tmp, &tmpi};
    flush<T>(cands[r], ctx);  // fewer canonical distances to compute
    finish_row<T>(cands[r], ctx, out + r * Kc + 1);
  }
}

void cluster_rows_f32(const ClusterArgs<float>& a, int64_t b, int64_t i0, int64_t i1) {
  if (a.dot_mode[b])
    cluster_rows_impl<float, true, false>(a, b, i0, i1);
  else
    cluster_rows_impl<float, false, false>(a, b, i0, i1);
}
void cluster_rows_f64(const ClusterArgs<double>& a, int64_t b, int64_t i0, int64_t i1) {
  if (a.dot_mode[b])
    cluster_rows_impl<double, true, false>(a, b, i0, i1);
  else
    cluster_rows_impl<double, false, false>(a, b, i0, i1);
}
void cluster_image_f32(const ClusterArgs<float>& a, int64_t b) {
  if (a.dot_mode[b])
    cluster_rows_impl<float, true, true>(a, b, 0, a.N);
  else
    cluster_rows_impl<float, false, true>(a, b, 0, a.N);
}
void cluster_image_f64(const ClusterArgs<double>& a, int64_t b) {
  if (a.dot_mode[b])
    cluster_rows_impl<double, true, true>(a, b, 0, a.N);
  else
    cluster_rows_impl<double, false, true>(a, b, 0, a.N);
}
#pragma GCC pop_options

// Panel widths the dispatcher (cpu/cluster.cpp) packs the columns with for this ISA's
// cluster_rows_f32 / _f64, and the rows of its register block (data, not functions: baseline code must not call ISA code to
// learn them, and it only ever calls the selected ISA's kernels).
constexpr int kPanelWidthF32 = Vec<float>::L * kPanelVecs;
constexpr int kPanelWidthF64 = Vec<double>::L * kPanelVecs;
constexpr int kRowsPerBlock = kRowSub;

}  // namespace DCCONV_ISA
}  // namespace dcconv
