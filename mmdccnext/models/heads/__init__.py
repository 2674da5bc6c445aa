import importlib.util

__all__ = []

# The classification head builds on MMPretrain's ClsHead; without MMPretrain (e.g. a
# detection-only install) mmdccnext still imports, just without the head.
if importlib.util.find_spec('mmpretrain') is not None:
    from .mlp_cls_head import DCCNeXtClsHead  # noqa: F401
    __all__.append('DCCNeXtClsHead')
