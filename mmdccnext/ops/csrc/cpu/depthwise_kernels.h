// 3x3 depthwise convolution kernels on channels-last maps, and the weight gradient of a 3x3
// or 7x7 one (the 7x7 mixers'), one copy per ISA: included by
// common/isa_instantiate.h (from cpu/depthwise.cpp) once per ISA, inside that ISA's target
// pragma; no include guard on purpose, and no #include (see "ODR" in common/dcconv_common.h).
//
// The channels are the vector lanes (channels-last: contiguous), so each lane computes its
// channel's chain exactly as a scalar loop would (the order is in common/dcconv_common.h;
// -ffp-contract=off holds here: no FMA): every ISA gives bit-identical results. A row of the
// output is one work unit, computed position by position (two at a time in the interior),
// all channels of a position before the next, so that the three input rows and the output
// row are read and written in memory order; the two positions share their input loads. The
// last C % lanes channels run the same code on scalars.
// Measured (one thread, AMD EPYC Zen 4, AVX-512, stage 1 of B2 at 224^2 b16: a (16, 56, 56,
// 384) map): forward 1.4x, backward 2x oneDNN's; orderings that keep the taps in registers
// along a row (channel vectors outermost, or blocks of 8 positions) streamed from memory no
// faster; what paid was prefetching the row below (kDwPrefetchAhead).
#ifndef DCCONV_ISA
#error "depthwise_kernels.h is compiled through common/isa_instantiate.h"
#endif

namespace dcconv {
namespace DCCONV_ISA {

// Unaligned, may-alias vectors of the ISA's width (the layout of GCC's __m512_u & co.).
template <typename T>
struct DwVec {
  typedef T type __attribute__((vector_size(DCCONV_VEC_BYTES), aligned(sizeof(T)), may_alias));
  static constexpr int64_t L = DCCONV_VEC_BYTES / sizeof(T);
};

// Interior positions computed together (sharing their input loads): as many as the
// registers hold with the 9 taps (32 zmm registers with AVX-512, 16 otherwise).
constexpr int kDwPoints = DCCONV_VEC_BYTES == 64 ? 4 : 2;
// Interior positions of one step of the weight gradient (its sums stay in memory).
constexpr int kDwGradPoints = 4;
// The row kernel reads the row below (y + 1) for the first time, from beyond the L2 cache on
// large maps; with the hardware prefetcher alone the AVX2 copy waited on it. Prefetching it
// this many positions ahead (measured, one thread, AMD EPYC Zen 4, a (1, 200, 320, 384) map:
// stage 1 of B2 at 1280 x 800): AVX2 30.5 -> 21.5 ms, AVX-512 21.5 -> 20.3 ms; 2 and 8
// positions ahead, or all three rows, gained less; the weight gradient (its sums in memory)
// gained nothing. Results are unchanged (a prefetch only). The gradient of the input runs
// the same row kernel.
constexpr int64_t kDwPrefetchAhead = 4;

template <typename V, typename T>
DCCONV_INLINE V dw_load(const T* p) {
  if constexpr (std::is_same_v<V, T>)
    return *p;
  else
    return *reinterpret_cast<const V*>(p);
}

template <typename V, typename T>
DCCONV_INLINE void dw_store(T* p, V v) {
  if constexpr (std::is_same_v<V, T>)
    *p = v;
  else
    *reinterpret_cast<V*>(p) = v;
}

// fn(lane type, px, c) for every channel vector c of position x0 (lane type: the ISA's
// vector), then for each of the last C % lanes channels (lane type: a scalar); px[i]: row i
// of `rows` at (x0, c), nullptr where the row is outside the map.
template <typename T, int K = 3, typename F>
DCCONV_INLINE void over_lanes(const T* const rows[K], int64_t x0, int64_t C, F&& fn) {
  typedef typename DwVec<T>::type V;
  constexpr int64_t L = DwVec<T>::L;
  auto at = [&](auto lane_type, int64_t c) {
    const T* px[K];
    for (int i = 0; i < K; ++i) px[i] = rows[i] ? rows[i] + x0 * C + c : nullptr;
    fn(lane_type, px, c);
  };
  int64_t c = 0;
  for (; c + L <= C; c += L) at(V{}, c);
  for (; c < C; ++c) at(T{}, c);
}

// rows[i]: row y + i - K / 2 of the (H, W, C) image whose row y is at in[row * W * C], or
// nullptr outside the image (`row` = b * H + y counts rows over the batch).
template <typename T, int K>
DCCONV_INLINE void window_rows(const T* in, int64_t row, int64_t y, int64_t H, int64_t W,
                               int64_t C, const T* rows[K]) {
  for (int i = 0; i < K; ++i) {
    const int64_t yy = y + i - K / 2;
    rows[i] = yy >= 0 && yy < H ? in + (row + i - K / 2) * W * C : nullptr;
  }
}

// kP consecutive positions x0 .. x0+kP-1 of an output row, lanes [c, c + lanes of V): out =
// bias + the valid taps in row-major order. px[i]: the input at (y+i-1, x0) (lane offset
// applied), nullptr outside the map; kLeft / kRight: column x0-1 / x0+kP exists. Each input
// vector is loaded once for the kP positions that read it.
template <typename V, typename T, int kP, bool kLeft, bool kRight>
DCCONV_INLINE void dw_points(const T* const px[3], const T* wp, V b0, T* out, int64_t C) {
  V w[9];
  for (int k = 0; k < 9; ++k) w[k] = dw_load<V>(wp + k * C);
  V acc[kP];
  for (int p = 0; p < kP; ++p) acc[p] = b0;
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
    if (!px[i]) continue;
    V col[kP + 2];  // columns x0-1 .. x0+kP
#pragma GCC unroll 8
    for (int q = 0; q < kP + 2; ++q)
      if ((q > 0 || kLeft) && (q < kP + 1 || kRight)) col[q] = dw_load<V>(px[i] + (q - 1) * C);
#pragma GCC unroll 8
    for (int p = 0; p < kP; ++p) {
      if (p > 0 || kLeft) acc[p] = acc[p] + w[3 * i] * col[p];
      acc[p] = acc[p] + w[3 * i + 1] * col[p + 1];
      if (p < kP - 1 || kRight) acc[p] = acc[p] + w[3 * i + 2] * col[p + 2];
    }
  }
  for (int p = 0; p < kP; ++p) dw_store(out + p * C, acc[p]);
}

// kP positions from x0 (in the row, all channels).
template <typename T, int kP, bool kLeft, bool kRight>
DCCONV_INLINE void dw_points_all(const DwArgs<T>& a, const T* const rows[3], T* out, int64_t x0) {
  const int64_t C = a.C;
  const bool prefetch = rows[2] && x0 + kDwPrefetchAhead < a.W;
  over_lanes<T>(rows, x0, C, [&](auto lane_type, const T* const px[3], int64_t c) {
    typedef decltype(lane_type) U;
    if (prefetch) __builtin_prefetch(px[2] + kDwPrefetchAhead * C);
    const U b0 = a.bias ? dw_load<U>(a.bias + c) : U{};
    dw_points<U, T, kP, kLeft, kRight>(px, a.w + c, b0, out + x0 * C + c, C);
  });
}

// One output row from its three input rows (nullptr: outside the map, zero padding).
template <typename T>
DCCONV_INLINE void dw_row_impl(const DwArgs<T>& a, const T* const rows[3], T* out) {
  const int64_t W = a.W;
  // position by position along the row, all channels of a position (or pair) before the
  // next: the three input rows and the output are read and written in memory order
  if (W == 1) {
    dw_points_all<T, 1, false, false>(a, rows, out, 0);
    return;
  }
  dw_points_all<T, 1, false, true>(a, rows, out, 0);
  int64_t x = 1;
  for (; x + kDwPoints < W; x += kDwPoints)
    dw_points_all<T, kDwPoints, true, true>(a, rows, out, x);
  for (; x < W - 1; ++x) dw_points_all<T, 1, true, true>(a, rows, out, x);
  dw_points_all<T, 1, true, false>(a, rows, out, W - 1);
}

template <typename T>
DCCONV_INLINE void dw_rows_impl(const DwArgs<T>& a, int64_t r0, int64_t r1) {
  const int64_t H = a.H, W = a.W, C = a.C;
  for (int64_t r = r0; r < r1; ++r) {
    const T* rows[3];
    window_rows<T, 3>(a.in, r, r % H, H, W, C, rows);
    dw_row_impl<T>(a, rows, a.out + r * W * C);
  }
}

// Weight gradient of a K x K kernel (r = K / 2): kP consecutive positions from x0 of row y,
// lanes [c, ...), all of whose taps lie inside the row: acc (in memory, (K * K + 1, C) with
// the lane offset applied: taps then bias) += g * input, positions in increasing x. px[i]: the
// input at (y + i - r, x0), nullptr outside the map.
template <typename V, typename T, int K, int kP>
DCCONV_INLINE void dw_grad_points(const T* const px[K], const T* g, T* accp, int64_t C) {
  constexpr int r = K / 2;
  V gv[kP];
  for (int p = 0; p < kP; ++p) gv[p] = dw_load<V>(g + p * C);
  V acc = dw_load<V>(accp + K * K * C);
  for (int p = 0; p < kP; ++p) acc = acc + gv[p];
  dw_store(accp + K * K * C, acc);
#pragma GCC unroll 7
  for (int i = 0; i < K; ++i) {
    if (!px[i]) continue;
    V col[kP + K - 1];  // columns x0 - r .. x0 + kP - 1 + r
#pragma GCC unroll 12
    for (int q = 0; q < kP + K - 1; ++q) col[q] = dw_load<V>(px[i] + (q - r) * C);
#pragma GCC unroll 7
    for (int j = 0; j < K; ++j) {
      V s = dw_load<V>(accp + (K * i + j) * C);
#pragma GCC unroll 8
      for (int p = 0; p < kP; ++p) s = s + gv[p] * col[p + j];
      dw_store(accp + (K * i + j) * C, s);
    }
  }
}

// The same for one position x0 whose taps j in [j0, j1) lie inside the row (the row's ends).
template <typename V, typename T, int K>
DCCONV_INLINE void dw_grad_edge(const T* const px[K], const T* g, T* accp, int64_t C, int j0,
                                int j1) {
  constexpr int r = K / 2;
  const V gv = dw_load<V>(g);
  dw_store(accp + K * K * C, dw_load<V>(accp + K * K * C) + gv);
  for (int i = 0; i < K; ++i) {
    if (!px[i]) continue;
    for (int j = j0; j < j1; ++j) {
      V s = dw_load<V>(accp + (K * i + j) * C);
      s = s + gv * dw_load<V>(px[i] + (j - r) * C);
      dw_store(accp + (K * i + j) * C, s);
    }
  }
}

// Partial sums of one task (image b, rows [y0, y1)) into partial (K * K + 1, C), zeroed here;
// (y, x) in increasing order for every lane.
template <typename T, int K>
DCCONV_INLINE void dw_grad_impl(const DwGradArgs<T>& a, int64_t b, int64_t y0, int64_t y1,
                                T* partial) {
  constexpr int r = K / 2;
  const int64_t H = a.H, W = a.W, C = a.C;
  std::fill(partial, partial + (K * K + 1) * C, T(0));
  for (int64_t y = y0; y < y1; ++y) {
    const int64_t row = b * H + y;
    const T* rows[K];
    window_rows<T, K>(a.in, row, y, H, W, C, rows);
    const T* g = a.g + row * W * C;
    for (int64_t x = 0; x < W;) {
      const bool interior = x >= r && x + kDwGradPoints - 1 + r < W;
      over_lanes<T, K>(rows, x, C, [&](auto lane_type, const T* const px[K], int64_t c) {
        typedef decltype(lane_type) U;
        if (interior) {
          dw_grad_points<U, T, K, kDwGradPoints>(px, g + x * C + c, partial + c, C);
        } else {
          const int j0 = static_cast<int>(std::max<int64_t>(0, r - x));
          const int j1 = static_cast<int>(std::min<int64_t>(K, W - x + r));
          dw_grad_edge<U, T, K>(px, g + x * C + c, partial + c, C, j0, j1);
        }
      });
      x += interior ? kDwGradPoints : 1;
    }
  }
}

template <typename T>
DCCONV_INLINE void dw_grad_any(const DwGradArgs<T>& a, int64_t b, int64_t y0, int64_t y1,
                               T* partial) {
  if (a.K == 7)
    dw_grad_impl<T, 7>(a, b, y0, y1, partial);
  else
    dw_grad_impl<T, 3>(a, b, y0, y1, partial);
}

void depthwise_rows_f32(const DwArgs<float>& a, int64_t r0, int64_t r1) {
  dw_rows_impl<float>(a, r0, r1);
}
void depthwise_rows_f64(const DwArgs<double>& a, int64_t r0, int64_t r1) {
  dw_rows_impl<double>(a, r0, r1);
}
void depthwise_row_f32(const DwArgs<float>& a, const float* const rows[3], float* out) {
  dw_row_impl<float>(a, rows, out);
}
void depthwise_row_f64(const DwArgs<double>& a, const double* const rows[3], double* out) {
  dw_row_impl<double>(a, rows, out);
}
void depthwise_grad_weight_f32(const DwGradArgs<float>& a, int64_t b, int64_t y0, int64_t y1,
                               float* partial) {
  dw_grad_any<float>(a, b, y0, y1, partial);
}
void depthwise_grad_weight_f64(const DwGradArgs<double>& a, int64_t b, int64_t y0, int64_t y1,
                               double* partial) {
  dw_grad_any<double>(a, b, y0, y1, partial);
}

}  // namespace DCCONV_ISA
}  // namespace dcconv
