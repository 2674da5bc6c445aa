// Aggregation kernels of DCConv, one copy per ISA: included by common/isa_instantiate.h (from
// cpu/aggregate.cpp) once per ISA, inside that ISA's target pragma; no include guard on
// purpose, and no #include (every header comes first, see "ODR" in common/dcconv_common.h).
//
// Every output element is one chain of separately rounded multiplies and adds in a fixed
// order (the file-wide -ffp-contract=off holds here, also in the AVX2 / AVX-512 copies, which
// therefore use no FMA): the vectors only process several channels c at once, so every ISA
// returns bit-identical results, and the same as the PyTorch path.
#ifndef DCCONV_ISA
#error "aggregate_kernels.h is compiled through common/isa_instantiate.h"
#endif

namespace dcconv {
namespace DCCONV_ISA {

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

void aggregate_rows_f32(const AggArgs<float>& a, int64_t r0, int64_t r1) {
  aggregate_rows_impl<float>(a, r0, r1);
}
void aggregate_rows_f64(const AggArgs<double>& a, int64_t r0, int64_t r1) {
  aggregate_rows_impl<double>(a, r0, r1);
}
void backward_block_f32(const BwdArgs<float>& a, int64_t b, int64_t c0, int64_t c1) {
  backward_block_impl<float>(a, b, c0, c1);
}
void backward_block_f64(const BwdArgs<double>& a, int64_t b, int64_t c0, int64_t c1) {
  backward_block_impl<double>(a, b, c0, c1);
}

}  // namespace DCCONV_ISA
}  // namespace dcconv
