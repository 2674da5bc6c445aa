"""DCConv: dynamic clustering (sub-vector KNN) and the convolution over the clusters.

Public: :class:`DCConv`, :func:`dcconv`, :func:`cluster`, :func:`aggregate` and
:func:`available_impls`; the contract is in :mod:`mmdccnext.ops.dcconv`. Inside: one
``torch.library`` seam (:mod:`.library`), one leaf per path (:mod:`.cpu_impl`,
:mod:`.triton_impl`, :mod:`.pytorch_impl`, :mod:`.export`), the shared checks
(:mod:`.common`), the self-check of the Triton path (:mod:`.selfcheck`) and the float64
reference (:mod:`.reference`).
"""
from .dcconv import DCConv, aggregate, available_impls, cluster, dcconv

__all__ = ['DCConv', 'dcconv', 'cluster', 'aggregate', 'available_impls']
