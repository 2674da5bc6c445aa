// Compiles the kernel header DCCONV_KERNELS (a path relative to this directory) once per ISA,
// each copy in namespace dcconv::<isa> with the macros it reads:
//   DCCONV_ISA          the namespace (generic, avx2, avx512)
//   DCCONV_VEC_BYTES    bytes of one GCC vector: the ISA's register width
//   DCCONV_ROW_SUB      rows of one clustering register block
//   DCCONV_PANEL_VECS   vectors (columns / lanes) of one clustering register block
//   DCCONV_MASK         how the clustering turns a compare into a bit mask (cluster_kernels.h)
// No include guard: it is included once by each op file (cpu/cluster.cpp, cpu/aggregate.cpp),
// after dcconv_common.h, i.e. after every std / torch header (see "ODR" there).
//
// Register blocking of the clustering's inner loop (per sub-vector channel t: ROW_SUB x
// PANEL_VECS accumulators, PANEL_VECS column loads, one row value broadcast; the expansion
// screen, which regular images use, needs nothing else):
//   avx512: 4 x 2 zmm of 16 floats = 8 + 2 + 1 of the 32 registers (the original blocking),
//           the lanes under the band found by one compare into a mask register per vector
//           (DCCONV_MASK 3). One thread, AMD EPYC Zen 4, N = 4000, D = 40, K = 12 (random
//           normal sub-vectors): 27.0-29.0 ms with the portable shuffles, 24.2-25.2 ms with
//           the mask compare (the avx2 copy: 24.8 ms); 6 x 2 and 8 x 2 were within noise.
//   avx2:   4 x 3 ymm of 8 floats = 12 + 3 + 1 = all 16 ymm registers. With 4 x 2 the
//           per-panel work (compare, mask, band checks) is shared by only 16 columns; in a
//           one-thread kernel benchmark on a (loaded) AMD EPYC, N = 4000, D = 40, K = 12,
//           4 x 3 with the movemask ran ~10% faster than the old 4 x 2 with shuffles (29 vs
//           33 ms); 3 x 4 and 5 x 2 were within noise of it, 6 x 2 no better than 4 x 2.
//   generic (SSE2): 4 x 3 xmm of 4 floats, the same count in the 16 xmm registers (a few
//           % faster than 4 x 2 there, within the noise of that machine).
// (The direct screen, for images with non-finite values or D < 8, needs one more register
// for the differences and spills one; it is the rare path.)
// The target strings must stay in step with the CPU features cpu/isa.cpp checks.
#ifndef DCCONV_KERNELS
#error "define DCCONV_KERNELS (the kernel header) before including isa_instantiate.h"
#endif

#define DCCONV_ISA generic
#define DCCONV_VEC_BYTES 16
#define DCCONV_ROW_SUB 4
#define DCCONV_PANEL_VECS 3
#if DCCONV_X86_ISAS
#define DCCONV_MASK 2  // SSE2 movemask (baseline x86-64)
#else
#define DCCONV_MASK 0  // portable
#endif
#include DCCONV_KERNELS
#undef DCCONV_ISA
#undef DCCONV_VEC_BYTES
#undef DCCONV_ROW_SUB
#undef DCCONV_PANEL_VECS
#undef DCCONV_MASK

#if DCCONV_X86_ISAS
#pragma GCC push_options
#pragma GCC target("avx2,fma,popcnt")
#define DCCONV_ISA avx2
#define DCCONV_VEC_BYTES 32
#define DCCONV_ROW_SUB 4
#define DCCONV_PANEL_VECS 3
#define DCCONV_MASK 1  // AVX compare + movemask
#include DCCONV_KERNELS
#undef DCCONV_ISA
#undef DCCONV_VEC_BYTES
#undef DCCONV_ROW_SUB
#undef DCCONV_PANEL_VECS
#undef DCCONV_MASK
#pragma GCC pop_options

// avx512f already lets GCC emit FMA (it defines __FP_FAST_FMA, not __FMA__), and avx2 POPCNT
// (the clustering counts the lanes it appends); fma and popcnt are named too so that the
// pragmas state exactly the features cpu/isa.cpp checks.
#pragma GCC push_options
#pragma GCC target("avx512f,avx2,fma,popcnt")
#define DCCONV_ISA avx512
#define DCCONV_VEC_BYTES 64
#define DCCONV_ROW_SUB 4
#define DCCONV_PANEL_VECS 2
#define DCCONV_MASK 3  // AVX-512 compare into a mask register
#include DCCONV_KERNELS
#undef DCCONV_ISA
#undef DCCONV_VEC_BYTES
#undef DCCONV_ROW_SUB
#undef DCCONV_PANEL_VECS
#undef DCCONV_MASK
#pragma GCC pop_options
#endif

#undef DCCONV_KERNELS
