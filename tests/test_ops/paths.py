"""The leaves called on (B, N, C) tokens, as the op tests call them (the leaves themselves
take prepared sub-vectors and compute-dtype tensors; see mmdccnext/ops/common.py)."""
from mmdccnext.ops import cpu_impl, pytorch_impl
from mmdccnext.ops.common import subvectors
from mmdccnext.ops.reference import cluster_reference as cluster_bruteforce  # noqa: F401


def cluster_pytorch(x, kernel_size, subvector_stride=8, **kwargs):
    """The PyTorch leaf's clustering (``tile_bytes``, ``method`` as in pytorch_impl.cluster)."""
    return pytorch_impl.cluster(subvectors(x, subvector_stride), kernel_size, **kwargs)


def cluster_cpu(x, kernel_size, subvector_stride=8):
    """The C++ leaf's clustering, on the ISA the extension runs now."""
    return cpu_impl.cluster(subvectors(x, subvector_stride), kernel_size)
