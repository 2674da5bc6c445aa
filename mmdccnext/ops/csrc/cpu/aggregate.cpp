// DCConv op: aggregation forward and backward (aggregate_forward, aggregate_backward). The
// per-ISA kernels are in aggregate_kernels.h; this file checks the arguments and runs them in
// parallel. See common/dcconv_common.h for the numerics and the ISAs.
#include "../common/dcconv_common.h"  // first: every header before any target pragma

#define DCCONV_KERNELS "../cpu/aggregate_kernels.h"
#include "../common/isa_instantiate.h"

namespace dcconv {
namespace {

// The selected ISA's kernels (only addresses are taken; nothing of an ISA that was not
// selected is ever called).
AggregateKernels<float> aggregate_kernels_for(Isa isa, float*) {
  switch (isa) {
#if DCCONV_X86_ISAS
    case Isa::avx512:
      return {&avx512::aggregate_rows_f32, &avx512::backward_block_f32};
    case Isa::avx2:
      return {&avx2::aggregate_rows_f32, &avx2::backward_block_f32};
#endif
    default:
      return {&generic::aggregate_rows_f32, &generic::backward_block_f32};
  }
}
AggregateKernels<double> aggregate_kernels_for(Isa isa, double*) {
  switch (isa) {
#if DCCONV_X86_ISAS
    case Isa::avx512:
      return {&avx512::aggregate_rows_f64, &avx512::backward_block_f64};
    case Isa::avx2:
      return {&avx2::aggregate_rows_f64, &avx2::backward_block_f64};
#endif
    default:
      return {&generic::aggregate_rows_f64, &generic::backward_block_f64};
  }
}

template <typename T>
AggregateKernels<T> selected_kernels() {
  return aggregate_kernels_for(current_isa(), static_cast<T*>(nullptr));
}

template <typename T>
void aggregate_parallel(const AggArgs<T>& a, int64_t rows) {
  const auto kernel = selected_kernels<T>().rows;
  const int64_t chunk = std::max<int64_t>(1, 8192 / std::max<int64_t>(1, a.C * a.Kc));
  const int64_t nchunks = (rows + chunk - 1) / chunk;
  const int nt = num_threads_for(nchunks, rows * a.C * a.Kc);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t q = 0; q < nchunks; ++q) kernel(a, q * chunk, std::min(rows, (q + 1) * chunk));
}

template <typename T>
void backward_parallel(const BwdArgs<T>& a, int64_t B, int64_t ncr, int64_t cw) {
  const auto kernel = selected_kernels<T>().backward_block;
  const int64_t ntasks = B * ncr;
  const int nt = num_threads_for(ntasks, 2 * B * a.N * a.C * a.Kc);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < ntasks; ++task) {
    const int64_t b = task / ncr, c0 = (task % ncr) * cw;
    kernel(a, b, c0, std::min(a.C, c0 + cw));
  }
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
  current_isa();  // a forced ISA this CPU cannot run raises here, before any work
}

}  // namespace

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

// Backward: see BwdArgs in common/dcconv_common.h for the fixed summation order.
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
