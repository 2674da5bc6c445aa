"""The self-check of a DCConv path against the PyTorch path, run before ``impl='auto'`` trusts
Triton on a device.

The Triton kernels are tested under Triton's CPU interpreter, and GPU machines carry other
Triton versions than the one they were tested with: a kernel that does not compile there
would break the first forward pass, one that computes otherwise on the hardware would train
silently wrong. So before Triton first runs on a device in a compute dtype,
:func:`mmdccnext.ops.dcconv.resolve_impl` asks :func:`check`, which runs a probe through the
Triton leaf and the PyTorch leaf (:func:`probe`) and compares them:

* the cases: small integers (exact ties everywhere, duplicated patches), near-ties a few
  ulps apart, ``N < K``: about 500 patches in all, B = 2, so that the kernels run several row
  blocks and column tiles, partial ones included; C = 40 channels (a partial channel block)
  and K = 12 (DCCNeXt's stage-3 kernel);
* clustering: the indices must be identical (the contract fixes every distance's rounding);
* aggregation on those indices, forward and backward (``grad_x``, ``grad_w``, ``grad_b``):
  within the tolerance of ``tests/test_ops`` (largest error at most ``rtol`` times the largest
  reference magnitude; ``rtol`` 1e-5 in float32, 1e-12 in float64).

The probe calls the leaves directly (no autograd, no ``torch.library`` op), on inputs drawn
from its own seeded generator on the CPU (the user's random streams are not touched), and
raises nothing: any exception of the candidate becomes the check's failure. The result is
kept per (device, compute dtype) for the rest of the process; each DDP rank checks its own
device, with no collective. Cost: a few small launches of each kernel (on a GPU, the Triton
JIT compiles the kernels it would compile on first use anyway).

``MMDCCNEXT_DCCONV_SELFCHECK=0`` skips the probe (:func:`enabled`).
"""
import contextlib
import os
import threading
import time
import traceback
from typing import NamedTuple

import torch

from .library import leaf

#: ``0`` skips the self-check: Triton runs unchecked (``resolve_impl`` says so once).
ENV_SELFCHECK = 'MMDCCNEXT_DCCONV_SELFCHECK'
#: Tolerance of the aggregation results per compute dtype (that of tests/test_ops).
RTOL = {torch.float32: 1e-5, torch.float64: 1e-12}
#: What the warnings and errors of a failed check tell the user to do.
HOW_TO_REPORT = (
    'Please report it to the mmdccnext maintainers (an issue in the project\'s tracker) with '
    'this message and the output of `python -m mmdccnext.utils.collect_env`; '
    "impl='pytorch' (or MMDCCNEXT_DCCONV_IMPL=pytorch) runs the checked PyTorch path.")


class Result(NamedTuple):
    """``passed``: the candidate agreed with the reference; ``detail``: what was compared
    (passed) or the first thing that failed; ``seconds``: the probe's wall time."""
    passed: bool
    detail: str
    seconds: float


#: Cases of the probe (:func:`_cases`).
N_CASES = 3

_results = {}
_lock = threading.Lock()


def enabled():
    """False when ``MMDCCNEXT_DCCONV_SELFCHECK`` is ``0`` (or ``false``, ``no``, ``off``)."""
    return os.environ.get(ENV_SELFCHECK, '1').strip().lower() not in ('0', 'false', 'no', 'off')


def device_key(device):
    """``'cuda:<index>'`` (the current device when ``device`` has no index), ``'cpu'``..."""
    device = torch.device(device)
    if device.type == 'cuda' and device.index is None:
        device = torch.device('cuda', torch.cuda.current_device())
    return str(device)


def check(device, dtype, candidate='triton'):
    """The self-check of ``candidate`` on ``device`` in the compute ``dtype`` (float32 or
    float64): run once per process and (device, dtype, candidate), then remembered."""
    key = (device_key(device), torch.float64 if dtype == torch.float64 else torch.float32,
           candidate)
    with _lock:  # two threads (DataParallel replicas) must not probe twice
        if key not in _results:
            _results[key] = probe(key[0], key[1], candidate)
        return _results[key]


def forget():
    """Forget every remembered result (for tests)."""
    with _lock:
        _results.clear()


# ------------------------------------------------------------------------------ the probe
def _cases(dtype):
    """(label, s, K) clustering cases and (label, x, weight, bias, grad_out) per case: CPU
    tensors in ``dtype`` from a fixed seed."""
    g = torch.Generator().manual_seed(20250101)
    cases = []
    # exact ties and duplicates: small integers, and a block of copied patches (N = 176:
    # 6 row blocks of the kernels, 3 column tiles, the last ones partial)
    s = torch.randint(-2, 3, (2, 176, 6), generator=g).to(dtype)
    s[:, 120:150] = s[:, :30]
    s[1, 150:170] = s[1, 7]  # 21 identical patches: more exact ties than K
    cases.append(('exact ties and duplicates', s, 12))
    # near-ties: 20 patches, each repeated 8 times with every value moved a few ulps
    base = torch.randn(1, 20, 8, generator=g, dtype=dtype).repeat(1, 8, 1)
    ulps = torch.randint(-3, 4, base.shape, generator=g).to(dtype)
    s = base * (1 + ulps * torch.finfo(dtype).eps / 2)
    cases.append(('near-ties a few ulps apart', s, 12))
    # fewer patches than taps
    cases.append(('N < K', torch.randn(2, 7, 6, generator=g, dtype=dtype), 12))
    assert len(cases) == N_CASES
    out = []
    for label, s, K in cases:
        B, N, _ = s.shape
        C = 40
        x = torch.randn(B, N, C, generator=g, dtype=dtype)
        w = torch.randn(K, C, generator=g, dtype=dtype)
        b = torch.randn(C, generator=g, dtype=dtype)
        go = torch.randn(B, N, C, generator=g, dtype=dtype)
        out.append((f'{label} (B={B}, N={N}, D={s.shape[-1]}, K={K})', s, K, (x, w, b, go)))
    return out


class _Mismatch(Exception):
    pass


def _run(path, what, label, fn, *args):
    """``fn(*args)``; whatever it raises becomes a :class:`_Mismatch` naming ``path``,
    ``what`` ran, where it raised and the case."""
    try:
        return fn(*args)
    except Exception as exc:  # noqa: BLE001 - what the path raises is the finding
        where = traceback.extract_tb(exc.__traceback__)[-1]
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else 'no message'
        raise _Mismatch(f'the {path} path\'s {what} raised {type(exc).__name__}: {message} '
                        f'(at {os.path.basename(where.filename)}:{where.lineno}; {label})'
                        ) from exc


def _compare_close(name, got, ref, rtol, label, candidate, reference):
    if not isinstance(got, torch.Tensor) or got.shape != ref.shape:
        shape = tuple(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
        raise _Mismatch(f'{name} of the {candidate} path has shape {shape}, expected '
                        f'{tuple(ref.shape)} ({label})')
    got, ref = got.detach().double().cpu(), ref.detach().double().cpu()
    err = (got - ref).abs().nan_to_num(nan=float('inf'))
    scale = max(float(ref.abs().max()), 1e-30)
    worst = float(err.max())
    if worst > rtol * scale:
        where = tuple((err == worst).nonzero()[0].tolist())
        raise _Mismatch(f'{name} differs: largest error {worst:.3g} at {where} ({candidate} '
                        f'{got[where].item():.9g}, {reference} {ref[where].item():.9g}), '
                        f'tolerance {rtol:g} x {scale:.3g} ({label})')


def _compare(candidate, reference, device, dtype):
    """Raise :class:`_Mismatch` at the first case where ``candidate``'s leaf does not give
    ``reference``'s results."""
    cand, ref = leaf(candidate), leaf(reference)
    rtol = RTOL[dtype]
    for label, s, K, tensors in _cases(dtype):
        s, x, w, b, go = (t.to(device) for t in (s, *tensors))
        idx = _run(candidate, 'clustering', label, cand.cluster, s, K)
        ref_idx = _run(reference, 'clustering', label, ref.cluster, s, K)
        if not isinstance(idx, torch.Tensor) or idx.shape != ref_idx.shape or \
                idx.dtype != ref_idx.dtype:
            got = (f'{tuple(idx.shape)} {idx.dtype}' if isinstance(idx, torch.Tensor) else
                   type(idx).__name__)
            raise _Mismatch(f'cluster indices of the {candidate} path are {got}, expected '
                            f'{tuple(ref_idx.shape)} {ref_idx.dtype} ({label})')
        idx, ref_idx = idx.cpu(), ref_idx.cpu()
        if not torch.equal(idx, ref_idx):
            where = tuple((idx != ref_idx).nonzero()[0].tolist())
            raise _Mismatch(f'cluster indices differ, first at (b, n, k) = {where}: '
                            f'{candidate} {idx[where].item()}, {reference} '
                            f'{ref_idx[where].item()} ({label})')
        idx = ref_idx.to(device)
        w = w[:idx.shape[-1]].contiguous()
        _compare_close('aggregate output',
                       _run(candidate, 'aggregation', label, cand.aggregate_forward, x, idx, w, b),
                       _run(reference, 'aggregation', label, ref.aggregate_forward, x, idx, w, b),
                       rtol, label, candidate, reference)
        grads = [
            _run(path, 'aggregation backward', label, mod.aggregate_backward, go, x, idx, w,
                 True, True, True) for path, mod in ((candidate, cand), (reference, ref))
        ]
        for name, got, want in zip(('grad_x', 'grad_weight', 'grad_bias'), *grads):
            _compare_close(name, got, want, rtol, label, candidate, reference)


def probe(device, dtype, candidate='triton', reference='pytorch'):
    """Run the probe now (nothing remembered): ``candidate``'s leaf against ``reference``'s on
    ``device`` in the compute ``dtype``. Returns a :class:`Result`; never raises."""
    start = time.perf_counter()
    device = torch.device(device)
    try:
        with _plain_eager(device):
            _compare(candidate, reference, device, dtype)
            if device.type == 'cuda':
                torch.cuda.synchronize(device)
    except _Mismatch as exc:
        return Result(False, str(exc), time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - e.g. a leaf that does not import
        return Result(False, f'{type(exc).__name__}: {exc}', time.perf_counter() - start)
    return Result(True, f'{candidate} agrees with {reference} on {N_CASES} cases in '
                  f'{str(dtype).replace("torch.", "")}: indices identical, outputs and '
                  f'gradients within {RTOL[dtype]:g}', time.perf_counter() - start)


@contextlib.contextmanager
def _plain_eager(device):
    """No autograd, no autocast, the probe's device current: the probe computes what a user
    call would, whatever context it is called from (``resolve_impl`` runs it once while
    ``torch.compile`` traces a model, as a call whose result is a constant)."""
    with contextlib.ExitStack() as stack:
        stack.enter_context(torch.no_grad())
        if device.type in ('cuda', 'cpu'):
            stack.enter_context(torch.autocast(device.type, enabled=False))
        if device.type == 'cuda':
            stack.enter_context(torch.cuda.device(device))
        yield
