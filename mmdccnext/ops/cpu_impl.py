"""The C++ CPU path of DCConv: the optional extension ``mmdccnext._ext`` and its three calls.

The extension is optional: when it cannot be imported, ``impl='auto'`` runs the PyTorch path
and ONE ``UserWarning`` is issued (:func:`warn_unavailable_once`, on the first call that had to
fall back), never an import error. The kernels are compiled per ISA (AVX-512, AVX2 + FMA,
generic SSE2) and chosen once by the CPU's features (:func:`cpu_isa`).
"""
import importlib
import warnings

#: Forces the ISA of the C++ kernels ('avx512' | 'avx2' | 'generic'); read by the extension on
#: its first kernel call (see ``mmdccnext/ops/csrc/cpu/isa.cpp``).
ENV_ISA = 'MMDCCNEXT_CPU_ISA'
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


def warn_unavailable_once():
    if not _state['warned']:
        _state['warned'] = True
        warnings.warn(
            'mmdccnext: the C++ extension mmdccnext._ext is not available '
            f'({_state["error"]}); DCConv runs on its (slower) pure-PyTorch path. Build it '
            'with `pip install --no-build-isolation -e .` (MMDCCNEXT_WITH_EXT unset or 1).',
            UserWarning,
            stacklevel=4)


def unavailable_reason(device_type='cpu'):
    """Why ``impl='cpu'`` cannot run on tensors of ``device_type`` (``None`` if it can)."""
    if device_type != 'cpu':
        return (f"impl='cpu' runs the fused C++ CPU kernels, but the input is on "
                f"{device_type}; use impl='pytorch' or 'auto' for non-CPU tensors.")
    if load_ext() is None:
        return ("impl='cpu' needs the C++ extension mmdccnext._ext, which cannot be imported "
                f'({_state["error"]}). Build it with `pip install --no-build-isolation -e .`, '
                "or use impl='pytorch'.")
    return None


def _ext_or_raise(x):
    why = unavailable_reason(x.device.type)
    if why:
        raise RuntimeError(why)
    return load_ext()


def cluster(s, kernel_size):
    """Fused C++ clustering of the (B, N, D) sub-vectors ``s``: screening distances in
    register blocks (FMA), a certified candidate list per row, canonical distances for the
    candidates only (``csrc/cpu/cluster_kernels.h``; compiled per ISA, see :func:`cpu_isa`)."""
    return _ext_or_raise(s).cluster_forward(s, kernel_size)


def aggregate_forward(x, idx, weight, bias):
    """Fused C++ aggregation: reads ``x`` through ``idx``, never the gathered tensor."""
    return _ext_or_raise(x).aggregate_forward(x.contiguous(), idx.contiguous(),
                                              weight.contiguous(),
                                              bias.contiguous() if bias is not None else None)


def aggregate_backward(grad_out, x, idx, weight, need_x, need_w, need_b):
    """Deterministic gradients whatever the number of threads; ``None`` for those not needed."""
    grads = _ext_or_raise(x).aggregate_backward(grad_out.contiguous(), x.contiguous(),
                                                idx.contiguous(), weight.contiguous(),
                                                bool(need_x), bool(need_w), bool(need_b))
    return tuple(g if need else None for g, need in zip(grads, (need_x, need_w, need_b)))
