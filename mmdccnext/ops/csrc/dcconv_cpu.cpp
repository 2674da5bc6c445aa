// Fused CPU kernels of DCConv (Dynamic Clustering Convolution, DCCNeXt).
//
// cluster_forward     sub-vector distances + running top-K per row, never an N x N buffer.
// aggregate_forward   y[b,n,c] = bias[c] + sum_k W[k,c] * x[b, idx[b,n,k], c].
// aggregate_backward  grads of x, W, bias; deterministic (fixed summation order for every
//                     output element, whatever the number of threads; no atomics).
//
// Numerics (shared with the PyTorch path, see mmdccnext/ops/cluster.py):
//   * canonical distance(i, j): acc = 0; for t = 0..D-1: acc = acc + (s_i[t] - s_j[t])^2,
//     every operation rounded separately. The file is built with -ffp-contract=off so the
//     compiler never fuses a multiply and an add, except in the clearly marked screening
//     code of the clustering (whose error is bounded and which never decides alone, see
//     "Clustering" below). The PyTorch path performs the same operations in the same order,
//     so both paths see bit-identical distances and return identical indices.
//   * NaN distances count as +inf; ties are broken by the lower patch index; the patch
//     itself is always first.
//   * aggregation: out = bias; for k in order: out = out + W[k] * x[idx[k]] (same as PyTorch).
//
// Vectorisation: GCC vector extensions (64-byte vectors) in bodies that are inlined into
// functions compiled for several ISAs with target_clones("avx512f", "arch=haswell",
// "default"); the loader picks the best clone for the CPU at run time (ifunc), so the binary
// runs on any x86-64. Threads: OpenMP (the runtime torch uses), dynamic scheduling so that a
// thread delayed by other processes does not hold the others back; the number of threads is
// torch.get_num_threads().
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(DCCONV_NO_CLONES)
#define DCCONV_CLONES \
  __attribute__((target_clones("avx512f", "arch=haswell", "default")))
#else
#define DCCONV_CLONES
#endif
#define DCCONV_INLINE inline __attribute__((always_inline))

namespace dcconv {

// Whether regular images use the norm-expansion screen (tests switch it off to exercise the
// direct screen on ordinary data; the result is the same either way).
static bool g_dot_screen = true;
void set_dot_screen(bool on) { g_dot_screen = on; }
bool get_dot_screen() { return g_dot_screen; }

// Threads for a parallel loop of `tasks` tasks doing about `work` multiply-adds in all:
// torch's setting, at most one thread per ~2M multiply-adds (~1 ms: a parallel region can
// cost that much on a busy machine), 1 inside another parallel region (no nesting).
inline int num_threads_for(int64_t tasks, int64_t work) {
  if (at::in_parallel_region() || omp_in_parallel()) return 1;
  const int64_t by_work = std::max<int64_t>(1, work / (int64_t(1) << 21));
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({tasks, by_work, int64_t(at::get_num_threads())})));
}

template <typename T>
struct Vec;
template <>
struct Vec<float> {
  typedef float type __attribute__((vector_size(64)));
  static constexpr int L = 16;
};
template <>
struct Vec<double> {
  typedef double type __attribute__((vector_size(64)));
  static constexpr int L = 8;
};

constexpr int kRowSub = 4;  // rows of one register block
constexpr int kPanelVecs = 2;  // vectors (of L columns) per register block / packed panel

// ---------------------------------------------------------------------------------------
// Clustering
//
// The canonical distance e_j (separately rounded multiply and add, see the top of the file)
// decides the clusters. To run at fused-multiply-add speed, the register blocks compute a
// *screening* distance s_j where the compiler may fuse (fp-contract=fast: FMA in the
// AVX-512 / Haswell clones). Both are sums of the same D non-negative terms
// (x_i[t] - x_j[t])^2 (identical rounded differences) with at most one rounding more or
// less per step, so with u = 2^-24 (2^-53 for double), S the exact sum of the terms and
// g = D u / (1 - D u):  |s_j - S| <= g S  and  |e_j - S| <= g S, hence
//     e_j <= screen(s_j)  and  s_j <= screen(e_j),   screen(v) = v (1 + 3 (D + 1) u) + slack
// (slack covers subnormals; screen(v) = inf for v near overflow, where no bound is used).
//
// Per row a candidate list is kept, sorted by (s, j), that provably contains the exact
// top-(K-1) by (e, j) among the columns seen so far: if s_(m) is the m-th smallest screened
// distance in the list, no column with s_j > band = screen(screen(s_(m))) can beat all of
// those m columns, so such columns are never inserted and are trimmed from the tail. Near
// ties (or exact ties, e.g. duplicated patches) can grow the list; when it reaches its
// capacity it is "resolved": canonical distances are computed for its entries and only the
// exact top-(K-1) is kept. At the end of the row the canonical distances of the (about K-1)
// survivors are computed and sorted by (e, j). The result is therefore identical to
// evaluating the canonical distance for every pair, at the cost of ~K canonical
// evaluations per row.
//
// Expansion screen. For images whose sub-vectors are all finite and D >= 8, the screen
// reads the sub-vectors centred on the image mean, c_j = fl(x_j - mean) (distances are
// translation invariant; centring keeps the norms and so the bound small), and computes
// s_j = |c_i|^2 + |c_j|^2 - 2 <c_i, c_j> (one FMA per pair and channel instead of a
// subtraction and an FMA). With S the exact squared distance of the raw sub-vectors and S'
// that of the centred ones, |S' - S| <= 2u (|c_i|^2 + |c_j|^2) + u S (rounding of the
// centring) and |s_j - S'| <= (2D + 5) u (|c_i|^2 + |c_j|^2) (norms, dot product, final
// combination), so |s_j - S| <= E_i + u S with
// E_i = (2D + 12) u (|c_i|^2 + max_j |c_j|^2) + subnormal slack, while the canonical distance
// satisfies |e_j - S| <= (D + 4) u S. Hence a column can beat the m-th list entry (screened
// s_(m)) only if s_j <= dot_band(s_(m)) = (s_(m) + E_i)(1 + (3D + 16) u) + E_i (rounded up),
// and the list logic above is unchanged (it only needs a band that is monotone in s).
// Images with non-finite values, huge norms or D < 8 use the direct screen.
// ---------------------------------------------------------------------------------------
template <typename T>
struct ClusterArgs {
  const T* s;        // (B, N, D) sub-vectors (canonical distances)
  const T* scr;      // (B, N, D) the values the screen reads (s, or s centred: see below)
  const T* panels;   // (B, P, D, PW) column panels of scr, zero padded
  const T* norms;    // (B, P * PW) squared norms of the sub-vectors, zero padded
  const T* nbmax;    // (B) largest squared norm of each image
  const uint8_t* dot_mode;  // (B) screen with the norm expansion (regular images only)
  int64_t* out;      // (B, N, Kc)
  int64_t N, D, P, Kc;
};

// Canonical distance (NaN -> +inf); compiled with fp-contract=off (file default) and kept
// out of line so it is never merged into the contracted screening code.
template <typename T>
__attribute__((noinline)) T exact_sq_dist(const T* a, const T* b, int64_t D) {
  T acc = 0;
  for (int64_t t = 0; t < D; ++t) {
    T diff = a[t] - b[t];
    T sq = diff * diff;
    acc = acc + sq;
  }
  return std::isnan(acc) ? std::numeric_limits<T>::infinity() : acc;
}

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

// Candidate list of one row (see above), sorted by (screened distance, index); storage is
// provided by the caller.
template <typename T>
struct RowCands {
  T* sig;        // screened distances, ascending (ties: ascending index)
  int64_t* idx;  // column indices
  T* ex;         // scratch for canonical distances
  int64_t n;     // entries
  T band;        // insertion threshold on screened distances
  T eps;         // expansion screen: error bound E_i of the row; < 0: direct screen
};

template <typename T>
struct ListCtx {
  const T* srow;   // sub-vector of the row
  const T* s;      // sub-vectors of the image
  int64_t D, m, cap;
  std::vector<int64_t>* ord;  // scratch
  std::vector<T>* tmp;        // scratch
  std::vector<int64_t>* tmpi;  // scratch
};

template <typename T>
inline void update_band(RowCands<T>& c, const ListCtx<T>& x) {
  if (c.n < x.m) {
    c.band = std::numeric_limits<T>::infinity();
    return;
  }
  c.band = c.eps < 0 ? screen_bound<T>(screen_bound<T>(c.sig[x.m - 1], x.D), x.D)
                     : dot_band<T>(c.sig[x.m - 1], c.eps, x.D);
  while (c.n > x.m && c.sig[c.n - 1] > c.band) --c.n;
}

// Canonical distances of all entries and the permutation sorting them by (canonical, index).
template <typename T>
void exact_order(RowCands<T>& c, const ListCtx<T>& x) {
  std::vector<int64_t>& ord = *x.ord;
  ord.resize(c.n);
  for (int64_t q = 0; q < c.n; ++q) {
    ord[q] = q;
    c.ex[q] = exact_sq_dist<T>(x.srow, x.s + c.idx[q] * x.D, x.D);
  }
  std::sort(ord.begin(), ord.end(), [&](int64_t a, int64_t b) {
    return c.ex[a] < c.ex[b] || (c.ex[a] == c.ex[b] && c.idx[a] < c.idx[b]);
  });
}

// Keep only the exact top-m of the list (near-ties filled it up), in (screened, index) order.
template <typename T>
void resolve_exact(RowCands<T>& c, const ListCtx<T>& x) {
  exact_order(c, x);
  std::vector<int64_t>& ord = *x.ord;
  const int64_t k = std::min(x.m, c.n);
  ord.resize(k);
  std::sort(ord.begin(), ord.end(), [&](int64_t a, int64_t b) {
    return c.sig[a] < c.sig[b] || (c.sig[a] == c.sig[b] && c.idx[a] < c.idx[b]);
  });
  std::vector<T>& sg = *x.tmp;
  std::vector<int64_t>& id = *x.tmpi;
  sg.resize(k);
  id.resize(k);
  for (int64_t q = 0; q < k; ++q) {
    sg[q] = c.sig[ord[q]];
    id[q] = c.idx[ord[q]];
  }
  for (int64_t q = 0; q < k; ++q) {
    c.sig[q] = sg[q];
    c.idx[q] = id[q];
  }
  c.n = k;
}

// Sort the entries by (screened distance, index): insertion sort, the lists are short.
template <typename T>
inline void sort_screened(RowCands<T>& c) {
  for (int64_t q = 1; q < c.n; ++q) {
    const T v = c.sig[q];
    const int64_t j = c.idx[q];
    int64_t pos = q;
    while (pos > 0 && (c.sig[pos - 1] > v || (c.sig[pos - 1] == v && c.idx[pos - 1] > j))) {
      c.sig[pos] = c.sig[pos - 1];
      c.idx[pos] = c.idx[pos - 1];
      --pos;
    }
    c.sig[pos] = v;
    c.idx[pos] = j;
  }
}

// Offer column j (screened distance sg <= band, NaN already mapped to +inf); j is larger
// than every index already offered, so among equal screened distances it goes last.
template <typename T>
inline void offer(RowCands<T>& c, const ListCtx<T>& x, T sg, int64_t j) {
  if (c.n == x.cap) {
    resolve_exact(c, x);
    update_band(c, x);
    if (!(sg <= c.band)) return;
  }
  int64_t pos = c.n;
  while (pos > 0 && c.sig[pos - 1] > sg) {
    c.sig[pos] = c.sig[pos - 1];
    c.idx[pos] = c.idx[pos - 1];
    --pos;
  }
  c.sig[pos] = sg;
  c.idx[pos] = j;
  ++c.n;
  if (pos < x.m) update_band(c, x);
}

template <typename T>
void finish_row(RowCands<T>& c, const ListCtx<T>& x, int64_t* out) {
  // the list holds every other patch (N - 1 <= m) or a superset of the exact top-m
  exact_order(c, x);
  const std::vector<int64_t>& ord = *x.ord;
  for (int64_t q = 0; q < x.m; ++q) out[q] = c.idx[ord[q]];
}

template <typename T>
struct MaskInt;
template <>
struct MaskInt<float> {
  typedef int32_t type __attribute__((vector_size(64)));
};
template <>
struct MaskInt<double> {
  typedef int64_t type __attribute__((vector_size(64)));
};

// Bit l of the result: lane l (over the kPanelVecs vectors) is <= w. NaN lanes are not.
template <typename T>
DCCONV_INLINE uint32_t le_mask(const typename Vec<T>::type* a, T w) {
  typedef typename Vec<T>::type V;
  typedef typename MaskInt<T>::type M;
  typedef std::remove_reference_t<decltype(M{}[0])> I;
  constexpr int L = Vec<T>::L;
  static_assert(kPanelVecs == 2 && 2 * L <= 32, "mask layout");
  M bit;
  for (int l = 0; l < L; ++l) bit[l] = I(1) << l;
  const V wv = V{} + w;
  const M zero = M{};
  M m = (a[0] <= wv) ? bit : zero;
  m = m | ((a[1] <= wv) ? (bit << L) : zero);
  if constexpr (L == 16) {
    m = m | __builtin_shufflevector(m, m, 8, 9, 10, 11, 12, 13, 14, 15, 0, 1, 2, 3, 4, 5, 6, 7);
    m = m | __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3);
    m = m | __builtin_shufflevector(m, m, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3, 0, 1);
    m = m | __builtin_shufflevector(m, m, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0);
  } else {
    m = m | __builtin_shufflevector(m, m, 4, 5, 6, 7, 0, 1, 2, 3);
    m = m | __builtin_shufflevector(m, m, 2, 3, 0, 1, 2, 3, 0, 1);
    m = m | __builtin_shufflevector(m, m, 1, 0, 1, 0, 1, 0, 1, 0);
  }
  return static_cast<uint32_t>(m[0]);
}

#pragma GCC push_options
#pragma GCC optimize("fp-contract=fast")
// Rows [i0, i1) of image b: screening distances to all N patches, panel by panel, in
// kRowSub x PW register blocks; lanes under a row's band are offered to its list.
template <typename T, bool kDot>
DCCONV_INLINE void cluster_rows_impl(const ClusterArgs<T>& a, int64_t b, int64_t i0,
                                     int64_t i1) {
  typedef typename Vec<T>::type V;
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
  const int64_t cap = 2 * m + 32;
  std::vector<T> sig(R * cap), ex(R * cap);
  std::vector<int64_t> ids(R * cap);
  std::vector<RowCands<T>> cands(R);
  std::vector<int64_t> ord, tmpi;
  std::vector<T> tmp;
  ord.reserve(cap);
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

  for (int64_t p = 0; p < a.P; ++p) {
    const T* pan = panels + p * D * PW;
    const int64_t j0 = p * PW;
    for (int64_t r0 = 0; r0 < R; r0 += kRowSub) {
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
      }
      // spill the block once (reading single lanes right after a vector store would stall
      // on store forwarding)
      alignas(64) T block[kRowSub][PW];
      for (int r = 0; r < kRowSub; ++r)
        for (int v = 0; v < kPanelVecs; ++v)
          *reinterpret_cast<V*>(&block[r][v * L]) = acc[r][v];
      const int rn = static_cast<int>(std::min<int64_t>(kRowSub, R - r0));
      for (int r = 0; r < rn; ++r) {
        const T* lanes = block[r];
        RowCands<T>& cr = cands[r0 + r];
        const int64_t i = i0 + r0 + r;
        uint32_t mask;
        if (cr.n == 0) {
          // first panel of the row: take all lanes at once, sort, trim to the band
          for (int lane = 0; lane < PW && j0 + lane < N; ++lane) {
            if (j0 + lane == i) continue;
            cr.sig[cr.n] = std::isnan(lanes[lane]) ? inf : lanes[lane];
            cr.idx[cr.n] = j0 + lane;
            ++cr.n;
          }
          const ListCtx<T> ctx{s + i * D, s, D, m, cap, &ord, &tmp, &tmpi};
          sort_screened(cr);
          update_band(cr, ctx);
          continue;
        }
        if (cr.band == inf) {  // list not full (or only +inf): offer every lane
          mask = PW == 32 ? 0xFFFFFFFFu : ((1u << PW) - 1u);
        } else {
          mask = le_mask<T>(acc[r], cr.band);
          if (!mask) continue;
        }
        const ListCtx<T> ctx{s + i * D, s, D, m, cap, &ord, &tmp, &tmpi};
        while (mask) {
          const int lane = __builtin_ctz(mask);
          mask &= mask - 1;
          const int64_t j = j0 + lane;
          if (j >= N) break;
          if (j == i) continue;
          T sg = lanes[lane];
          if (std::isnan(sg)) sg = inf;
          if (sg <= cr.band) offer<T>(cr, ctx, sg, j);
        }
      }
    }
  }
  for (int64_t r = 0; r < R; ++r) {
    const int64_t i = i0 + r;
    out[r * Kc] = i;
    const ListCtx<T> ctx{s + i * D, s, D, m, cap, &ord, &tmp, &tmpi};
    finish_row<T>(cands[r], ctx, out + r * Kc + 1);
  }
}

DCCONV_CLONES void cluster_rows_f32(const ClusterArgs<float>& a, int64_t b, int64_t i0,
                                    int64_t i1) {
  if (a.dot_mode[b])
    cluster_rows_impl<float, true>(a, b, i0, i1);
  else
    cluster_rows_impl<float, false>(a, b, i0, i1);
}
DCCONV_CLONES void cluster_rows_f64(const ClusterArgs<double>& a, int64_t b, int64_t i0,
                                    int64_t i1) {
  if (a.dot_mode[b])
    cluster_rows_impl<double, true>(a, b, i0, i1);
  else
    cluster_rows_impl<double, false>(a, b, i0, i1);
}
#pragma GCC pop_options

inline void cluster_rows(const ClusterArgs<float>& a, int64_t b, int64_t i0, int64_t i1) {
  cluster_rows_f32(a, b, i0, i1);
}
inline void cluster_rows(const ClusterArgs<double>& a, int64_t b, int64_t i0, int64_t i1) {
  cluster_rows_f64(a, b, i0, i1);
}

template <typename T>
void cluster_kernel(const at::Tensor& s, at::Tensor& out, int64_t Kc) {
  constexpr int PW = Vec<T>::L * kPanelVecs;
  const int64_t B = s.size(0), N = s.size(1), D = s.size(2);
  const int64_t P = (N + PW - 1) / PW;
  const T* sp = s.data_ptr<T>();
  // Per image: the screen (expansion for regular images with D >= 8, direct otherwise), the
  // values it reads (centred on the image mean for the expansion: distances do not change,
  // the norms and so the error bound shrink), their squared norms (any summation order:
  // they only enter the screen and its bound) and the largest norm.
  at::Tensor scr = at::empty({B, N, D}, s.options());
  at::Tensor norms = at::zeros({B, P * PW}, s.options());
  at::Tensor nbmax = at::zeros({B}, s.options());
  std::vector<uint8_t> dot_mode(B, 0);
  T* cp = scr.data_ptr<T>();
  T* np = norms.data_ptr<T>();
  T* mp = nbmax.data_ptr<T>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> mean(D);
    for (int64_t b = begin; b < end; ++b) {
      const T* src = sp + b * N * D;
      T* dst = cp + b * N * D;
      bool finite = true;
      std::fill(mean.begin(), mean.end(), T(0));
      for (int64_t j = 0; j < N; ++j)
        for (int64_t t = 0; t < D; ++t) {
          finite &= std::isfinite(src[j * D + t]);
          mean[t] += src[j * D + t];
        }
      bool dot = finite && g_dot_screen && D >= 8;
      for (int64_t t = 0; t < D; ++t) mean[t] = dot ? mean[t] / T(N) : T(0);
      T mx = 0;
      for (int64_t j = 0; j < N; ++j) {
        T acc = 0;
        for (int64_t t = 0; t < D; ++t) {
          const T v = src[j * D + t] - mean[t];
          dst[j * D + t] = v;
          acc = acc + v * v;
        }
        np[b * P * PW + j] = acc;
        mx = std::max(mx, acc);
      }
      dot = dot && mx < std::numeric_limits<T>::max() / 16;
      if (!dot) std::copy(src, src + N * D, dst);  // the direct screen reads the raw values
      mp[b] = mx;
      dot_mode[b] = dot;
    }
  });
  // pack column panels: panels[b][p][t][jj] = scr[b][p*PW + jj][t]
  at::Tensor panels = at::zeros({B, P, D, PW}, s.options());
  T* pp = panels.data_ptr<T>();
  at::parallel_for(0, B * P, 16, [&](int64_t begin, int64_t end) {
    for (int64_t bp = begin; bp < end; ++bp) {
      const int64_t b = bp / P, p = bp % P;
      T* dst = pp + bp * D * PW;
      const int64_t jn = std::min<int64_t>(PW, N - p * PW);
      for (int64_t jj = 0; jj < jn; ++jj) {
        const T* src = cp + (b * N + p * PW + jj) * D;
        for (int64_t t = 0; t < D; ++t) dst[t * PW + jj] = src[t];
      }
    }
  });
  ClusterArgs<T> args{sp, cp, pp, np, mp, dot_mode.data(), out.data_ptr<int64_t>(), N, D, P, Kc};
  // Row blocks: big enough to reuse each panel from L1 for many rows, small enough to give
  // every thread work.
  const int64_t threads = at::get_num_threads();
  int64_t rb = 64;
  while (rb > kRowSub && B * ((N + rb - 1) / rb) < 4 * threads) rb /= 2;
  const int64_t nblk = (N + rb - 1) / rb;
  const int64_t ntasks = B * nblk;
  const int nt = num_threads_for(ntasks, B * N * N * D);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < ntasks; ++task) {
    const int64_t b = task / nblk, i0 = (task % nblk) * rb;
    cluster_rows(args, b, i0, std::min(N, i0 + rb));
  }
}

at::Tensor cluster_forward(const at::Tensor& s_in, int64_t kernel_size) {
  TORCH_CHECK(s_in.device().is_cpu(), "cluster_forward: sub-vectors must be a CPU tensor");
  TORCH_CHECK(s_in.dim() == 3, "cluster_forward: sub-vectors must be (B, N, D), got ",
              s_in.sizes());
  TORCH_CHECK(kernel_size >= 1, "cluster_forward: kernel_size must be >= 1");
  TORCH_CHECK(s_in.scalar_type() == at::kFloat || s_in.scalar_type() == at::kDouble,
              "cluster_forward: sub-vectors must be float32 or float64, got ",
              s_in.scalar_type());
  at::Tensor s = s_in.contiguous();
  const int64_t B = s.size(0), N = s.size(1);
  TORCH_CHECK(N < (int64_t(1) << 31), "cluster_forward: too many patches");
  const int64_t Kc = std::min<int64_t>(kernel_size, N);
  at::Tensor out = at::empty({B, N, Kc}, s.options().dtype(at::kLong));
  if (B == 0 || N == 0) return out;
  if (s.scalar_type() == at::kFloat)
    cluster_kernel<float>(s, out, Kc);
  else
    cluster_kernel<double>(s, out, Kc);
  return out;
}

// ---------------------------------------------------------------------------------------
// Aggregation
// ---------------------------------------------------------------------------------------
template <typename T>
struct AggArgs {
  const T* x;        // (B, N, C)
  const int64_t* idx;  // (B, N, Kc)
  const T* w;        // (>= Kc, C)
  const T* bias;     // (C) or nullptr
  T* y;              // (B, N, C)
  int64_t N, C, Kc;
};

template <typename T>
DCCONV_INLINE void aggregate_rows_impl(const AggArgs<T>& a, int64_t r0, int64_t r1) {
  const int64_t N = a.N, C = a.C, Kc = a.Kc;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t b = r / N;
    T* __restrict__ y = a.y + r * C;
    if (a.bias) {
      std::memcpy(y, a.bias, sizeof(T) * C);
    } else {
      std::fill(y, y + C, T(0));
    }
    const int64_t* id = a.idx + r * Kc;
    for (int64_t k = 0; k < Kc; ++k) {
      const T* __restrict__ xr = a.x + (b * N + id[k]) * C;
      const T* __restrict__ wk = a.w + k * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        T prod = wk[c] * xr[c];
        y[c] = y[c] + prod;
      }
    }
  }
}

DCCONV_CLONES void aggregate_rows_f32(const AggArgs<float>& a, int64_t r0, int64_t r1) {
  aggregate_rows_impl<float>(a, r0, r1);
}
DCCONV_CLONES void aggregate_rows_f64(const AggArgs<double>& a, int64_t r0, int64_t r1) {
  aggregate_rows_impl<double>(a, r0, r1);
}
inline void aggregate_rows(const AggArgs<float>& a, int64_t r0, int64_t r1) {
  aggregate_rows_f32(a, r0, r1);
}
inline void aggregate_rows(const AggArgs<double>& a, int64_t r0, int64_t r1) {
  aggregate_rows_f64(a, r0, r1);
}

template <typename T>
void aggregate_parallel(const AggArgs<T>& a, int64_t rows) {
  const int64_t chunk = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, a.C * a.Kc));
  const int64_t nchunks = (rows + chunk - 1) / chunk;
  const int nt = num_threads_for(nchunks, rows * a.C * a.Kc);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t q = 0; q < nchunks; ++q)
    aggregate_rows(a, q * chunk, std::min(rows, (q + 1) * chunk));
}

void check_idx(const at::Tensor& idx, int64_t N) {
  const int64_t* p = idx.data_ptr<int64_t>();
  const int64_t n = idx.numel();
  bool ok = true;
  for (int64_t q = 0; q < n; ++q) ok &= (p[q] >= 0) & (p[q] < N);
  TORCH_CHECK(ok, "dcconv: idx holds indices outside [0, ", N, ")");
}

void check_agg_inputs(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& w) {
  TORCH_CHECK(x.device().is_cpu() && idx.device().is_cpu() && w.device().is_cpu(),
              "dcconv (cpu): all tensors must be on the CPU");
  TORCH_CHECK(x.dim() == 3, "dcconv: x must be (B, N, C), got ", x.sizes());
  TORCH_CHECK(idx.dim() == 3 && idx.size(0) == x.size(0) && idx.size(1) == x.size(1),
              "dcconv: idx must be (B, N, Kc), got ", idx.sizes(), " for x ", x.sizes());
  TORCH_CHECK(idx.scalar_type() == at::kLong, "dcconv: idx must be int64");
  TORCH_CHECK(w.dim() == 2 && w.size(1) == x.size(2) && w.size(0) >= idx.size(2),
              "dcconv: weight must be (K >= Kc, C), got ", w.sizes());
  TORCH_CHECK(x.scalar_type() == w.scalar_type(), "dcconv: x and weight dtypes differ");
  TORCH_CHECK(x.scalar_type() == at::kFloat || x.scalar_type() == at::kDouble,
              "dcconv (cpu): x must be float32 or float64 (cast half types first)");
  TORCH_CHECK(x.is_contiguous() && idx.is_contiguous() && w.is_contiguous(),
              "dcconv (cpu): tensors must be contiguous");
}

at::Tensor aggregate_forward(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias) {
  check_agg_inputs(x, idx, w);
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), Kc = idx.size(2);
  if (bias.has_value()) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == C && bias->is_contiguous() &&
                    bias->scalar_type() == x.scalar_type() && bias->device().is_cpu(),
                "dcconv: bias must be a contiguous (C,) CPU tensor of the dtype of x");
  }
  check_idx(idx, N);
  at::Tensor y = at::empty({B, N, C}, x.options());
  if (y.numel() == 0) return y;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dcconv_aggregate_forward", [&] {
    AggArgs<scalar_t> a{x.data_ptr<scalar_t>(), idx.data_ptr<int64_t>(),
                        w.data_ptr<scalar_t>(),
                        bias.has_value() ? bias->data_ptr<scalar_t>() : nullptr,
                        y.data_ptr<scalar_t>(), N, C, Kc};
    aggregate_parallel(a, B * N);
  });
  return y;
}

// Backward. Work unit = (image b, channel range [c0, c1)); inside it the rows n and taps k
// run in increasing order, so every output element is summed in a fixed order:
//   grad_x[b, m, c] = sum over (n, k) with idx[b, n, k] = m, in (n, k) order, of W[k,c] g[b,n,c]
//   grad_W[k, c]    = sum over b (in order) of  sum over n (in order) of g[b,n,c] x[b,idx,c]
//   grad_b[c]       = the same for g[b, n, c]
// Per-image partial sums of grad_W / grad_b are reduced over b in order afterwards.
template <typename T>
struct BwdArgs {
  const T* g;          // (B, N, C)
  const T* x;          // (B, N, C)
  const int64_t* idx;  // (B, N, Kc)
  const T* w;          // (K, C)
  T* gx;               // (B, N, C) zeroed, or nullptr
  T* pw;               // (B, Kc, C) zeroed partials, or nullptr
  T* pb;               // (B, C) zeroed partials, or nullptr
  int64_t N, C, Kc;
};

template <typename T>
DCCONV_INLINE void backward_block_impl(const BwdArgs<T>& a, int64_t b, int64_t c0,
                                       int64_t c1) {
  const int64_t N = a.N, C = a.C, Kc = a.Kc, nc = c1 - c0;
  T* __restrict__ pb = a.pb ? a.pb + b * C + c0 : nullptr;
  for (int64_t n = 0; n < N; ++n) {
    const T* __restrict__ g = a.g + (b * N + n) * C + c0;
    if (pb) {
#pragma omp simd
      for (int64_t c = 0; c < nc; ++c) pb[c] = pb[c] + g[c];
    }
    const int64_t* id = a.idx + (b * N + n) * Kc;
    for (int64_t k = 0; k < Kc; ++k) {
      const int64_t src = (b * N + id[k]) * C + c0;
      if (a.pw) {
        const T* __restrict__ xr = a.x + src;
        T* __restrict__ pw = a.pw + (b * Kc + k) * C + c0;
#pragma omp simd
        for (int64_t c = 0; c < nc; ++c) {
          T prod = g[c] * xr[c];
          pw[c] = pw[c] + prod;
        }
      }
      if (a.gx) {
        T* __restrict__ gx = a.gx + src;
        const T* __restrict__ wk = a.w + k * C + c0;
#pragma omp simd
        for (int64_t c = 0; c < nc; ++c) {
          T prod = wk[c] * g[c];
          gx[c] = gx[c] + prod;
        }
      }
    }
  }
}

DCCONV_CLONES void backward_block_f32(const BwdArgs<float>& a, int64_t b, int64_t c0,
                                      int64_t c1) {
  backward_block_impl<float>(a, b, c0, c1);
}
DCCONV_CLONES void backward_block_f64(const BwdArgs<double>& a, int64_t b, int64_t c0,
                                      int64_t c1) {
  backward_block_impl<double>(a, b, c0, c1);
}
inline void backward_block(const BwdArgs<float>& a, int64_t b, int64_t c0, int64_t c1) {
  backward_block_f32(a, b, c0, c1);
}
inline void backward_block(const BwdArgs<double>& a, int64_t b, int64_t c0, int64_t c1) {
  backward_block_f64(a, b, c0, c1);
}

template <typename T>
void backward_parallel(const BwdArgs<T>& a, int64_t B, int64_t ncr, int64_t cw) {
  const int64_t ntasks = B * ncr;
  const int nt = num_threads_for(ntasks, 2 * B * a.N * a.C * a.Kc);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < ntasks; ++task) {
    const int64_t b = task / ncr, c0 = (task % ncr) * cw;
    backward_block(a, b, c0, std::min(a.C, c0 + cw));
  }
}

std::vector<at::Tensor> aggregate_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                           const at::Tensor& idx, const at::Tensor& w,
                                           bool need_x, bool need_w, bool need_b) {
  check_agg_inputs(x, idx, w);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type() &&
                  grad_out.is_contiguous(),
              "dcconv: grad_out must be a contiguous tensor like x");
  const int64_t B = x.size(0), N = x.size(1), C = x.size(2), Kc = idx.size(2);
  at::Tensor gx = need_x ? at::zeros_like(x) : at::Tensor();
  at::Tensor gw = need_w ? at::zeros_like(w) : at::Tensor();
  at::Tensor gb = need_b ? at::zeros({C}, x.options()) : at::Tensor();
  if (x.numel() == 0 || !(need_x || need_w || need_b)) return {gx, gw, gb};
  // per-image partials, written directly into the result when B == 1
  at::Tensor pw, pb;
  if (need_w) pw = B == 1 ? gw.narrow(0, 0, Kc) : at::zeros({B, Kc, C}, x.options());
  if (need_b) pb = B == 1 ? gb.view({1, C}) : at::zeros({B, C}, x.options());
  // channel ranges: multiples of 16, enough of them to give every thread work
  const int64_t threads = at::get_num_threads();
  const int64_t want = std::max<int64_t>(1, (4 * threads + B - 1) / B);
  int64_t cw = (C + want - 1) / want;
  cw = std::max<int64_t>(16, (cw + 15) / 16 * 16);
  const int64_t ncr = (C + cw - 1) / cw;
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "dcconv_aggregate_backward", [&] {
    BwdArgs<scalar_t> a{grad_out.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(),
                        idx.data_ptr<int64_t>(), w.data_ptr<scalar_t>(),
                        need_x ? gx.data_ptr<scalar_t>() : nullptr,
                        need_w ? pw.data_ptr<scalar_t>() : nullptr,
                        need_b ? pb.data_ptr<scalar_t>() : nullptr, N, C, Kc};
    backward_parallel(a, B, ncr, cw);
    if (B > 1) {
      // reduce the per-image partials over b in increasing order
      const int64_t rows = (need_w ? Kc : 0) + (need_b ? 1 : 0);
      at::parallel_for(0, rows * C, 256, [&](int64_t begin, int64_t end) {
        for (int64_t e = begin; e < end; ++e) {
          const int64_t row = e / C, c = e % C;
          const bool is_w = need_w && row < Kc;
          const scalar_t* src = is_w ? pw.data_ptr<scalar_t>() + row * C + c
                                     : pb.data_ptr<scalar_t>() + c;
          const int64_t stride = is_w ? Kc * C : C;
          scalar_t acc = 0;
          for (int64_t bb = 0; bb < B; ++bb) acc = acc + src[bb * stride];
          if (is_w)
            gw.data_ptr<scalar_t>()[row * C + c] = acc;
          else
            gb.data_ptr<scalar_t>()[c] = acc;
        }
      });
    }
  });
  return {gx, gw, gb};
}

}  // namespace dcconv
