// DCConv op: clustering (cluster_forward). The per-ISA row kernels are in cluster_kernels.h
// (with the proofs of the screen); this file prepares their inputs, runs them in parallel
// and checks the arguments. See common/dcconv_common.h for the numerics and the ISAs.
#include "../common/dcconv_common.h"  // first: every header before any target pragma

#define DCCONV_KERNELS "../cpu/cluster_kernels.h"
#include "../common/isa_instantiate.h"

namespace dcconv {

static std::atomic<bool> g_dot_screen{true};
void set_dot_screen(bool on) { g_dot_screen = on; }
bool get_dot_screen() { return g_dot_screen; }

namespace {

// The selected ISA's row kernel and the panel width it reads. Only addresses are taken here;
// nothing of an ISA that was not selected is ever called.
ClusterKernel<float> cluster_kernel_for(Isa isa, float*) {
  switch (isa) {
#if DCCONV_X86_ISAS
    case Isa::avx512:
      return {avx512::kPanelWidthF32, avx512::kRowsPerBlock, &avx512::cluster_rows_f32,
              &avx512::cluster_image_f32};
    case Isa::avx2:
      return {avx2::kPanelWidthF32, avx2::kRowsPerBlock, &avx2::cluster_rows_f32,
              &avx2::cluster_image_f32};
#endif
    default:
      return {generic::kPanelWidthF32, generic::kRowsPerBlock, &generic::cluster_rows_f32,
              &generic::cluster_image_f32};
  }
}
ClusterKernel<double> cluster_kernel_for(Isa isa, double*) {
  switch (isa) {
#if DCCONV_X86_ISAS
    case Isa::avx512:
      return {avx512::kPanelWidthF64, avx512::kRowsPerBlock, &avx512::cluster_rows_f64,
              &avx512::cluster_image_f64};
    case Isa::avx2:
      return {avx2::kPanelWidthF64, avx2::kRowsPerBlock, &avx2::cluster_rows_f64,
              &avx2::cluster_image_f64};
#endif
    default:
      return {generic::kPanelWidthF64, generic::kRowsPerBlock, &generic::cluster_rows_f64,
              &generic::cluster_image_f64};
  }
}

// Images of at most this many patches are clustered whole, one task each (cluster_kernel).
constexpr int64_t kPairsMaxPatches = 1 << 14;

template <typename T>
void cluster_kernel(const at::Tensor& s, at::Tensor& out, int64_t Kc) {
  const ClusterKernel<T> kernel = cluster_kernel_for(current_isa(), static_cast<T*>(nullptr));
  const int64_t PW = kernel.panel_width;
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
  const bool dot_screen = g_dot_screen;
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
      bool dot = finite && dot_screen && D >= 8;
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
  // pack column panels: panels[b][p][t][jj] = scr[b][p*PW + jj][t]. The allocator aligns
  // to 64 bytes and a panel row is PW * sizeof(T) = a whole number of the ISA's vectors, so
  // every vector load of the kernels is aligned.
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
  const int64_t threads = at::get_num_threads();
  // Row blocks: big enough to reuse each panel from L1 for many rows, small enough to give
  // every thread work; multiples of the register block's rows.
  const int64_t sub = kernel.block_rows;
  int64_t rb = 16 * sub;
  while (rb > sub && B * ((N + rb - 1) / rb) < 4 * threads) rb = std::max(sub, rb / 2 / sub * sub);
  const int64_t nblk = (N + rb - 1) / rb;
  const int64_t ntasks = B * nblk;
  const int nt = num_threads_for(ntasks, B * N * N * D);
  // Whole images instead, one task each, where that keeps as many threads busy (one
  // thread, or an image per thread): each pair is then screened once. The candidate lists
  // of all the image's rows are alive at once (about 1 KB per row for K = 12), hence the
  // bound on N.
  if (N <= kPairsMaxPatches && (nt == 1 || B >= nt)) {
    const auto image = kernel.image;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
    for (int64_t b = 0; b < B; ++b) image(args, b);
    return;
  }
  const auto rows = kernel.rows;
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < ntasks; ++task) {
    const int64_t b = task / nblk, i0 = (task % nblk) * rb;
    rows(args, b, i0, std::min(N, i0 + rb));
  }
}

}  // namespace

at::Tensor cluster_forward(const at::Tensor& s_in, int64_t kernel_size) {
  TORCH_CHECK(s_in.device().is_cpu(), "cluster_forward: sub-vectors must be a CPU tensor");
  TORCH_CHECK(s_in.dim() == 3, "cluster_forward: sub-vectors must be (B, N, D), got ",
              s_in.sizes());
  TORCH_CHECK(kernel_size >= 1, "cluster_forward: kernel_size must be >= 1");
  TORCH_CHECK(s_in.scalar_type() == at::kFloat || s_in.scalar_type() == at::kDouble,
              "cluster_forward: sub-vectors must be float32 or float64, got ",
              s_in.scalar_type());
  current_isa();  // a forced ISA this CPU cannot run raises here, before any work
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

}  // namespace dcconv
