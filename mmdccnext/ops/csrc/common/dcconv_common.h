// Common header of the fused CPU kernels of DCConv (Dynamic Clustering Convolution, DCCNeXt).
//
// Files (one per op, as mmcv splits its ops):
//   common/dcconv_common.h      this header: every include, the numerics contract, the
//                               argument structs, the ISA dispatch interface
//   common/isa_instantiate.h    compiles a kernel header once per ISA (see "ISAs" below)
//   cpu/isa.cpp                 CPU feature detection, choice and forcing of the ISA
//   cpu/cluster_kernels.h       clustering kernels (one copy per ISA)
//   cpu/cluster.cpp             op: cluster_forward
//   cpu/aggregate_kernels.h     aggregation kernels (one copy per ISA)
//   cpu/aggregate.cpp           op: aggregate_forward / aggregate_backward
//   cpu/depthwise_kernels.h     3x3 depthwise convolution kernels (one copy per ISA)
//   cpu/depthwise.cpp           op: depthwise3x3_forward / depthwise3x3_backward (the
//                               Conv-FFN's convolution, not DCConv: same build, same ISAs)
//   pybind.cpp                  the module mmdccnext._ext
//
// cluster_forward     sub-vector distances + running top-K per row, never an N x N buffer.
// aggregate_forward   y[b,n,c] = bias[c] + sum_k W[k,c] * x[b, idx[b,n,k], c].
// aggregate_backward  grads of x, W, bias; deterministic (fixed summation order for every
//                     output element, whatever the number of threads and the ISA; no atomics).
//
// Numerics (shared with the PyTorch path, see mmdccnext/ops/dcconv.py):
//   * canonical distance(i, j): acc = 0; for t = 0..D-1: acc = acc + (s_i[t] - s_j[t])^2,
//     every operation rounded separately. The extension is built with -ffp-contract=off so
//     the compiler never fuses a multiply and an add, except in the clearly marked screening
//     code of the clustering (cpu/cluster_kernels.h, whose error is bounded and which never
//     decides alone, see "Clustering" there). The canonical distance is one scalar function
//     (exact_sq_dist below), compiled once for the baseline ISA and called by every ISA's
//     kernels, so all ISAs and the PyTorch path see bit-identical distances and return
//     identical indices.
//   * NaN distances count as +inf; ties are broken by the lower patch index; the patch
//     itself is always first.
//   * aggregation: out = bias; for k in order: out = out + W[k] * x[idx[k]] (same as PyTorch),
//     element-wise, so the vector width of an ISA does not change a single rounding; the
//     aggregation kernels are compiled with -ffp-contract=off for every ISA (no FMA even
//     where the ISA has one).
//
// ISAs. The kernels are compiled three times in the same translation unit, each copy in its
// own namespace with the vector width and register blocking its ISA wants:
//   dcconv::avx512   #pragma GCC target("avx512f,avx2,fma,popcnt"): 64-byte vectors (zmm)
//   dcconv::avx2     #pragma GCC target("avx2,fma,popcnt"):  32-byte vectors (ymm) + FMA
//   dcconv::generic  the baseline of the build (SSE2 on x86-64): 16-byte vectors
// (GCC's target_clones cannot combine avx2 and fma in one clone, and an "arch=haswell" clone
// is chosen by CPU *model*, which sent every AMD CPU to the baseline clone; 64-byte vectors
// compiled for AVX2 are split into register pairs and the register block spills.) cpu/isa.cpp
// picks the ISA once from CPU *features* (__builtin_cpu_supports, which also checks that the
// OS saves the wide registers); MMDCCNEXT_CPU_ISA or _ext.set_isa() force one, and forcing
// one the CPU cannot run is an error, never an illegal instruction.
//
// ODR: the whole translation unit is compiled for the baseline; only code that comes *after*
// a target pragma is compiled for that ISA. Every header (std, torch) is included here,
// before any pragma, so every inline / template function from them (std::vector<float>,
// std::sort, ...) is instantiated for the baseline: one COMDAT copy that is safe on every
// CPU, whichever copy the linker keeps. The ISA code lives in its own namespace, so none of
// its symbols can be merged with another ISA's. The per-ISA kernel headers include nothing.
//
// Threads: OpenMP (the runtime torch uses), dynamic scheduling so that a thread delayed by
// other processes does not hold the others back; the number of threads is
// torch.get_num_threads(). The parallel loops are in baseline code and call the selected
// ISA's kernels through function pointers.
#pragma once

#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>
#if defined(__x86_64__)
#include <immintrin.h>  // SSE2 / AVX intrinsics of the kernels (usable inside target pragmas)
#endif

// The x86 ISA copies need GCC's target pragmas and __builtin_cpu_supports (clang has them
// too, but the vector-extension shuffles used by the kernels are GCC >= 12 / clang syntax and
// only GCC is tested). Elsewhere only the generic copy is built.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && \
    !defined(DCCONV_NO_X86_ISAS)
#define DCCONV_X86_ISAS 1
#else
#define DCCONV_X86_ISAS 0
#endif

#define DCCONV_INLINE inline __attribute__((always_inline))

namespace dcconv {

// ---------------------------------------------------------------------------------------
// ISA dispatch (cpu/isa.cpp)
// ---------------------------------------------------------------------------------------
enum class Isa : int { generic = 0, avx2 = 1, avx512 = 2 };

// The ISA the kernels run: chosen on the first call (MMDCCNEXT_CPU_ISA, else the best the
// CPU supports) and kept; raises (c10::Error -> RuntimeError) if the variable names an ISA
// this CPU cannot run, on every call until it is fixed or set_isa() overrides it.
Isa current_isa();
const char* isa_name(Isa isa);
std::string isa_name_str();                  // name of current_isa()
std::vector<std::string> compiled_isas();    // best first
std::vector<std::string> supported_isas();   // compiled and runnable on this CPU, best first
std::vector<std::pair<std::string, bool>> cpu_features();  // the features the ISAs need
void set_isa(const std::string& name);  // name or "auto" (the best the CPU runs)
void reset_isa();  // forget the choice (re-read the variable)

// Whether regular images use the norm-expansion screen (cpu/cluster.cpp; tests switch it
// off to exercise the direct screen on ordinary data; the result is the same either way).
void set_dot_screen(bool on);
bool get_dot_screen();

// Threads for a parallel loop of `tasks` tasks doing about `work` multiply-adds in all:
// torch's setting, at most one thread per ~2M multiply-adds (~1 ms: a parallel region can
// cost that much on a busy machine), 1 inside another parallel region (no nesting).
inline int num_threads_for(int64_t tasks, int64_t work) {
  if (at::in_parallel_region() || omp_in_parallel()) return 1;
  const int64_t by_work = std::max<int64_t>(1, work / (int64_t(1) << 21));
  return static_cast<int>(std::max<int64_t>(
      1, std::min<int64_t>({tasks, by_work, int64_t(at::get_num_threads())})));
}

// ---------------------------------------------------------------------------------------
// Clustering: arguments of the per-ISA row kernels (cpu/cluster_kernels.h)
// ---------------------------------------------------------------------------------------
template <typename T>
struct ClusterArgs {
  const T* s;        // (B, N, D) sub-vectors (canonical distances)
  const T* scr;      // (B, N, D) the values the screen reads (s, or s centred)
  const T* panels;   // (B, P, D, PW) column panels of scr, zero padded; PW: the ISA's
  const T* norms;    // (B, P * PW) squared norms of the sub-vectors, zero padded
  const T* nbmax;    // (B) largest squared norm of each image
  const uint8_t* dot_mode;  // (B) screen with the norm expansion (regular images only)
  int64_t* out;      // (B, N, Kc)
  int64_t N, D, P, Kc;
};

template <typename T>
struct ClusterKernel {
  int panel_width;  // PW: columns per packed panel (= vector lanes x vectors per block)
  int block_rows;   // rows of one register block (row ranges are best multiples of it)
  void (*rows)(const ClusterArgs<T>& a, int64_t b, int64_t i0, int64_t i1);
  void (*image)(const ClusterArgs<T>& a, int64_t b);  // all rows, each pair screened once
};

// Canonical distance (NaN -> +inf); compiled with fp-contract=off (the build default) for
// the baseline ISA, and kept out of line so it is never merged into contracted screening
// code: the one definition of the distance that decides the clusters, for every ISA.
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

// Orders positions q by (key[q], idx[q]); a baseline-ISA functor for std::sort (a lambda
// written inside ISA code would be an ISA function that the baseline std::sort cannot
// inline).
template <typename T, typename I>
struct KeyThenIndex {
  const T* key;
  const I* idx;
  bool operator()(int64_t a, int64_t b) const {
    return key[a] < key[b] || (key[a] == key[b] && idx[a] < idx[b]);
  }
};

// ---------------------------------------------------------------------------------------
// Aggregation: arguments of the per-ISA kernels (cpu/aggregate_kernels.h)
// ---------------------------------------------------------------------------------------
template <typename T>
struct AggArgs {
  const T* x;          // (B, N, C)
  const int64_t* idx;  // (B, N, Kc)
  const T* w;          // (>= Kc, C)
  const T* bias;       // (C) or nullptr
  T* y;                // (B, N, C)
  int64_t N, C, Kc;
};

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
struct AggregateKernels {
  void (*rows)(const AggArgs<T>& a, int64_t r0, int64_t r1);
  void (*backward_block)(const BwdArgs<T>& a, int64_t b, int64_t c0, int64_t c1);
};

// ---------------------------------------------------------------------------------------
// 3x3 depthwise convolution on channels-last maps (cpu/depthwise_kernels.h): stride 1, zero
// padding 1, the Conv-FFN's. Taps outside the map are skipped (as oneDNN's float32 kernel
// does). Every output element is one chain of separately rounded multiplies and adds in a
// fixed order (no FMA, -ffp-contract=off): every ISA returns bit-identical results.
//   out[b,y,x,c]  = bias[c] + sum over taps (i, j) in row-major order, inside the map, of
//                   w[i,j,c] * in[b, y+i-1, x+j-1, c]
//   grad_in       = the same kernel on the output gradient with the taps flipped, no bias
//   grad_w[i,j,c] = sum over tasks (b, block of DW_GRAD_ROWS rows) in order of the sum over
//                   the task's (y, x) in order of g[b,y,x,c] * in[b, y+i-r, x+j-r, c]
//   grad_b[c]     = the same for g[b, y, x, c]
// The tasks do not depend on the number of threads: the gradients are deterministic. The
// weight gradient exists for K x K kernels, K in {3, 7} (r = K / 2, padding r): the
// 7 x 7 one is the depthwise mixer's of stages 1-2, whose forward and input gradient
// oneDNN computes fast, its weight gradient not (depthwise.py says how slow).
// ---------------------------------------------------------------------------------------
constexpr int64_t DW_GRAD_ROWS = 8;

template <typename T>
struct DwArgs {
  const T* in;    // (B, H, W, C)
  const T* w;     // (9, C) taps, (i, j) row-major
  const T* bias;  // (C) or nullptr
  T* out;         // (B, H, W, C), not overlapping `in`
  int64_t H, W, C;
};

template <typename T>
struct DwGradArgs {
  const T* g;   // (B, H, W, C) gradient of the output
  const T* in;  // (B, H, W, C) input of the convolution
  int64_t H, W, C;
  int K;  // kernel size: 3 or 7
};

template <typename T>
struct DepthwiseKernels {
  void (*rows)(const DwArgs<T>& a, int64_t r0, int64_t r1);  // rows r = b * H + y
  // one output row from its three input rows (nullptr outside the map); a.in is not read
  void (*row)(const DwArgs<T>& a, const T* const rows[3], T* out);
  // partial sums of one task into partial (K * K + 1, C): the taps', then the bias's
  void (*grad_weight)(const DwGradArgs<T>& a, int64_t b, int64_t y0, int64_t y1, T* partial);
};

}  // namespace dcconv
