// Python bindings of the DCConv CPU kernels: the module mmdccnext._ext.
#include <torch/extension.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dcconv {
at::Tensor cluster_forward(const at::Tensor& s, int64_t kernel_size);
at::Tensor aggregate_forward(const at::Tensor& x, const at::Tensor& idx, const at::Tensor& w,
                             const std::optional<at::Tensor>& bias);
std::vector<at::Tensor> aggregate_backward(const at::Tensor& grad_out, const at::Tensor& x,
                                           const at::Tensor& idx, const at::Tensor& w,
                                           bool need_x, bool need_w, bool need_b);
at::Tensor depthwise3x3_forward(const at::Tensor& x, const at::Tensor& w,
                                const std::optional<at::Tensor>& bias,
                                const std::optional<at::Tensor>& out);
std::vector<at::Tensor> depthwise3x3_backward(const at::Tensor& grad, const at::Tensor& x,
                                              const at::Tensor& w,
                                              const std::optional<at::Tensor>& grad_x_out,
                                              bool need_x, bool need_w, bool need_b);
std::vector<at::Tensor> depthwise_weight_grad(const at::Tensor& grad, const at::Tensor& x,
                                              int64_t kernel_size, bool need_b);
void set_dot_screen(bool on);
bool get_dot_screen();
std::string isa_name_str();
std::vector<std::string> compiled_isas();
std::vector<std::string> supported_isas();
std::vector<std::pair<std::string, bool>> cpu_features();
void set_isa(const std::string& name);
void reset_isa();
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
  m.def("depthwise3x3_forward", &dcconv::depthwise3x3_forward,
        "3x3 depthwise convolution (stride 1, zero padding 1) of a contiguous (B, H, W, C) "
        "map with a (C, 1, 3, 3) weight; written into `out` when given (x itself: in place)",
        py::arg("x"), py::arg("weight"), py::arg("bias") = py::none(),
        py::arg("out") = py::none());
  m.def("depthwise3x3_backward", &dcconv::depthwise3x3_backward,
        "deterministic gradients (grad_x, grad_weight, grad_bias) of depthwise3x3_forward; "
        "grad_x written into `grad_x_out` when given; undefined when not needed",
        py::arg("grad"), py::arg("x"), py::arg("weight"), py::arg("grad_x_out") = py::none(),
        py::arg("need_x") = true, py::arg("need_weight") = true, py::arg("need_bias") = true);
  m.def("depthwise_weight_grad", &dcconv::depthwise_weight_grad,
        "deterministic (grad_weight (C, 1, K, K), grad_bias or undefined) of a same-size "
        "K x K depthwise convolution (K = 3 or 7) of a contiguous (B, H, W, C) map",
        py::arg("grad"), py::arg("x"), py::arg("kernel_size"), py::arg("need_bias") = true);
  m.def("_set_dot_screen", &dcconv::set_dot_screen,
        "use (True, default) or not the norm-expansion screen of the clustering kernel; the "
        "result does not depend on it (for tests)");
  m.def("_get_dot_screen", &dcconv::get_dot_screen);
  m.def("isa", &dcconv::isa_name_str,
        "the ISA whose kernels run ('avx512', 'avx2' or 'generic'): MMDCCNEXT_CPU_ISA if set "
        "(read on first use), else the best this CPU supports; RuntimeError if the variable "
        "names one the CPU cannot run");
  m.def("compiled_isas", &dcconv::compiled_isas, "ISAs compiled into this build, best first");
  m.def("supported_isas", &dcconv::supported_isas,
        "compiled ISAs this CPU can run, best first");
  m.def("cpu_features", &dcconv::cpu_features,
        "[(feature, present)] for the CPU features the ISAs need (empty off x86-64)");
  m.def("set_isa", &dcconv::set_isa,
        "force the ISA of the kernels ('avx512', 'avx2', 'generic', or 'auto' for the best "
        "the CPU runs); RuntimeError naming the missing CPU features if it cannot run it, "
        "ValueError for an unknown name",
        py::arg("name"));
  m.def("reset_isa", &dcconv::reset_isa,
        "forget the choice: the next kernel call chooses again (re-reading MMDCCNEXT_CPU_ISA)");
}
