"""Loading of the optional C++ extension ``mmdccnext._ext`` and choice of the DCConv path.

The extension is optional: when it cannot be imported, every operator falls back to its
pure-PyTorch path and ONE ``UserWarning`` is issued (on the first call that had to fall back),
never an import error.
"""
import importlib
import os
import warnings

import torch

IMPLS = ('auto', 'cpu', 'pytorch', 'export')
ENV_IMPL = 'MMDCCNEXT_DCCONV_IMPL'
#: Forces the ISA of the C++ kernels ('avx512' | 'avx2' | 'generic'); read by the extension on
#: its first kernel call (see ``mmdccnext/ops/csrc/cpu/isa.cpp``).
ENV_ISA = 'MMDCCNEXT_CPU_ISA'
#: ISAs of the C++ kernels that ``impl='auto'`` runs: all of them. Measured on an AMD EPYC
#: (AVX2 + FMA, no AVX-512; the generic kernels forced), 1 thread, B = 1, C = 320, K = 12,
#: ``tools/analysis/benchmark_dcconv.py --threads 1 --isa all-supported``: the generic
#: (baseline SSE2) kernels ran ``dcconv`` 3.7x (forward) / 4.9x (forward + backward) faster
#: than the PyTorch path at N = 4000, 2.9x / 3.4x at N = 16000 (AVX2: 6.5x / 8.6x at 4000),
#: so no ISA needs the PyTorch path instead. This tuple is where an ISA measured slower than
#: the PyTorch path would be left out (tests/test_ops/test_cpu_isa.py holds the rule).
AUTO_CPU_ISAS = ('avx512', 'avx2', 'generic')

_EXT_MODULE = 'mmdccnext._ext'
_state = {'loaded': False, 'module': None, 'error': None, 'warned': False}


def _import_ext():
    """Import the compiled module (separate function so tests can monkeypatch it)."""
    return importlib.import_module(_EXT_MODULE)


def load_ext():
    """Return the compiled module ``mmdccnext._ext`` or ``None`` if it is not available.

    The import is attempted once and cached; :func:`reset_ext_cache` forgets the result.
    """
    if not _state['loaded']:
        _state['loaded'] = True
        try:
            _state['module'] = _import_ext()
        except Exception as exc:  # ImportError, or an ABI mismatch raising OSError
            _state['module'] = None
            _state['error'] = f'{type(exc).__name__}: {exc}'
    return _state['module']


def ext_available():
    """Whether the fused C++ CPU kernels can be used."""
    return load_ext() is not None


def ext_error():
    """Why the extension could not be imported (``None`` if it was)."""
    load_ext()
    return _state['error']


def cpu_isa():
    """The ISA whose C++ kernels run ('avx512', 'avx2' or 'generic'; ``None`` without the
    extension): :data:`ENV_ISA` if set, else the best the CPU supports. Raises a
    ``RuntimeError`` naming the missing CPU features if :data:`ENV_ISA` asks for an ISA this
    CPU cannot run."""
    ext = load_ext()
    return None if ext is None else ext.isa()


def reset_ext_cache():
    """Forget the cached import result and the warned-once flag (for tests)."""
    _state.update(loaded=False, module=None, error=None, warned=False)


def _warn_fallback_once():
    if not _state['warned']:
        _state['warned'] = True
        warnings.warn(
            'mmdccnext: the C++ extension mmdccnext._ext is not available '
            f'({_state["error"]}); DCConv runs on its (slower) pure-PyTorch path. Build it '
            'with `pip install --no-build-isolation -e .` (MMDCCNEXT_WITH_EXT unset or 1).',
            UserWarning,
            stacklevel=3)


def is_exporting():
    """Whether the model is being exported or traced (ONNX export, ``torch.export``,
    ``torch.jit.trace``): then only the standard-op path can be recorded."""
    return (torch.onnx.is_in_onnx_export() or torch.compiler.is_exporting()
            or torch.jit.is_tracing())


def resolve_impl(impl, tensor):
    """Map ``impl`` ('auto' | 'cpu' | 'pytorch' | 'export') to the path that will run.

    While exporting or tracing (:func:`is_exporting`) every ``impl`` runs ``'export'``, the
    path in standard ops (:mod:`mmdccnext.ops.export`; same indices and outputs).

    ``'auto'`` is first replaced by the environment variable ``MMDCCNEXT_DCCONV_IMPL`` when it
    is set, then means: fused C++ kernels for CPU tensors when the extension is importable
    and runs one of :data:`AUTO_CPU_ISAS` (:func:`cpu_isa`), the PyTorch path otherwise.
    ``'cpu'`` raises a ``RuntimeError`` when the extension is missing or the tensor is not on
    the CPU.
    """
    if impl not in IMPLS:
        raise ValueError(f'impl must be one of {IMPLS}, got {impl!r}')
    if impl == 'auto':
        env = os.environ.get(ENV_IMPL, '').strip().lower()
        if env:
            if env not in IMPLS:
                raise ValueError(
                    f'environment variable {ENV_IMPL} must be one of {IMPLS}, got {env!r}')
            impl = env
    if impl == 'export' or is_exporting():
        return 'export'
    if impl == 'pytorch':
        return 'pytorch'
    on_cpu = tensor.device.type == 'cpu'
    if impl == 'cpu':
        if not on_cpu:
            raise RuntimeError(
                f"impl='cpu' runs the fused C++ CPU kernels, but the input is on "
                f"{tensor.device}; use impl='pytorch' or 'auto' for non-CPU tensors.")
        if load_ext() is None:
            raise RuntimeError("impl='cpu' needs the C++ extension mmdccnext._ext, which cannot be "
                               f'imported ({_state["error"]}). Build it with `pip install '
                               "--no-build-isolation -e .`, or use impl='pytorch'.")
        return 'cpu'
    # auto
    if not on_cpu:
        return 'pytorch'
    if load_ext() is None:
        _warn_fallback_once()
        return 'pytorch'
    return 'cpu' if cpu_isa() in AUTO_CPU_ISAS else 'pytorch'
