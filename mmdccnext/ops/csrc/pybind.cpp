// Python bindings of the DCConv CPU kernels: the module mmdccnext._ext.
#include <torch/extension.h>

#include <optional>
#include <vector>

namespace dcconv {
at::Tensor cluster_forward(const at::Tensor& s, int64_t kernel_size);
at::Tensor aggregate_forward(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias);
std::vector<at::Tensor> aggregate_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                           const at::Tensor& idx, const at::Tensor& w,
                                           bool need_x, bool need_w, bool need_b);
void set_dot_screen(bool on);
bool get_dot_screen();
}  // namespace dcconv

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "DCConv (dynamic clustering convolution) fused CPU kernels";
  m.def("cluster_forward", &dcconv::cluster_forward,
        "(B, N, D) sub-vectors, kernel_size -> (B, N, min(K, N)) int64 cluster indices",
        py::arg("subvectors"), py::arg("kernel_size"));
  m.def("aggregate_forward", &dcconv::aggregate_forward,
        "y = bias + sum_k W[k] * x[idx[..., k]] for (B, N, C) x", py::arg("x"), py::arg("idx"),
        py::arg("weight"), py::arg("bias") = py::none());
  m.def("aggregate_backward", &dcconv::aggregate_backward,
        "deterministic gradients (grad_x, grad_weight, grad_bias); undefined when not needed",
        py::arg("grad_out"), py::arg("x"), py::arg("idx"), py::arg("weight"),
        py::arg("need_x"), py::arg("need_weight"), py::arg("need_bias"));
  m.def("set_dot_screen", &dcconv::set_dot_screen,
        "use (True, default) or not the norm-expansion screen of the clustering kernel; the "
        "result does not depend on it (for tests)");
  m.def("get_dot_screen", &dcconv::get_dot_screen);
}
