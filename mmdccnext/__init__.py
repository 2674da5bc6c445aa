"""mmdccnext: the DCCNeXt backbone (AAAI-25) for MMEngine, MMCV, MMDetection, MMSegmentation
and MMPretrain.

Importing it registers its modules in the scope ``mmdccnext`` and changes, outside that
scope, exactly what docs/en/get_started.md ("What ``import mmdccnext`` changes") lists: MMEngine's
local-file checkpoint loader under torch >= 2.6, its http(s) loader, the new ``zoo://``
scheme, and MMPretrain's model index. Configs reach this through ``custom_imports``, which
under mmdet's, mmseg's and mmpretrain's own ``tools/train.py`` is the only hook.
"""
from .utils.version_check import check_mmcv

check_mmcv(require_ops=False)  # the compiled ops are checked where they are used

from .apis.model_index import register_model_index  # noqa: E402
from .apis.zoo import register_download_loaders  # noqa: E402
from .utils.checkpoint import register_checkpoint_loaders  # noqa: E402

register_checkpoint_loaders()  # local files, torch >= 2.6 only
register_download_loaders()  # http(s) through the verified download, zoo://<model name>

from . import engine, models, ops  # noqa: E402,F401
from .version import __version__, version_info  # noqa: E402

register_model_index()  # mmpretrain.get_model / list_models know our classifiers

__all__ = ['__version__', 'version_info']
