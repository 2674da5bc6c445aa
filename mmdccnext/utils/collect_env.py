"""What to paste into a bug report: ``python -m mmdccnext.utils.collect_env`` (also run by
``python tools/misc/collect_env.py``), the OpenMMLab way.

MMEngine's ``collect_env`` (platform, Python, CUDA and the GPUs, CUDA_HOME and NVCC, GCC,
PyTorch, TorchVision, OpenCV, MMEngine), as MMDetection and MMPretrain extend it, plus what
DCConv depends on:

* versions: PyTorch's CUDA, Triton, MMCV and whether its compiled ops load, MMDetection,
  MMSegmentation, MMPretrain, ONNX Runtime, mmdccnext (and its git commit in a checkout);
* the CPU, the threads, and the ISA of the C++ kernels (or why the extension does not load);
* for every visible device (the CPU and each CUDA GPU), each DCConv path: available or why
  not, for Triton its self-check result (:mod:`mmdccnext.ops.selfcheck`, run here in float32
  and float64), and which path ``impl='auto'`` runs there.

Nothing here raises: what cannot be found is reported as such.
"""
import argparse
import contextlib
import importlib
import logging
import os
import os.path as osp
import platform
import subprocess
import warnings
from collections import OrderedDict

import torch


def _version(module_name):
    """``module.__version__``, or why there is none."""
    try:
        return importlib.import_module(module_name).__version__
    except ImportError:
        return 'not installed'
    except Exception as error:  # noqa: BLE001 - a broken install is worth reporting as such
        return f'installed but fails to import ({type(error).__name__}: {error})'


def _mmcv_ops():
    """Whether MMCV's compiled ops (``mmcv._ext``) load, and what they were built with."""
    try:
        ext = importlib.import_module('mmcv._ext')
    except ImportError as error:
        return (f'not loaded ({error}): the backbone and DCConv do not need them; detection '
                'and segmentation do')
    except Exception as error:  # noqa: BLE001 - e.g. an ABI mismatch
        return f'fail to load ({type(error).__name__}: {error})'
    built = []
    for what, getter in (('compiler', 'get_compiler_version'),
                         ('CUDA', 'get_compiling_cuda_version')):
        with contextlib.suppress(Exception):
            built.append(f'{what} {getattr(ext, getter)()}')
    return 'loaded' + (f' (built with {", ".join(built)})' if built else '')


def _git_commit():
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    if not osp.exists(osp.join(root, '.git')):
        return None
    try:
        out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], cwd=root,
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def cpu_name():
    """The CPU model (``/proc/cpuinfo``, else ``platform.processor()``)."""
    with contextlib.suppress(OSError):
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    return platform.processor() or platform.machine() or 'unknown'


def _base_env():
    """MMEngine's report without the long PyTorch build details (``--full`` keeps them)."""
    try:
        from mmengine.utils.dl_utils import collect_env as collect_base_env
        return collect_base_env()
    except Exception as error:  # noqa: BLE001 - e.g. no distutils on Python 3.12
        import sys
        return OrderedDict([
            ('sys.platform', sys.platform), ('Python', sys.version.replace('\n', '')),
            ('CUDA available', torch.cuda.is_available()), ('PyTorch', torch.__version__),
            ("MMEngine's collect_env", f'failed ({type(error).__name__}: {error})')])


def _devices():
    devices = [torch.device('cpu')]
    if torch.cuda.is_available():
        devices += [torch.device('cuda', i) for i in range(torch.cuda.device_count())]
    return devices


@contextlib.contextmanager
def _quiet():
    """The choice of a path logs and warns once per process; the report says it instead."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            yield
    finally:
        logging.disable(logging.NOTSET)


def dcconv_paths(device):
    """``{path: 'available ...' | 'not available: why'}`` for ``device``, and ``'auto'``: the
    path ``impl='auto'`` runs there (float32 inputs; float16 / bfloat16 are computed in
    float32)."""
    from mmdccnext.ops import cpu_impl, selfcheck

    # the module: mmdccnext.ops.dcconv, the attribute, is the function
    dcconv = importlib.import_module('mmdccnext.ops.dcconv')
    out = OrderedDict()
    why_not = cpu_impl.unavailable_reason(device.type)
    if why_not is None:
        try:
            out['cpu'] = f'available, the {cpu_impl.cpu_isa()} kernels'
        except RuntimeError as error:
            out['cpu'] = f'not available: {error}'
    else:
        out['cpu'] = f'not available: {why_not}'

    ok, why = dcconv._triton_status(device.type)
    if not ok:
        out['triton'] = f'not available: {why}'
    elif device.type not in dcconv.AUTO_TRITON_DEVICES:
        out['triton'] = (f'available ({why}), by explicit impl=\'triton\' only; not '
                         'self-checked here')
    elif not selfcheck.enabled():
        out['triton'] = f'available ({why}); self-check skipped ({selfcheck.ENV_SELFCHECK}=0)'
    else:
        checks = []
        for dtype in (torch.float32, torch.float64):
            result = selfcheck.check(device, dtype)
            name = str(dtype).replace('torch.', '')
            checks.append(f'{name} PASSED in {result.seconds:.2f} s' if result.passed else
                          f'{name} FAILED: {result.detail}')
        out['triton'] = f'available ({why}); self-check: ' + '; '.join(checks)
    out['pytorch'] = 'available (any device; deterministic backward)'
    try:
        with _quiet():
            out['auto'] = dcconv.resolve_impl('auto', torch.empty(0, device=device))
    except Exception as error:  # noqa: BLE001 - e.g. a bad MMDCCNEXT_DCCONV_IMPL
        out['auto'] = f'fails: {type(error).__name__}: {error}'
    env_impl = os.environ.get(dcconv.ENV_IMPL)
    if env_impl:
        out['auto'] += f' ({dcconv.ENV_IMPL}={env_impl})'
    return out


def collect_env(full=False):
    """The report as an ordered ``{field: value}``; ``full`` keeps PyTorch's build details."""
    env = _base_env()
    if not full:
        env.pop('PyTorch compiling details', None)
    env['PyTorch CUDA'] = torch.version.cuda or 'none (a CPU-only build of PyTorch)'
    env['Triton'] = _version('triton')
    env['MMCV'] = _version('mmcv')
    env['MMCV ops'] = _mmcv_ops()
    env['MMDetection'] = _version('mmdet')
    env['MMSegmentation'] = _version('mmseg')
    env['MMPretrain'] = _version('mmpretrain')
    env['ONNX Runtime'] = _version('onnxruntime')
    import mmdccnext
    commit = _git_commit()
    env['mmdccnext'] = mmdccnext.__version__ + (f'+{commit}' if commit else '')
    env['CPU'] = (f'{cpu_name()}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} '
                  'torch threads')
    from mmdccnext.ops import cpu_impl
    if cpu_impl.ext_available():
        forced = os.environ.get(cpu_impl.ENV_ISA)
        try:
            isa = f'the {cpu_impl.cpu_isa()} copy'
        except RuntimeError as error:  # an ISA forced that this CPU cannot run
            isa = f'none: {error}'
        env['DCConv C++ kernels'] = (f'{isa} ({cpu_impl.ENV_ISA}={forced})' if forced else
                                     f'{isa} (the best this CPU runs)')
    else:
        env['DCConv C++ kernels'] = (f'not built or not loadable ({cpu_impl.ext_error()}): '
                                     'DCConv on the CPU runs the PyTorch path')
    for device in _devices():
        for path, state in dcconv_paths(device).items():
            env[f'DCConv on {device}, ' + ("impl='auto' runs" if path == 'auto' else path)] = state
    return env


def main(argv=None):
    parser = argparse.ArgumentParser(description='Print the environment for a bug report.')
    parser.add_argument('--full', action='store_true', help="also PyTorch's build details")
    args = parser.parse_args(argv)
    for name, value in collect_env(full=args.full).items():
        print(f'{name}: {value}')


if __name__ == '__main__':
    main()
