"""Checks that the installed mmcv is one mmdccnext (and mmdet/mmseg) can use.

``import mmdccnext`` checks the version only: the backbone needs just ``mmcv.cnn``. The
compiled ops (``mmcv._ext``) are checked where they are needed, by the detection and
segmentation entries (``mmdccnext.apis.init_model``, ``tools/train.py``, ``tools/test.py``)."""
import importlib
import importlib.util

from mmengine.utils import digit_version

MMCV_MIN = '2.0.0rc4'
MMCV_MAX = '2.2.0'  # exclusive: mmdet 3.3 and mmseg 1.2 refuse mmcv >= 2.2.0

_HOW_TO_INSTALL = (
    'Install it with `make env` (builds mmcv 2.1.0 with ops from source, CPU) or, where '
    'OpenMMLab publishes wheels for your torch/CUDA, `mim install "mmcv==2.1.0"`. '
    'See README, section "Install".')


def check_mmcv(version=None, has_ops=None, require_ops=True):
    """Raise one readable ImportError when mmcv is missing, out of range or (with
    ``require_ops``) lacks its compiled ops.

    Args:
        version (str, optional): mmcv version to check; default: the installed one.
        has_ops (bool, optional): whether ``mmcv._ext`` exists; default: look it up.
        require_ops (bool): also require the compiled ops (MMDetection's and
            MMSegmentation's models need them; the backbone does not).
    """
    # the backbone and DCConv need only mmcv.cnn: mmcv-lite (no compiled ops) is enough for
    # them (tools/analysis/gpu_bundle.sh ships it); detection and segmentation need the ops
    kind = ('(full, with ops)' if require_ops else
            '(mmcv-lite is enough for the backbone and DCConv; detection and segmentation need '
            'the full mmcv with ops)')
    if version is None:
        try:
            mmcv = importlib.import_module('mmcv')
        except ImportError as exc:
            raise ImportError(
                f'mmdccnext needs mmcv>={MMCV_MIN},<{MMCV_MAX} {kind}, but mmcv '
                f'cannot be imported ({exc}). {_HOW_TO_INSTALL}') from None
        version = mmcv.__version__
    if not (digit_version(MMCV_MIN) <= digit_version(version) < digit_version(MMCV_MAX)):
        raise ImportError(
            f'mmdccnext needs mmcv>={MMCV_MIN},<{MMCV_MAX} {kind}; found mmcv '
            f'{version}. {_HOW_TO_INSTALL}')
    if not require_ops:
        return
    if has_ops is None:
        has_ops = importlib.util.find_spec('mmcv._ext') is not None
    if not has_ops:
        raise ImportError(
            f'mmdccnext needs mmcv {version} with its compiled ops (mmcv._ext), but this '
            f'mmcv was installed without them (mmcv-lite or MMCV_WITH_OPS=0). '
            f'{_HOW_TO_INSTALL}')
