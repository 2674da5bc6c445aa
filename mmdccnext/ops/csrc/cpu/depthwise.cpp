// The Conv-FFN's 3x3 depthwise convolution on channels-last maps (depthwise3x3_forward,
// depthwise3x3_backward), and the weight gradient alone of the 7x7 depthwise mixers
// (depthwise_weight_grad: oneDNN's took about 7x as long; its forward and input gradient are
// fast). Not part of DCConv: it lives in this extension for its build and its per-ISA
// dispatch. Why a kernel of our own: on the CPU, oneDNN's depthwise convolution
// on (B, H, W, 6C) maps ran several times slower than the memory traffic it needs, and its
// backward allocated the input gradient anew (page faults) - measured in
// docs/en/benchmarks.md. The per-ISA kernels are in depthwise_kernels.h, the arithmetic in
// common/dcconv_common.h.
#include "../common/dcconv_common.h"  // first: every header before any target pragma

#define DCCONV_KERNELS "../cpu/depthwise_kernels.h"
#include "../common/isa_instantiate.h"

namespace dcconv {
namespace {

DepthwiseKernels<float> depthwise_kernels_for(Isa isa, float*) {
  switch (isa) {
#if DCCONV_X86_ISAS
    case Isa::avx512:
      return {&avx512::depthwise_rows_f32, &avx512::depthwise_row_f32,
              &avx512::depthwise_grad_weight_f32};
    case Isa::avx2:
      return {&avx2::depthwise_rows_f32, &avx2::depthwise_row_f32,
              &avx2::depthwise_grad_weight_f32};
#endif
    default:
      return {&generic::depthwise_rows_f32, &generic::depthwise_row_f32,
              &generic::depthwise_grad_weight_f32};
  }
}
DepthwiseKernels<double> depthwise_kernels_for(Isa isa, double*) {
  switch (isa) {
#if DCCONV_X86_ISAS
    case Isa::avx512:
      return {&avx512::depthwise_rows_f64, &avx512::depthwise_row_f64,
              &avx512::depthwise_grad_weight_f64};
    case Isa::avx2:
      return {&avx2::depthwise_rows_f64, &avx2::depthwise_row_f64,
              &avx2::depthwise_grad_weight_f64};
#endif
    default:
      return {&generic::depthwise_rows_f64, &generic::depthwise_row_f64,
              &generic::depthwise_grad_weight_f64};
  }
}

template <typename T>
DepthwiseKernels<T> selected() {
  return depthwise_kernels_for(current_isa(), static_cast<T*>(nullptr));
}

template <typename T>
void run_rows(const DwArgs<T>& a, int64_t rows) {
  const auto kernel = selected<T>().rows;
  const int nt = num_threads_for(rows, 9 * rows * a.W * a.C);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t r = 0; r < rows; ++r) kernel(a, r, r + 1);
}

// The convolution written over its own input a.in == a.out (B images): a task takes a band
// of an image's rows, computes each output row into a ring of two rows and writes it over
// its input row once the next output row no longer needs that (one row later). The input
// rows just outside each band, which neighbouring tasks overwrite, are copied first. Every
// output value comes from the same kernel and inputs as out of place: the same bits.
template <typename T>
void run_rows_inplace(const DwArgs<T>& a, int64_t B) {
  const auto kernel = selected<T>().row;
  const int64_t H = a.H, RW = a.W * a.C;
  T* x = a.out;
  const int64_t threads = at::get_num_threads();
  const int64_t bands = std::min<int64_t>(H, (threads + B - 1) / B);
  const int64_t ntasks = B * bands;
  const int nt = num_threads_for(ntasks, 9 * B * H * RW);
  auto band_rows = [&](int64_t k) { return std::make_pair(k * H / bands, (k + 1) * H / bands); };
  // per task: the input row above its band and the one below (where inside the map)
  std::vector<T> edges(bands > 1 ? ntasks * 2 * RW : 0);
  for (int64_t task = 0; bands > 1 && task < ntasks; ++task) {
    const int64_t b = task / bands;
    const auto [y0, y1] = band_rows(task % bands);
    if (y0 > 0) std::copy_n(x + (b * H + y0 - 1) * RW, RW, edges.data() + task * 2 * RW);
    if (y1 < H) std::copy_n(x + (b * H + y1) * RW, RW, edges.data() + (task * 2 + 1) * RW);
  }
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < ntasks; ++task) {
    const int64_t b = task / bands;
    const auto [y0, y1] = band_rows(task % bands);
    T* img = x + b * H * RW;
    std::vector<T> ring(2 * RW);
    for (int64_t y = y0; y < y1; ++y) {
      const T* rows[3];
      rows[0] = y == 0 ? nullptr : y == y0 ? edges.data() + task * 2 * RW : img + (y - 1) * RW;
      rows[1] = img + y * RW;
      rows[2] = y == H - 1 ? nullptr
                : y + 1 == y1 ? edges.data() + (task * 2 + 1) * RW
                              : img + (y + 1) * RW;
      kernel(a, rows, ring.data() + (y % 2) * RW);
      if (y > y0) std::copy_n(ring.data() + ((y - 1) % 2) * RW, RW, img + (y - 1) * RW);
    }
    if (y1 > y0) std::copy_n(ring.data() + ((y1 - 1) % 2) * RW, RW, img + (y1 - 1) * RW);
  }
}

// Sums of the weight and bias gradients of a K x K kernel, (K * K + 1, C): taps then bias.
// Every task (image b, DW_GRAD_ROWS rows) writes its partial sums, which are then added in
// task order.
template <typename T>
std::vector<T> grad_weight_sums(const T* grad, const T* x, int64_t B, int64_t H, int64_t W,
                                int64_t C, int K) {
  const auto kernel = selected<T>().grad_weight;
  const int64_t per_image = (H + DW_GRAD_ROWS - 1) / DW_GRAD_ROWS;
  const int64_t ntasks = B * per_image;
  const int64_t width = (K * K + 1) * C;
  std::unique_ptr<T[]> partial(new T[ntasks * width]);  // each task zeroes its own
  const DwGradArgs<T> a{grad, x, H, W, C, K};
  const int nt = num_threads_for(ntasks, K * K * B * H * W * C);
#pragma omp parallel for schedule(dynamic, 1) num_threads(nt)
  for (int64_t task = 0; task < ntasks; ++task) {
    const int64_t b = task / per_image, y0 = (task % per_image) * DW_GRAD_ROWS;
    kernel(a, b, y0, std::min(H, y0 + DW_GRAD_ROWS), partial.get() + task * width);
  }
  std::vector<T> sum(width, T(0));
  for (int64_t task = 0; task < ntasks; ++task) {
    const T* src = partial.get() + task * width;
    for (int64_t e = 0; e < width; ++e) sum[e] = sum[e] + src[e];
  }
  return sum;
}

// The (C, 1, K, K) weight gradient and the (C,) bias gradient from the sums above.
template <typename T>
void unpack_grad_sums(const std::vector<T>& sum, int64_t C, int K, at::Tensor& gw,
                      at::Tensor& gb) {
  if (gw.defined()) {
    T* dst = gw.data_ptr<T>();
    for (int64_t c = 0; c < C; ++c)
      for (int k = 0; k < K * K; ++k) dst[c * K * K + k] = sum[k * C + c];
  }
  if (gb.defined()) std::copy(sum.begin() + K * K * C, sum.end(), gb.data_ptr<T>());
}

// (9, C) taps from the (C, 1, 3, 3) weight; flipped (the input gradient's kernel) or not.
at::Tensor taps(const at::Tensor& w, bool flip) {
  at::Tensor t = w.reshape({w.size(0), 9});
  if (flip) t = t.flip({1});
  return t.t().contiguous();
}

bool overlap(const at::Tensor& a, const at::Tensor& b) {
  const char* a0 = static_cast<const char*>(a.data_ptr());
  const char* b0 = static_cast<const char*>(b.data_ptr());
  return a0 < b0 + b.nbytes() && b0 < a0 + a.nbytes();
}

void check_map(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.dim() == 4 && t.is_contiguous(), "depthwise: ",
              name, " must be a contiguous (B, H, W, C) CPU tensor, got ", t.sizes(),
              t.device().is_cpu() ? "" : " on another device");
  TORCH_CHECK(t.scalar_type() == at::kFloat || t.scalar_type() == at::kDouble,
              "depthwise: ", name, " must be float32 or float64, got ", t.scalar_type());
}

void check_weight(const at::Tensor& x, const at::Tensor& w, int64_t K = 3) {
  TORCH_CHECK(w.device().is_cpu() && w.dim() == 4 && w.size(0) == x.size(3) &&
                  w.size(1) == 1 && w.size(2) == K && w.size(3) == K,
              "depthwise: weight must be a (C, 1, ", K, ", ", K, ") CPU tensor for C = ",
              x.size(3), ", got ", w.sizes());
  TORCH_CHECK(w.scalar_type() == x.scalar_type(), "depthwise: weight dtype ",
              w.scalar_type(), " differs from the map's ", x.scalar_type());
  current_isa();  // a forced ISA this CPU cannot run raises here, before any work
}

// The map x and the output gradient grad of a backward call: checked maps of one shape and
// dtype.
void check_grad_and_map(const at::Tensor& grad, const at::Tensor& x, const char* op) {
  check_map(x, "x");
  check_map(grad, "grad");
  TORCH_CHECK(grad.sizes() == x.sizes() && grad.scalar_type() == x.scalar_type(), op,
              ": grad must be shaped and typed as x, got ", grad.sizes());
}

// `out` if given (checked: shaped as x, not overlapping it unless `may_be_x` and it is x's
// very memory), else a new tensor.
at::Tensor output_for(const at::Tensor& x, const std::optional<at::Tensor>& out,
                      const char* name, bool may_be_x = false) {
  if (!out.has_value()) return at::empty_like(x);
  check_map(*out, name);
  TORCH_CHECK(out->sizes() == x.sizes() && out->scalar_type() == x.scalar_type(),
              "depthwise: ", name, " must be shaped and typed as the map, got ",
              out->sizes(), " ", out->scalar_type());
  const bool same = out->data_ptr() == x.data_ptr();
  TORCH_CHECK((same && may_be_x) || !overlap(*out, x), "depthwise: ", name,
              may_be_x ? " must be the map itself or not overlap it"
                       : " must not overlap the map it reads");
  return *out;
}

}  // namespace

at::Tensor depthwise3x3_forward(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& out) {
  check_map(x, "x");
  check_weight(x, w);
  const int64_t C = x.size(3);
  if (bias.has_value()) {
    TORCH_CHECK(bias->device().is_cpu() && bias->dim() == 1 && bias->size(0) == C &&
                    bias->scalar_type() == x.scalar_type(),
                "depthwise3x3: bias must be a (C,) CPU tensor of the map's dtype, got ",
                bias->sizes());
  }
  at::Tensor y = output_for(x, out, "out", /*may_be_x=*/true);
  if (x.numel() == 0) return y;
  const bool in_place = y.data_ptr() == x.data_ptr();
  const at::Tensor wt = taps(w, false);
  const at::Tensor b = bias.has_value() ? bias->contiguous() : at::Tensor();
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise3x3_forward", [&] {
    DwArgs<scalar_t> a{x.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(),
                       b.defined() ? b.data_ptr<scalar_t>() : nullptr,
                       y.data_ptr<scalar_t>(), x.size(1), x.size(2), C};
    if (in_place)
      run_rows_inplace(a, x.size(0));
    else
      run_rows(a, x.size(0) * x.size(1));
  });
  return y;
}

std::vector<at::Tensor> depthwise3x3_backward(const at::Tensor& grad, const at::Tensor& x,
                                              const at::Tensor& w,
                                              const std::optional<at::Tensor>& grad_x_out,
                                              bool need_x, bool need_w, bool need_b) {
  check_grad_and_map(grad, x, "depthwise3x3");
  check_weight(x, w);
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  at::Tensor gx = need_x ? output_for(grad, grad_x_out, "grad_x_out") : at::Tensor();
  at::Tensor gw = need_w ? at::zeros_like(w) : at::Tensor();
  at::Tensor gb = need_b ? at::zeros({C}, x.options()) : at::Tensor();
  if (x.numel() == 0) return {gx, gw, gb};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise3x3_backward", [&] {
    if (need_x) {
      const at::Tensor wt = taps(w, true);
      DwArgs<scalar_t> a{grad.data_ptr<scalar_t>(), wt.data_ptr<scalar_t>(), nullptr,
                         gx.data_ptr<scalar_t>(), H, W, C};
      run_rows(a, B * H);
    }
    if (need_w || need_b)
      unpack_grad_sums(grad_weight_sums(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), B,
                                        H, W, C, 3),
                       C, 3, gw, gb);
  });
  return {gx, gw, gb};
}

std::vector<at::Tensor> depthwise_weight_grad(const at::Tensor& grad, const at::Tensor& x,
                                              int64_t kernel_size, bool need_b) {
  TORCH_CHECK(kernel_size == 3 || kernel_size == 7,
              "depthwise_weight_grad: kernel_size must be 3 or 7, got ", kernel_size);
  check_grad_and_map(grad, x, "depthwise_weight_grad");
  current_isa();  // a forced ISA this CPU cannot run raises here, before any work
  const int64_t B = x.size(0), H = x.size(1), W = x.size(2), C = x.size(3);
  const int K = static_cast<int>(kernel_size);
  at::Tensor gw = at::zeros({C, 1, K, K}, x.options());
  at::Tensor gb = need_b ? at::zeros({C}, x.options()) : at::Tensor();
  if (x.numel() == 0) return {gw, gb};
  AT_DISPATCH_FLOATING_TYPES(x.scalar_type(), "depthwise_weight_grad", [&] {
    unpack_grad_sums(grad_weight_sums(grad.data_ptr<scalar_t>(), x.data_ptr<scalar_t>(), B, H,
                                      W, C, K),
                     C, K, gw, gb);
  });
  return {gw, gb};
}

}  // namespace dcconv
