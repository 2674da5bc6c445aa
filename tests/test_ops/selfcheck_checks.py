"""Checks of the Triton path's self-check (mmdccnext/ops/selfcheck.py and its use in
``resolve_impl``), run on CPU tensors by Triton's interpreter: ``test_selfcheck.py`` runs this
file as a script in a fresh Python with ``TRITON_INTERPRET=1`` and asserts on the JSON it
prints, ``{check name: {"ok": bool, "detail": str}}``.

The seam: ``dcconv.AUTO_TRITON_DEVICES`` gets ``'cpu'``, so ``impl='auto'`` treats CPU tensors
as the Triton device (on a GPU machine the same code runs for CUDA tensors). Faults are
injected into the Triton leaf's functions (a kernel that raises, one that returns a wrong
index, one whose gradient is off) and each must send ``'auto'`` to the PyTorch path with one
warning naming what failed, and make ``impl='triton'`` raise with the same information.

Usage: ``TRITON_INTERPRET=1 python selfcheck_checks.py [check names...]``.
"""
import contextlib
import importlib
import os
import sys
import warnings

import torch
from triton_interp_checks import Fail, expect, run_checks

dc = selfcheck = triton_leaf = None  # imported in main(), after the variable is checked


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reset():
    """A fresh process as far as the choice goes: no remembered self-check, nothing logged."""
    selfcheck.forget()
    dc._logged.clear()


@contextlib.contextmanager
def recorded():
    """``(logs, warnings)``: what the choice logged (print_log) and warned meanwhile."""
    logs = []
    real = dc.print_log
    dc.print_log = lambda msg, **kwargs: logs.append(msg)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter('always')
            yield logs, caught
    finally:
        dc.print_log = real


def selfcheck_warnings(caught):
    return [str(w.message) for w in caught if issubclass(w.category, dc.SelfCheckWarning)]


@contextlib.contextmanager
def fault(name, replacement):
    """The Triton leaf's function ``name`` replaced by ``replacement(real)``."""
    real = getattr(triton_leaf, name)
    setattr(triton_leaf, name, replacement(real))
    try:
        yield
    finally:
        setattr(triton_leaf, name, real)


@contextlib.contextmanager
def counted_probes():
    """A list that gets one item per probe actually run."""
    runs = []
    real = selfcheck.probe

    def counting(*args, **kwargs):
        runs.append(args)
        return real(*args, **kwargs)

    selfcheck.probe = counting
    try:
        yield runs
    finally:
        selfcheck.probe = real


def raising(real):

    def cluster(s, kernel_size):
        raise RuntimeError('injected: the kernel does not compile on this GPU')

    return cluster


def wrong_index(real):

    def cluster(s, kernel_size):
        idx = real(s, kernel_size)
        if idx.shape[1] > 17 and idx.shape[2] > 4:
            idx = idx.clone()
            idx[0, 17, 3], idx[0, 17, 4] = idx[0, 17, 4].clone(), idx[0, 17, 3].clone()
        return idx

    return cluster


def gradient_off(real):

    def aggregate_backward(grad_out, x, idx, weight, need_x, need_w, need_b):
        gx, gw, gb = real(grad_out, x, idx, weight, need_x, need_w, need_b)
        if gx is not None:
            gx = gx.clone()
            gx[0, 5, 2] += 1e-3 * gx.abs().max()  # one element, 0.1 % of the largest
        return gx, gw, gb

    return aggregate_backward


FAULTS = {
    # name: (leaf function, replacement, what the warning / error must name)
    'raises': ('cluster', raising, ['RuntimeError: injected: the kernel does not compile']),
    'wrong index': ('cluster', wrong_index,
                    ['cluster indices differ, first at (b, n, k) = (0, 17, 3)']),
    'gradient off': ('aggregate_backward', gradient_off,
                     ['grad_x differs: largest error', 'at (0, 5, 2)']),
}


def tokens_and_weight(dtype=torch.float32):
    return randn(2, 40, 24, seed=1, dtype=dtype), (randn(7, 24, seed=2) * .1).to(dtype)


def c_correct_kernel_is_chosen():
    reset()
    x, w = tokens_and_weight()
    with recorded() as (logs, caught), counted_probes() as runs:
        expect(dc.resolve_impl('auto', x, w) == 'triton', "'auto' did not choose triton")
        y, idx = dc.dcconv(x, w, return_indices=True)
        dc.dcconv(x, w)
    expect(len(runs) == 1, f'{len(runs)} probes, expected 1')
    expect(not selfcheck_warnings(caught), f'warnings: {selfcheck_warnings(caught)}')
    lines = [m for m in logs if 'Triton path' in m]
    expect(len(lines) == 1, f'log lines: {logs}')
    expect('self-check passed' in lines[0] and 'cpu (float32)' in lines[0], lines[0])
    y_ref, idx_ref = dc.dcconv(x, w, impl='pytorch', return_indices=True)
    expect(torch.equal(idx, idx_ref) and torch.equal(y, y_ref), 'auto (triton) != pytorch')


def _fault_is_caught(label):
    name, replacement, named = FAULTS[label]
    reset()
    x, w = tokens_and_weight()
    with fault(name, replacement), recorded() as (logs, caught):
        expect(dc.resolve_impl('auto', x, w) == 'pytorch', f'{label}: auto did not fall back')
        y = dc.dcconv(x, w)  # runs, on the PyTorch path
        dc.dcconv(x, w)
        found = selfcheck_warnings(caught)
        expect(len(found) == 1, f'{label}: {len(found)} self-check warnings: {found}')
        for text in named + ['cpu (float32)', 'collect_env', "impl='auto' runs the PyTorch path"]:
            expect(text in found[0], f'{label}: the warning does not name {text!r}: {found[0]}')
        try:
            dc.dcconv(x, w, impl='triton')
        except RuntimeError as error:
            message = str(error)
        else:
            raise Fail(f"{label}: impl='triton' did not raise")
        for text in named + ["impl='triton'", 'collect_env']:
            expect(text in message, f'{label}: the error does not name {text!r}: {message}')
    expect(torch.equal(y, dc.dcconv(x, w, impl='pytorch')), f'{label}: fallback output')
    return found[0]


def c_kernel_that_raises():
    _fault_is_caught('raises')


def c_kernel_with_a_wrong_index():
    _fault_is_caught('wrong index')


def c_kernel_with_an_off_gradient():
    _fault_is_caught('gradient off')


def c_each_fault_found_by_the_probe_itself_in_float64():
    # the probe alone (nothing remembered), in float64 (the float32 probe: the checks above):
    # the correct kernel passes, each fault fails naming what it broke
    result = selfcheck.probe('cpu', torch.float64)
    expect(result.passed, f'the correct kernel failed: {result.detail}')
    expect('float64' in result.detail and '1e-12' in result.detail, result.detail)
    for label, (name, replacement, named) in FAULTS.items():
        with fault(name, replacement):
            result = selfcheck.probe('cpu', torch.float64)
        expect(not result.passed, f'{label}: not caught')
        for text in named:
            expect(text in result.detail, f'{label}: {result.detail}')


def c_once_per_process_device_and_dtype():
    reset()
    x, w = tokens_and_weight()
    with recorded(), counted_probes() as runs:
        for _ in range(3):
            dc.resolve_impl('auto', x, w)
            dc.dcconv(x, w, impl='triton')
        expect(len(runs) == 1, f'float32: {len(runs)} probes')
        x64, w64 = tokens_and_weight(torch.float64)
        dc.dcconv(x64, w64)
        dc.dcconv(x64, w64)
        expect(len(runs) == 2, f'float64 added {len(runs) - 1} probes')
        dc.dcconv(x, w64)  # float32 clustering, float64 aggregation: both known
        dc.dcconv(x.bfloat16(), w.bfloat16())  # computed in float32
        expect(len(runs) == 2, f'{len(runs)} probes after mixed and bfloat16 inputs')
    keys = sorted((str(k[0]), str(k[1])) for k in selfcheck._results)
    expect(keys == [('cpu', 'torch.float32'), ('cpu', 'torch.float64')], f'keys {keys}')
    # the key of a CUDA tensor is its device, an index-less one the current device
    real = torch.cuda.current_device
    torch.cuda.current_device = lambda: 3
    try:
        expect(selfcheck.device_key('cuda') == 'cuda:3', selfcheck.device_key('cuda'))
        expect(selfcheck.device_key('cuda:1') == 'cuda:1', selfcheck.device_key('cuda:1'))
    finally:
        torch.cuda.current_device = real


def c_env_variable_skips_the_probe():
    reset()
    x, w = tokens_and_weight()
    os.environ[selfcheck.ENV_SELFCHECK] = '0'
    try:
        with fault(*FAULTS['wrong index'][:2]), recorded() as (logs, caught), \
                counted_probes() as runs:
            expect(dc.resolve_impl('auto', x, w) == 'triton', 'auto did not run triton')
            dc.resolve_impl('auto', x, w)
            dc.dcconv(x, w, impl='triton')  # explicit: no raise, nothing checked
    finally:
        del os.environ[selfcheck.ENV_SELFCHECK]
    expect(not runs, f'{len(runs)} probes ran')
    said = [m for m in logs if selfcheck.ENV_SELFCHECK in m]
    expect(len(said) == 1 and 'without its self-check' in said[0], f'logs: {logs}')
    expect(not selfcheck_warnings(caught), 'a self-check warning although it was skipped')


def c_no_collective():
    # each DDP rank checks its own device: the probe calls no torch.distributed collective
    import torch.distributed as dist
    reset()
    names = ('all_reduce', 'broadcast', 'barrier', 'all_gather', 'all_gather_object',
             'broadcast_object_list', 'reduce', 'gather', 'scatter')
    saved = {n: getattr(dist, n) for n in names}

    def refuse(*args, **kwargs):
        raise Fail('the self-check called a torch.distributed collective')

    for n in names:
        setattr(dist, n, refuse)
    try:
        result = selfcheck.check('cpu', torch.float32)
    finally:
        for n, fn in saved.items():
            setattr(dist, n, fn)
    expect(result.passed, result.detail)


def _graph_impls(explained):
    """The ``impl`` argument of every DCConv op in the traced graphs."""
    return {
        node.args[-1]
        for graph in explained.graphs for node in graph.graph.nodes
        if str(node.target).startswith('mmdccnext.')
    }


def c_compile_no_graph_break():
    # the probe runs while dynamo traces (the choice is a constant-folded call), outside the
    # graph: no graph break, one probe, and the graph holds the path the probe chose
    x, w = tokens_and_weight()

    def f(x, w):
        return dc.dcconv(x, w)

    for label in (None, 'wrong index'):
        reset()
        torch._dynamo.reset()
        ctx = fault(*FAULTS[label][:2]) if label else contextlib.nullcontext()
        with ctx, recorded() as (logs, caught), counted_probes() as runs:
            explained = torch._dynamo.explain(f)(x, w)
            compiled = torch.compile(f, backend='aot_eager', fullgraph=True)
            y = compiled(x, w)
            compiled(x, w)
        want = 'pytorch' if label else 'triton'
        expect(explained.graph_break_count == 0, f'{label}: {explained.break_reasons}')
        expect(_graph_impls(explained) == {want}, f'{label}: graph impls '
               f'{_graph_impls(explained)}, expected {want}')
        expect(len(runs) == 1, f'{label}: {len(runs)} probes')
        expect(len(selfcheck_warnings(caught)) == (1 if label else 0),
               f'{label}: warnings {selfcheck_warnings(caught)}')
        expect(torch.equal(y, dc.dcconv(x, w, impl='pytorch')), f'{label}: compiled output')


def c_collect_env_reports_the_selfcheck():
    from mmdccnext.utils.collect_env import dcconv_paths
    reset()
    paths = dcconv_paths(torch.device('cpu'))
    expect('float32 PASSED' in paths['triton'] and 'float64 PASSED' in paths['triton'],
           paths['triton'])
    expect(paths['auto'] == 'triton', f"auto: {paths['auto']}")
    reset()
    with fault(*FAULTS['wrong index'][:2]):
        paths = dcconv_paths(torch.device('cpu'))
    expect('float32 FAILED: cluster indices differ' in paths['triton'], paths['triton'])
    expect(paths['auto'] == 'pytorch', f"auto: {paths['auto']}")


CHECKS = {
    'correct_kernel_is_chosen': c_correct_kernel_is_chosen,
    'kernel_that_raises': c_kernel_that_raises,
    'kernel_with_a_wrong_index': c_kernel_with_a_wrong_index,
    'kernel_with_an_off_gradient': c_kernel_with_an_off_gradient,
    'each_fault_found_in_float64': c_each_fault_found_by_the_probe_itself_in_float64,
    'once_per_process_device_and_dtype': c_once_per_process_device_and_dtype,
    'env_variable_skips_the_probe': c_env_variable_skips_the_probe,
    'no_collective': c_no_collective,
    'compile_no_graph_break': c_compile_no_graph_break,
    'collect_env_reports_the_selfcheck': c_collect_env_reports_the_selfcheck,
}


def main(names):
    global dc, selfcheck, triton_leaf
    if os.environ.get('TRITON_INTERPRET') != '1':
        sys.exit('run with TRITON_INTERPRET=1 (the kernels are decorated at import)')
    torch.set_num_threads(1)  # many small ops: threads only wait on each other
    os.environ.pop('MMDCCNEXT_DCCONV_IMPL', None)
    os.environ.pop('MMDCCNEXT_DCCONV_SELFCHECK', None)
    import mmdccnext  # noqa: F401
    dc = importlib.import_module('mmdccnext.ops.dcconv')
    selfcheck = importlib.import_module('mmdccnext.ops.selfcheck')
    triton_leaf = importlib.import_module('mmdccnext.ops.triton_impl')
    dc.AUTO_TRITON_DEVICES = ('cuda', 'cpu')  # the seam: CPU tensors as the Triton device
    run_checks(CHECKS, names)


if __name__ == '__main__':
    main(sys.argv[1:])
