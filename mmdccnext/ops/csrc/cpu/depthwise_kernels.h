// 3x3 depthwise convolution kernels on channels-last maps, one copy per ISA: included by
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
// faster, and software prefetching changed nothing.
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
template <typename T, typename F>
DCCONV_INLINE void over_lanes(const T* const rows[3], int64_t x0, int64_t C, F&& fn) {
  typedef typename DwVec<T>::type V;
  constexpr int64_t L = DwVec<T>::L;
  auto at = [&](auto lane_type, int64_t c) {
    const T* px[3];
    for (int i = 0; i < 3; ++i) px[i] = rows[i] ? rows[i] + x0 * C + c : nullptr;
    fn(lane_type, px, c);
  };
  int64_t c = 0;
  for (; c + L <= C; c += L) at(V{}, c);
  for (; c < C; ++c) at(T{}, c);
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
  over_lanes<T>(rows, x0, C, [&](auto lane_type, const T* const px[3], int64_t c) {
    typedef decltype(lane_type) U;
    const U b0 = a.bias ? dw_load<U>(a.bias + c) : U{};
    dw_points<U, T, kP, kLeft, kRight>(px, a.w + c, b0, out + x0 * C + c, C);
  });
}

template <typename T>
DCCONV_INLINE void dw_rows_impl(const DwArgs<T>& a, int64_t r0, int64_t r1) {
  const int64_t H = a.H, W = a.W, C = a.C;
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t y = r % H;
    const T* rows[3];
    for (int i = 0; i < 3; ++i) {
      const int64_t yy = y + i - 1;
      rows[i] = yy >= 0 && yy < H ? a.in + (r + i - 1) * W * C : nullptr;
    }
    T* out = a.out + r * W * C;
    // position by position along the row, all channels of a position (or pair) before the
    // next: the three input rows and the output are read and written in memory order
    if (W == 1) {
      dw_points_all<T, 1, false, false>(a, rows, out, 0);
      continue;
    }
    dw_points_all<T, 1, false, true>(a, rows, out, 0);
    int64_t x = 1;
    for (; x + kDwPoints < W; x += kDwPoints)
      dw_points_all<T, kDwPoints, true, true>(a, rows, out, x);
    for (; x < W - 1; ++x) dw_points_all<T, 1, true, true>(a, rows, out, x);
    dw_points_all<T, 1, true, false>(a, rows, out, W - 1);
  }
}

// Weight gradient: kP consecutive positions from x0 of row y, lanes [c, ...): acc (in
// memory, (10, C) with the lane offset applied: taps then bias) += g * input, positions in
// increasing x. px, kLeft, kRight as in dw_points.
template <typename V, typename T, int kP, bool kLeft, bool kRight>
DCCONV_INLINE void dw_grad_points(const T* const px[3], const T* g, T* accp, int64_t C) {
  V gv[kP];
  for (int p = 0; p < kP; ++p) gv[p] = dw_load<V>(g + p * C);
  V acc = dw_load<V>(accp + 9 * C);
  for (int p = 0; p < kP; ++p) acc = acc + gv[p];
  dw_store(accp + 9 * C, acc);
#pragma GCC unroll 3
  for (int i = 0; i < 3; ++i) {
    if (!px[i]) continue;
    V col[kP + 2];
#pragma GCC unroll 8
    for (int q = 0; q < kP + 2; ++q)
      if ((q > 0 || kLeft) && (q < kP + 1 || kRight)) col[q] = dw_load<V>(px[i] + (q - 1) * C);
#pragma GCC unroll 3
    for (int j = 0; j < 3; ++j) {
      V s = dw_load<V>(accp + (3 * i + j) * C);
#pragma GCC unroll 8
      for (int p = 0; p < kP; ++p)
        if ((p + j > 0 || kLeft) && (p + j < kP + 1 || kRight)) s = s + gv[p] * col[p + j];
      dw_store(accp + (3 * i + j) * C, s);
    }
  }
}

template <typename T, int kP, bool kLeft, bool kRight>
DCCONV_INLINE void dw_grad_points_all(const DwGradArgs<T>& a, const T* const rows[3],
                                      const T* g, T* partial, int64_t x0) {
  const int64_t C = a.C;
  over_lanes<T>(rows, x0, C, [&](auto lane_type, const T* const px[3], int64_t c) {
    dw_grad_points<decltype(lane_type), T, kP, kLeft, kRight>(px, g + x0 * C + c, partial + c,
                                                              C);
  });
}

// Partial sums of one task (image b, rows [y0, y1)) into partial (10, C), zeroed here; (y, x)
// in increasing order for every lane.
template <typename T>
DCCONV_INLINE void dw_grad_impl(const DwGradArgs<T>& a, int64_t b, int64_t y0, int64_t y1,
                                T* partial) {
  const int64_t H = a.H, W = a.W, C = a.C;
  std::fill(partial, partial + 10 * C, T(0));
  for (int64_t y = y0; y < y1; ++y) {
    const int64_t r = b * H + y;
    const T* rows[3];
    for (int i = 0; i < 3; ++i) {
      const int64_t yy = y + i - 1;
      rows[i] = yy >= 0 && yy < H ? a.in + (r + i - 1) * W * C : nullptr;
    }
    const T* g = a.g + r * W * C;
    if (W == 1) {
      dw_grad_points_all<T, 1, false, false>(a, rows, g, partial, 0);
      continue;
    }
    dw_grad_points_all<T, 1, false, true>(a, rows, g, partial, 0);
    int64_t x = 1;
    for (; x + kDwGradPoints < W; x += kDwGradPoints)
      dw_grad_points_all<T, kDwGradPoints, true, true>(a, rows, g, partial, x);
    for (; x < W - 1; ++x) dw_grad_points_all<T, 1, true, true>(a, rows, g, partial, x);
    dw_grad_points_all<T, 1, true, false>(a, rows, g, partial, W - 1);
  }
}

void depthwise_rows_f32(const DwArgs<float>& a, int64_t r0, int64_t r1) {
  dw_rows_impl<float>(a, r0, r1);
}
void depthwise_rows_f64(const DwArgs<double>& a, int64_t r0, int64_t r1) {
  dw_rows_impl<double>(a, r0, r1);
}
void depthwise_grad_weight_f32(const DwGradArgs<float>& a, int64_t b, int64_t y0, int64_t y1,
                               float* partial) {
  dw_grad_impl<float>(a, b, y0, y1, partial);
}
void depthwise_grad_weight_f64(const DwGradArgs<double>& a, int64_t b, int64_t y0, int64_t y1,
                               double* partial) {
  dw_grad_impl<double>(a, b, y0, y1, partial);
}

}  // namespace DCCONV_ISA
}  // namespace dcconv
