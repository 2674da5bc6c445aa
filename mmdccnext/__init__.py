"""mmdccnext: the DCCNeXt backbone (AAAI-25) for MMEngine, MMCV, MMDetection, MMSegmentation
and MMPretrain."""
from .utils.version_check import check_mmcv

check_mmcv()

from .apis.zoo import register_zoo_loader  # noqa: E402
from .utils.checkpoint import register_checkpoint_loaders  # noqa: E402

register_checkpoint_loaders()  # local files and http(s) under torch >= 2.6
register_zoo_loader()  # zoo://<model name>

from . import engine, models, ops  # noqa: E402,F401
from .version import __version__, version_info  # noqa: E402

__all__ = ['__version__', 'version_info']
