"""One command that checks and measures DCConv and DCCNeXt on a GPU (or, small, on the CPU).

First, always: the self-check ``impl='auto'`` runs before it trusts the Triton path on the
device (mmdccnext/ops/selfcheck.py; float32 and float64), reported as PASS or FAILED with what
differed. Then the sections (all in one process, in this order; ``--sections`` picks some):

``correctness``
    Every DCConv path that can run on the device (``mmdccnext.ops.available_impls``) against
    a float64 reference written here from the contract of :mod:`mmdccnext.ops` (squared L2 on
    ``x[..., ::d]``, the patch itself first, then ascending (distance, index), NaN as +inf)
    and against each other: indices identical, outputs and gradients (x, weight, bias) within
    a normwise tolerance, in float32 and under bfloat16 autocast (x float32 and x bfloat16).
    On inputs whose distances are exact in float32 (multiples of 1/2, duplicated patches,
    NaN / inf) the indices must equal the reference's; on Gaussian inputs a row may differ
    from the float64 order only where the float64 distances are a near-tie (within the
    float32 rounding of the canonical sum), and the paths must still agree with each other.
``op``
    ``dcconv`` at DCCNeXt-B2's shapes (B = 2, N = 4000 and 16000, C = 320, K = 12):
    forward and forward + backward time and peak memory of each path and of the naive
    composite (``cdist`` -> ``topk`` -> gather -> weighted sum), printed with ratios.
``train``
    One training step (forward + backward under bfloat16 autocast, channels_last model and
    input) of the DCCNeXt-B2 backbone and of ConvNeXt-T (timm's ``convnext_tiny`` if timm is
    installed, else MMPretrain's ``ConvNeXt('tiny')``) at 224x224 batch 128 and 1280x800
    batch 2: images/s and peak memory, DCCNeXt-B2 / ConvNeXt-T ratios.
``compile``
    The same step under ``torch.compile`` (compile time, graph breaks, images/s, memory).

Timing: CUDA events around each call (after ``torch.cuda.synchronize``) on CUDA,
``time.perf_counter`` on the CPU; a warm-up call, then the median of a few repeats (fewer when
a call is slow: every item has a time budget). Memory: on CUDA the peak of
``torch.cuda.max_memory_allocated`` during the call minus what was allocated before it; on the
CPU the peak growth of the resident set during the call (``VmHWM - VmRSS`` before, after
resetting the high-water mark), with glibc's mmap threshold pinned at 128 KiB so that freed
blocks go back to the system and an earlier call cannot hide a later one's peak.

The whole run keeps to ``--budget`` seconds (default 330 on CUDA, so it ends within 6 minutes
with the start-up): an item that would start after the budget is printed as SKIPPED.
Exit status 1 when the self-check or a correctness check fails, 0 otherwise.

On a GPU machine without OpenMMLab packages (see ``tools/analysis/gpu_bundle.sh``)::

    pip install --no-index --no-deps --target /tmp/site .whl/*.whl && \\
        PYTHONPATH=/tmp/site:. python3 tools/analysis/gpu_check.py

Dry run on the CPU with small shapes::

    python tools/analysis/gpu_check.py --device cpu
"""
import argparse
import contextlib
import ctypes
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections import namedtuple

import torch

# run as a script from anywhere: the repository root is two levels up
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

SECTIONS = ('correctness', 'op', 'train', 'compile')

Case = namedtuple('Case', 'name B N C K data modes')
Setting = namedtuple('Setting', 'name batch height width dense')

# Modes of the correctness check: (name, dtype of x, autocast to bfloat16)
MODES = {
    'fp32': (torch.float32, False),
    'bf16-autocast x=fp32': (torch.float32, True),
    'bf16-autocast x=bf16': (torch.bfloat16, True),
}
ALL_MODES = tuple(MODES)
# Normwise tolerance max|y - y_ref| / max|y_ref| by the dtype of the compared tensor: float32
# results of sums of up to a few thousand products; bfloat16 results are rounded to 8 bits.
TOL = {torch.float32: 1e-4, torch.bfloat16: 1e-2}

SCALES = {
    # correctness cases, op shapes (B, N, C, K), train settings
    'full':
    dict(
        cases=[
            Case('gaussian (B2 stage 3)', 2, 4000, 320, 12, 'gaussian', ALL_MODES),
            Case('half-integers + duplicates', 2, 1500, 320, 12, 'dyadic', ALL_MODES),
            Case('NaN / inf', 2, 600, 64, 12, 'nonfinite', ('fp32', )),
            Case('N < K', 2, 7, 16, 12, 'dyadic', ('fp32', )),
        ],
        op_shapes=[(2, 4000, 320, 12), (2, 16000, 320, 12)],
        settings=[
            Setting('224x224 b128', 128, 224, 224, False),
            Setting('1280x800 b2', 2, 800, 1280, True)
        ]),
    'small':
    dict(
        cases=[
            Case('gaussian', 2, 600, 128, 12, 'gaussian', ALL_MODES),
            Case('half-integers + duplicates', 2, 400, 64, 12, 'dyadic', ALL_MODES),
            Case('NaN / inf', 1, 200, 64, 12, 'nonfinite', ('fp32', )),
            Case('N < K', 2, 7, 16, 12, 'dyadic', ('fp32', )),
        ],
        op_shapes=[(2, 500, 320, 12), (2, 2000, 320, 12)],
        settings=[
            Setting('32x32 b2', 2, 32, 32, False),
            Setting('64x48 b1', 1, 48, 64, True)
        ]),
}

SUBVECTOR_STRIDE = 8
# Seconds an item of each section is expected to need at most on a GPU (a torch.compile of a
# backbone's training step takes about a minute or two): an item starts only when that much of
# the budget is left, so that the run ends within it.
NEEDS = {'correctness': 5, 'op': 15, 'train': 30, 'compile': 120}


# ----------------------------------------------------------------------------- environment
def device_name(device):
    if device.type == 'cuda':
        p = torch.cuda.get_device_properties(device)
        return f'{p.name}, {p.total_memory / 2**30:.0f} GiB, CUDA {torch.version.cuda}'
    model = platform.processor() or 'unknown CPU'
    with contextlib.suppress(OSError):
        for line in open('/proc/cpuinfo'):
            if line.startswith('model name'):
                model = line.split(':', 1)[1].strip()
                break
    return f'{model}, {os.cpu_count()} logical CPUs, {torch.get_num_threads()} torch threads'


def git_commit():
    try:
        out = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                             cwd=_ROOT,
                             capture_output=True,
                             text=True,
                             timeout=10)
    except (OSError, subprocess.SubprocessError):
        return 'unknown'
    return out.stdout.strip() or 'unknown (not a git checkout)'


def pin_mmap_threshold(nbytes=128 * 1024):
    """Make glibc serve every block >= ``nbytes`` by mmap and return it on free.

    By default the threshold rises (up to 32 MiB) after large blocks are freed, and freed heap
    memory stays resident: a later, smaller peak would then not raise the resident set's
    high-water mark. Returns whether it took effect (False off glibc)."""
    try:
        libc = ctypes.CDLL('libc.so.6')
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        return bool(libc.mallopt(M_MMAP_THRESHOLD, nbytes)) and bool(
            libc.mallopt(M_TRIM_THRESHOLD, nbytes))
    except (OSError, AttributeError):
        return False


class Clock:
    """The run's time budget."""

    def __init__(self, budget):
        self.start = time.perf_counter()
        self.budget = budget

    def elapsed(self):
        return time.perf_counter() - self.start

    def left(self):
        return self.budget - self.elapsed()

    def skip(self, what, needs):
        """Print why ``what`` is skipped and return True when less than ``needs`` seconds of
        the budget are left: an item is started only when it can end within the budget."""
        left = self.left()
        if left >= needs:
            return False
        print(f'   {what}: SKIPPED (time budget: needs about {needs:.0f} s, {max(0, left):.0f} s '
              'left; run this section alone with --sections)')
        return True


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def time_call(fn, device):
    """Seconds one call of ``fn`` takes on ``device``."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1e3
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def peak_memory(fn, device, reset=None):
    """Peak bytes one call of ``fn`` adds to what was allocated (CUDA) / resident (CPU).

    ``reset`` runs first, outside the window: what ``fn`` would free on entry (the gradients
    of the previous call) must not offset what it allocates."""
    if reset is not None:
        reset()
    if device.type == 'cuda':
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - base
    from mmdccnext.utils.memory import proc_status, reset_peak_rss
    base = proc_status()['VmRSS']
    reset_peak_rss()
    fn()
    return proc_status()['VmHWM'] - base


def median_time(fn, device, repeat, max_seconds):
    """Warm-up call, then the median of up to ``repeat`` timed calls within ``max_seconds``."""
    first = time_call(fn, device)
    times, spent = [], first
    while len(times) < repeat and (spent < max_seconds or not times):
        times.append(time_call(fn, device))
        spent += times[-1]
        if first > max_seconds:  # one call takes the budget: one timed call is all
            break
    return statistics.median(times), len(times)


def mib(nbytes):
    return f'{nbytes / 2**20:.1f}'


def ratio(a, b, digits=2):
    return f'{a / b:.{digits}f}' if a is not None and b not in (None, 0) else 'n/a'


# ---------------------------------------------------------------------- float64 reference
def member_distances(x, idx, subvector_stride=SUBVECTOR_STRIDE):
    """float64 distance (NaN as +inf) of every patch to each member of its cluster."""
    s = x.detach()[..., ::subvector_stride].double()
    B = s.shape[0]
    members = s[torch.arange(B, device=s.device)[:, None, None], idx]  # (B, N, Kc, D)
    d = ((s[:, :, None, :] - members)**2).sum(-1)
    return d.masked_fill_(torch.isnan(d), math.inf)


def compare_indices(x, idx, ref_idx, near_ties, subvector_stride=SUBVECTOR_STRIDE):
    """(identical rows, near-tie rows, wrong rows, total rows) of ``idx`` against ``ref_idx``.

    With ``near_ties``, a row that differs still counts as right when the patch is first, no
    member repeats and the float64 distances of its members differ from the reference's, rank
    by rank, by at most the float32 rounding of the canonical distance (a relative
    4 (D + 4) 2^-24 of the largest): the order the contract fixes is that of float32
    distances, which can differ from the float64 order exactly there."""
    B, N, Kc = ref_idx.shape
    if tuple(idx.shape) != (B, N, Kc):
        return 0, 0, B * N, B * N
    same = (idx == ref_idx).all(-1)
    n_same = int(same.sum())
    if n_same == B * N or not near_ties:
        return n_same, 0, B * N - n_same, B * N
    D = x[..., ::subvector_stride].shape[-1]
    d_ref = member_distances(x, ref_idx, subvector_stride)[..., 1:]
    d_got = member_distances(x, idx, subvector_stride)[..., 1:]
    scale = d_ref.amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
    close = ((d_got - d_ref).abs() <= 4 * (D + 4) * 2.0**-24 * scale).all(-1)
    centre = idx[..., 0] == torch.arange(N, device=idx.device)
    srt = idx.sort(-1).values
    unique = (srt[..., 1:] != srt[..., :-1]).all(-1)
    near = (~same) & close & centre & unique
    n_near = int(near.sum())
    return n_same, n_near, B * N - n_same - n_near, B * N


def normwise_error(got, ref):
    """max|got - ref| / max|ref| in float64 (0 when both are 0)."""
    got, ref = got.double(), ref.double()
    scale = ref.abs().max().item()
    err = (got - ref).abs().max().item()
    return err / scale if scale > 0 else err


# ----------------------------------------------------------------------------- correctness
def make_tokens(kind, B, N, C, gen, device):
    if kind == 'gaussian':
        x = torch.randn(B, N, C, generator=gen)
    else:
        # multiples of 1/2 in [-2, 2]: differences, squares and sums of up to 2^14 of them are
        # exact in float32 and bfloat16 holds the values, so the float32 canonical distance
        # equals the float64 one and ties are real ties
        x = torch.randint(-4, 5, (B, N, C), generator=gen).float() / 2
        if N > 4:  # duplicated patches: distance 0 to another patch, ties in abundance
            n_dup = max(1, N // 10)
            src = torch.randint(0, N, (n_dup, ), generator=gen)
            dst = torch.randperm(N, generator=gen)[:n_dup]
            x[:, dst] = x[:, src]
        if kind == 'nonfinite':
            # in sub-vector channels (multiples of d), so that they reach the distances
            for value in (math.nan, math.inf, -math.inf):
                rows = torch.randint(0, N, (max(1, N // 50), ), generator=gen)
                chans = torch.randint(0, C // SUBVECTOR_STRIDE, (rows.numel(), ),
                                      generator=gen) * SUBVECTOR_STRIDE
                x[torch.randint(0, B, (rows.numel(), ), generator=gen), rows, chans] = value
    return x.to(device)


def run_path(impl, x, weight, bias, grad, autocast, device):
    """(idx, out, grad_x, grad_w, grad_b) of one ``dcconv`` call and its backward."""
    from mmdccnext.ops import dcconv
    x = x.detach().clone().requires_grad_()
    weight = weight.detach().clone().requires_grad_()
    bias = bias.detach().clone().requires_grad_()
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if autocast else None
    with ctx or contextlib.nullcontext():
        out, idx = dcconv(
            x, weight, bias, subvector_stride=SUBVECTOR_STRIDE, impl=impl, return_indices=True)
    out.backward(grad.to(out.dtype))
    return dict(idx=idx, out=out.detach(), gx=x.grad, gw=weight.grad, gb=bias.grad)


def check_case(case, mode, impls, device, gen):
    """Print the lines of one case and mode; return the number of failed checks."""
    from mmdccnext.ops.reference import aggregate_reference, cluster_reference
    dtype, autocast = MODES[mode]
    x = make_tokens(case.data, case.B, case.N, case.C, gen, device).to(dtype)
    weight = (torch.randn(case.K, case.C, generator=gen) * .1).to(device)
    bias = (torch.randn(case.C, generator=gen) * .1).to(device)
    grad = torch.randn(case.B, case.N, case.C, generator=gen).to(device)
    finite = case.data != 'nonfinite'  # NaN / inf inputs: indices only
    print(f'  case {case.name}: B={case.B} N={case.N} C={case.C} K={case.K}, {mode}')
    ref_idx = cluster_reference(x, case.K)
    results, failures = {}, 0
    for impl in impls:
        try:
            r = results[impl] = run_path(impl, x, weight, bias, grad, autocast, device)
        except Exception as exc:  # report, count, go on with the other paths
            print(f'    {impl:>8} vs float64: FAIL ({type(exc).__name__}: {exc})')
            failures += 1
            continue
        same, near, wrong, total = compare_indices(
            x, r['idx'], ref_idx, near_ties=case.data == 'gaussian')
        parts = [f'idx {same}/{total} rows identical' + (f', {near} near-tie' if near else '') +
                 (f', {wrong} WRONG' if wrong else '')]
        ok = wrong == 0 and r['out'].dtype == x.dtype
        if r['out'].dtype != x.dtype:
            parts.append(f'output dtype {r["out"].dtype} != {x.dtype}')
        if finite and wrong == 0:
            # float64 aggregation over the path's own clusters (near-tie rows included)
            x64 = x.detach().double().requires_grad_()
            w64 = weight.double().requires_grad_()
            b64 = bias.double().requires_grad_()
            y64 = aggregate_reference(x64, r['idx'], w64, b64)
            y64.backward(grad.to(r['out'].dtype).double())
            errs = {
                'out': (r['out'], y64.detach()),
                'grad x': (r['gx'], x64.grad),
                'grad w': (r['gw'], w64.grad),
                'grad b': (r['gb'], b64.grad)
            }
            for name, (got, ref) in errs.items():
                err, tol = normwise_error(got, ref), TOL[got.dtype]
                ok &= err <= tol
                parts.append(f'{name} {err:.1e}' + ('' if err <= tol else f' > {tol:.0e}'))
        failures += not ok
        print(f'    {impl:>8} vs float64: {"; ".join(parts)} -> {"OK" if ok else "FAIL"}')
    first = next(iter(results), None)
    for impl in list(results)[1:]:
        a, b = results[first], results[impl]
        ok = torch.equal(a['idx'], b['idx'])
        parts = ['idx identical' if ok else
                 f'idx differ in {int((a["idx"] != b["idx"]).any(-1).sum())} rows']
        if finite:
            for name, key in (('out', 'out'), ('grad x', 'gx'), ('grad w', 'gw'), ('grad b', 'gb')):
                err, tol = normwise_error(b[key], a[key]), TOL[a[key].dtype]
                ok &= err <= tol
                parts.append(f'{name} {err:.1e}' + ('' if err <= tol else f' > {tol:.0e}'))
        failures += not ok
        print(f'    {impl:>8} vs {first}: {"; ".join(parts)} -> {"agree" if ok else "DISAGREE"}')
    return failures


def section_selfcheck(impls, device):
    """What ``impl='auto'`` decides first on a device: the Triton path's self-check against
    the PyTorch path (mmdccnext/ops/selfcheck.py), in float32 and float64. A failure is
    reported and counted; the self-check is then switched off for the rest of the run, so that
    the sections below still run the Triton path explicitly and show where it differs."""
    from mmdccnext.ops import selfcheck
    from mmdccnext.ops.dcconv import _triton_status
    print(f'\n== self-check: the Triton path vs the PyTorch path on {device} (what impl=\'auto\' '
          'checks before it runs Triton) ==')
    if 'triton' not in impls:
        print(f'   triton: not available on {device.type} ({_triton_status(device.type)[1]}); '
              'nothing to check')
        print('RESULT self-check: NOT RUN (no Triton path on this device)')
        return 0
    if not selfcheck.enabled():
        print(f'RESULT self-check: SKIPPED ({selfcheck.ENV_SELFCHECK}=0)')
        return 0
    failures = 0
    for dtype in (torch.float32, torch.float64):
        result = selfcheck.check(device, dtype)
        name = str(dtype).replace('torch.', '')
        if result.passed:
            print(f'   {name}: PASS in {result.seconds:.2f} s ({result.detail})')
        else:
            failures += 1
            print(f'   {name}: FAILED in {result.seconds:.2f} s: {result.detail}')
    if failures:
        os.environ[selfcheck.ENV_SELFCHECK] = '0'
        print(f"   impl='auto' would run the PyTorch path here; the sections below run the "
              f'Triton path with the self-check off ({selfcheck.ENV_SELFCHECK}=0) to show '
              'where it differs')
    print(f'RESULT self-check: {"PASS" if failures == 0 else "FAIL"}')
    return failures


def section_correctness(args, impls, device, clock):
    print('\n== correctness: every path vs the float64 reference and vs each other ==')
    print(f'   tolerance (normwise max|y - y_ref| / max|y_ref|): float32 {TOL[torch.float32]:.0e},'
          f' bfloat16 {TOL[torch.bfloat16]:.0e}')
    gen = torch.Generator().manual_seed(0)
    failures = checks = 0
    for case in SCALES[args.scale]['cases']:
        for mode in case.modes:
            if clock.skip(f'case {case.name}, {mode}', NEEDS['correctness']):
                continue
            failures += check_case(case, mode, impls, device, gen)
            checks += 1
    verdict = 'PASS' if failures == 0 else f'FAIL ({failures} failed)'
    print(f'RESULT correctness: {verdict}: {checks} case/mode runs, paths {", ".join(impls)} '
          f'[{clock.elapsed():.0f} s]')
    return failures


# ------------------------------------------------------------------------------------ op
def op_fn(path, x, weight, bias, grad, mode):
    from mmdccnext.analysis.dcconv_naive import naive_dcconv
    from mmdccnext.ops import dcconv
    K = weight.shape[0]

    def call():
        if path == 'naive':
            return naive_dcconv(x, weight, bias, K, SUBVECTOR_STRIDE)
        return dcconv(x, weight, bias, subvector_stride=SUBVECTOR_STRIDE, impl=path)

    def fwd():
        with torch.no_grad():
            call()

    def reset():
        x.grad = weight.grad = bias.grad = None

    def fwdbwd():
        reset()
        call().backward(grad)

    return (fwd if mode == 'fwd' else fwdbwd), reset


def num(row, key):
    """The measured number ``row[key]``, None where it was skipped or ran out of memory."""
    value = row.get(key)
    return value if isinstance(value, (int, float)) else None


def ms(row, key):
    value = row.get(key)
    return f'{value * 1e3:.2f}' if isinstance(value, float) else str(value)


def section_op(args, impls, device, clock):
    print('\n== op: dcconv at DCCNeXt-B2 shapes, each path vs the naive composite ==')
    print('   naive = cdist -> topk -> (B, N, K, C) gather -> weighted sum; float32, d = 8; '
          f'median of <= {args.repeat} after a warm-up; peak = memory the call adds')
    paths = list(impls) + ['naive']
    header = ('| B | N | C | K | path | fwd ms | naive/path fwd | fwd+bwd ms | naive/path fwd+bwd '
              '| peak MiB fwd | peak MiB fwd+bwd | peak fwd+bwd path/naive |')
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    gen = torch.Generator().manual_seed(1)
    summary = {}
    for B, N, C, K in SCALES[args.scale]['op_shapes']:
        x = torch.randn(B, N, C, generator=gen).to(device).requires_grad_()
        weight = (torch.randn(K, C, generator=gen) * .02).to(device).requires_grad_()
        bias = torch.zeros(C, device=device).requires_grad_()
        grad = torch.randn(B, N, C, generator=gen).to(device)
        res = {}
        for path in paths:
            row = res[path] = {}
            for mode in ('fwd', 'fwdbwd'):
                if clock.skip(f'{path} N={N} {mode}', NEEDS['op']):
                    row[mode] = 'SKIPPED'
                    continue
                fn, reset = op_fn(path, x, weight, bias, grad, mode)
                try:
                    row[mode] = median_time(fn, device, args.repeat, args.item_seconds)[0]
                    row[mode + '_mem'] = peak_memory(fn, device, reset)
                except torch.cuda.OutOfMemoryError:
                    row[mode] = 'OOM'
                    torch.cuda.empty_cache()
        naive = res['naive']
        for path in paths:
            r = res[path]
            print(f'| {B} | {N} | {C} | {K} | {path} | {ms(r, "fwd")} | '
                  f'{ratio(num(naive, "fwd"), num(r, "fwd"))} | {ms(r, "fwdbwd")} | '
                  f'{ratio(num(naive, "fwdbwd"), num(r, "fwdbwd"))} | '
                  f'{mib(r["fwd_mem"]) if "fwd_mem" in r else "-"} | '
                  f'{mib(r["fwdbwd_mem"]) if "fwdbwd_mem" in r else "-"} | '
                  f'{ratio(num(r, "fwdbwd_mem"), num(naive, "fwdbwd_mem"), 3)} |',
                  flush=True)
        summary[N] = res
        del x, weight, bias, grad
    N = max(summary)
    res = summary[N]
    for path in impls:
        mem = res[path].get('fwdbwd_mem')
        line = (f'RESULT op N={N}: {path} peak fwd+bwd / naive = '
                f'{ratio(mem, num(res["naive"], "fwdbwd_mem"), 3)}')
        if device.type == 'cuda' and path == 'pytorch' and N >= 16000:
            line += ' (issue 15 target: <= 0.100)'
        if path != 'pytorch' and 'pytorch' in res:
            line += (f'; fwd+bwd time pytorch/{path} = '
                     f'{ratio(num(res["pytorch"], "fwdbwd"), num(res[path], "fwdbwd"))}')
        print(line)
    print(f'   [{clock.elapsed():.0f} s]')


# ------------------------------------------------------------------------------ training
def convnext_provider():
    """'timm' or 'mmpretrain' (whichever builds ConvNeXt-T here) or None."""
    import importlib.util
    for name in ('timm', 'mmpretrain'):
        if importlib.util.find_spec(name) is not None:
            return name
    return None


def build_model(name, dense, impl):
    if name == 'DCCNeXt-B2':
        from mmdccnext.models.backbones import DCCNeXt
        return DCCNeXt(
            arch='b2',
            out_indices=(0, 1, 2, 3) if dense else (3, ),
            gap_before_final_norm=not dense,
            dcconv_impl=impl)
    if convnext_provider() == 'timm':
        import timm
        if dense:
            return timm.create_model(
                'convnext_tiny', pretrained=False, features_only=True, out_indices=(0, 1, 2, 3))
        return timm.create_model('convnext_tiny', pretrained=False, num_classes=0)
    from mmpretrain.models import ConvNeXt
    return ConvNeXt(
        arch='tiny', out_indices=(0, 1, 2, 3) if dense else (3, ), gap_before_final_norm=not dense)


def train_step_fn(model, x, device):
    """(step, reset): one training step and the clearing of the gradients it starts with."""
    params = [p for p in model.parameters() if p.requires_grad]

    def reset():
        for p in params:
            p.grad = None  # grads are allocated in the step, as in training

    def step():
        reset()
        with torch.autocast(device.type, dtype=torch.bfloat16):
            outs = model(x)
        outs = outs if isinstance(outs, (tuple, list)) else [outs]
        sum(o.float().mean() for o in outs).backward()

    return step, reset


def measure_training(name, setting, args, device, compiled):
    """dict(ips, mem, n[, compile_s, breaks]) of one model, one setting."""
    gen = torch.Generator().manual_seed(2)
    model = build_model(name, setting.dense, args.train_impl)
    model.train()  # not model = model.train(): MMPretrain's ConvNeXt.train returns None
    model.to(device)
    x = torch.randn(setting.batch, 3, setting.height, setting.width, generator=gen).to(device)
    if args.channels_last:
        # timm's ConvNeXt runs its convolutions faster in channels_last on GPUs; DCCNeXt keeps
        # its maps channels-last inside and gets its stem input that way
        model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    out = {}
    if compiled:
        import torch._dynamo as dynamo
        dynamo.reset()  # a static compile per (model, setting), no dynamic-shape reuse
        breaks_before = sum(dynamo.utils.counters['graph_break'].values())
        model = torch.compile(model, backend=args.compile_backend)
        step, reset = train_step_fn(model, x, device)
        out['compile_s'] = time_call(step, device)  # the first call compiles
        out['breaks'] = sum(dynamo.utils.counters['graph_break'].values()) - breaks_before
    else:
        step, reset = train_step_fn(model, x, device)
    t, n = median_time(step, device, args.repeat, args.item_seconds)
    out.update(ips=setting.batch / t, n=n, mem=peak_memory(step, device, reset))
    del model, x, step, reset
    if device.type == 'cuda':
        torch.cuda.empty_cache()
    return out


def section_train(args, device, clock, compiled):
    title = 'torch.compile' if compiled else 'eager'
    provider = convnext_provider()
    print(f'\n== {"compile" if compiled else "train"}: training step ({title}, bf16 autocast, '
          f'fwd+bwd{", channels_last" if args.channels_last else ""}), DCCNeXt-B2 vs ConvNeXt-T ==')
    if provider is None:
        print('   ConvNeXt-T: neither timm nor mmpretrain is installed; only DCCNeXt-B2 runs')
    else:
        print(f'   ConvNeXt-T from {provider}; DCCNeXt-B2 dcconv_impl={args.train_impl!r}; '
              f'peak = memory the step adds (activations, grads, workspaces)' +
              (f'; backend {args.compile_backend!r}, compile s = first call' if compiled else ''))
    names = ['DCCNeXt-B2'] + (['ConvNeXt-T'] if provider else [])
    for setting in SCALES[args.scale]['settings']:
        res = {}
        for name in names:
            if clock.skip(f'{setting.name} {name}', NEEDS['compile' if compiled else 'train']):
                continue
            try:
                res[name] = r = measure_training(name, setting, args, device, compiled)
            except torch.cuda.OutOfMemoryError:
                print(f'   {setting.name} {name}: OOM')
                torch.cuda.empty_cache()
                continue
            extra = (f', compile {r["compile_s"]:.1f} s, {r["breaks"]} graph breaks'
                     if compiled else '')
            print(f'   {setting.name} {name:<10}: {r["ips"]:9.2f} images/s, peak '
                  f'{mib(r["mem"])} MiB (median of {r["n"]}){extra}', flush=True)
        if len(res) == 2:
            a, b = res['DCCNeXt-B2'], res['ConvNeXt-T']
            print(f'RESULT {"compile" if compiled else "train"} {setting.name}: DCCNeXt-B2 / '
                  f'ConvNeXt-T images/s {ratio(a["ips"], b["ips"])}, peak memory '
                  f'{ratio(a["mem"], b["mem"])}')
    print(f'   [{clock.elapsed():.0f} s]')


# ---------------------------------------------------------------------------------- main
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--device', default='cuda', help="'cuda' (default), 'cuda:1', 'cpu'")
    parser.add_argument(
        '--scale',
        choices=sorted(SCALES),
        help="shapes: 'full' (the B2 shapes; default on CUDA) or 'small' (default on the CPU)")
    parser.add_argument('--sections', nargs='+', choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument('--budget', type=float, help='seconds for the whole run '
                        '(default 330 on CUDA, 600 on the CPU)')
    parser.add_argument('--repeat', type=int, default=3, help='timed calls per item (median)')
    parser.add_argument(
        '--item-seconds', type=float, default=5., help='time budget of one item; slower '
        'items repeat less')
    parser.add_argument('--threads', type=int, help='torch threads (CPU)')
    parser.add_argument('--train-impl', default='auto', help='dcconv_impl of DCCNeXt-B2')
    parser.add_argument(
        '--compile-backend',
        help="torch.compile backend; default 'inductor' on CUDA, 'aot_eager' on the CPU (the "
        "dry run: dynamo and AOTAutograd trace the op as on a GPU, without the C++ codegen, "
        'which takes about 9 minutes for B2 on 2 cores)')
    parser.add_argument('--no-channels-last', dest='channels_last', action='store_false')
    args = parser.parse_args(argv)
    args.device = torch.device(args.device)
    if args.scale is None:
        args.scale = 'small' if args.device.type == 'cpu' else 'full'
    if args.compile_backend is None:
        args.compile_backend = 'aot_eager' if args.device.type == 'cpu' else 'inductor'
    if args.budget is None:
        args.budget = 600. if args.device.type == 'cpu' else 330.
    return args


def main(argv=None):
    args = parse_args(argv)
    device = args.device
    if device.type == 'cuda' and not torch.cuda.is_available():
        sys.exit('gpu_check: --device cuda, but torch.cuda.is_available() is False (torch '
                 f'{torch.__version__}, built with CUDA {torch.version.cuda}); on a machine '
                 'without a GPU run it with --device cpu')
    if args.threads:
        torch.set_num_threads(args.threads)
    pinned = device.type == 'cpu' and pin_mmap_threshold()
    clock = Clock(args.budget)
    import mmdccnext.ops  # noqa: F401  (fails here, with its own message, if it cannot import)
    from mmdccnext.ops import available_impls
    impls = available_impls(device)
    triton = 'n/a'
    with contextlib.suppress(ImportError):
        import triton as _triton
        triton = _triton.__version__
    print(f'gpu_check: device {device} ({device_name(device)})')
    print(f'  python {platform.python_version()}, torch {torch.__version__}, triton {triton}, '
          f'mmdccnext commit {git_commit()}, scale {args.scale}, budget {args.budget:.0f} s')
    print(f'  dcconv paths on {device.type}: {", ".join(impls)}' +
          (', CPU memory: glibc mmap threshold pinned' if pinned else ''))
    failures = section_selfcheck(impls, device)
    if 'correctness' in args.sections:
        failures += section_correctness(args, impls, device, clock)
    if 'op' in args.sections:
        section_op(args, impls, device, clock)
    if 'train' in args.sections:
        section_train(args, device, clock, compiled=False)
    if 'compile' in args.sections:
        section_train(args, device, clock, compiled=True)
    print(f'\ngpu_check: done in {clock.elapsed():.0f} s'
          f'{"" if failures == 0 else f", {failures} self-check / correctness check(s) FAILED"}')
    return 1 if failures else 0


if __name__ == '__main__':
    sys.exit(main())
