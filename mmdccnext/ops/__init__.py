"""DCConv: dynamic clustering (sub-vector KNN) and the convolution over the clusters.

Paths: fused C++ CPU kernels (``mmdccnext._ext``, optional), pure PyTorch (any device) and
standard ops for ONNX export / tracing (:mod:`mmdccnext.ops.export`). See
:mod:`mmdccnext.ops.cluster` and :mod:`mmdccnext.ops.dcconv` for the exact contract.
"""
from .cluster import TILE_BYTES, cluster, cluster_bruteforce, cluster_cpu, cluster_pytorch
from .dcconv import DCConv, aggregate, aggregate_cpu, aggregate_pytorch, dcconv
from .export import aggregate_export, cluster_export
from .ext_loader import ENV_IMPL, IMPLS, ext_available, ext_error, is_exporting

__all__ = [
    'DCConv', 'dcconv', 'cluster', 'aggregate', 'cluster_pytorch', 'aggregate_pytorch',
    'cluster_cpu', 'aggregate_cpu', 'cluster_bruteforce', 'ext_available', 'ext_error', 'IMPLS',
    'ENV_IMPL', 'TILE_BYTES', 'cluster_export', 'aggregate_export', 'is_exporting'
]
