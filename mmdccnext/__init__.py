"""mmdccnext: the DCCNeXt backbone (AAAI-25) for MMEngine, MMCV, MMDetection, MMSegmentation
and MMPretrain.

Importing it registers its modules in the scope ``mmdccnext`` and changes, outside that
scope, exactly what docs/en/get_started.md ("What ``import mmdccnext`` changes") lists: MMEngine's
local-file checkpoint loader under torch >= 2.6, its http(s) loader, the new ``zoo://``
scheme, and MMPretrain's model index. Configs reach this through ``custom_imports``, which
under mmdet's, mmseg's and mmpretrain's own ``tools/train.py`` is the only hook.

Those integrations are optional: one that fails (a model index of one's own that does not
read, a broken mmpretrain, another MMEngine) is skipped with one warning naming what was
skipped and why, and the import goes on. The C++ extension is loaded on first use, never here
(without it DCConv runs its PyTorch path, with one warning).
"""
import warnings

from .utils.version_check import check_mmcv

check_mmcv(require_ops=False)  # the compiled ops are checked where they are used

from .apis.model_index import register_model_index  # noqa: E402
from .apis.zoo import register_download_loaders  # noqa: E402
from .utils.checkpoint import register_checkpoint_loaders  # noqa: E402


def _integrate(register, skipped):
    """Run one optional import-time integration; on failure warn once, naming ``skipped``."""
    try:
        register()
    except Exception as error:  # noqa: BLE001 - an optional integration never breaks the import
        warnings.warn(f'mmdccnext: skipped {skipped} ({type(error).__name__}: {error})',
                      stacklevel=2)


_integrate(register_checkpoint_loaders,  # local files, torch >= 2.6 only
           "MMEngine's local checkpoint loader for torch >= 2.6: checkpoints MMEngine's runner "
           'wrote may not load (resume)')
_integrate(register_download_loaders,  # http(s) through the verified download, zoo://<name>
           "the zoo:// scheme and the verified http(s) download in MMEngine's CheckpointLoader")

from . import engine, models, ops  # noqa: E402,F401
from .version import __version__, version_info  # noqa: E402

_integrate(register_model_index,  # mmpretrain.get_model / list_models know our classifiers
           "registering the model index's classifiers with MMPretrain's ModelHub: "
           'mmpretrain.get_model / list_models do not know them (the zoo:// names still work)')

__all__ = ['__version__', 'version_info']
