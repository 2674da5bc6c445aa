"""Benchmark DCConv: fused C++ path vs PyTorch path vs the naive composite.

The naive composite (``cdist`` -> ``topk`` -> gather -> weighted sum, straight from the paper)
is :func:`mmdccnext.analysis.dcconv_naive.naive_dcconv`, shared with
``tools/analysis/gpu_check.py``.

All paths run in one process with the same thread count; every repetition times the paths
one after the other (round robin), so load from other processes on a shared machine hits
them alike; the table reports medians and ratios to the naive composite.

Peak memory: each (path, shape, mode) runs once in a fresh subprocess; the process resets
its resident-set high-water mark (``/proc/self/clear_refs``), runs the call once (no warm-up)
and reports ``VmHWM - VmRSS_before`` from ``/proc/self/status``: the peak growth of the
resident memory during the call (inputs excluded; everything the call allocates included,
tensors, autograd buffers and the C++ kernels' scratch). One-time state (thread pools,
autograd engine) is initialised beforehand by a call on a tiny input. Linux only.

The fused C++ path runs the kernels of one ISA (``avx512``, ``avx2`` or ``generic``; see
``mmdccnext/ops/csrc/cpu/isa.cpp``): by default the one the extension picks for this CPU
(``MMDCCNEXT_CPU_ISA`` forces one), printed in the header; ``--isa`` times each named ISA
as its own row ``cpu[<isa>]`` (``all-supported``: every ISA this CPU can run). An ISA the CPU
cannot run is reported and skipped.

Example::

    python tools/analysis/benchmark_dcconv.py --threads 2 --repeat 5
    python tools/analysis/benchmark_dcconv.py --shapes 4000,320,12 16000,320,12
    python tools/analysis/benchmark_dcconv.py --threads 1 --isa all-supported --no-memory
"""
import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time

import torch

from mmdccnext.analysis.dcconv_naive import naive_dcconv

DEFAULT_SHAPES = [(196, 320, 12), (49, 512, 18), (1024, 320, 12), (256, 512, 18), (4000, 320, 12),
                  (1000, 512, 18), (16000, 320, 12)]
PATHS = ('cpu', 'pytorch', 'naive')
ISAS = ('avx512', 'avx2', 'generic')


def make_fn(path, kernel_size, subvector_stride=8):
    """``path``: 'naive', 'pytorch', 'cpu' (the extension's ISA) or 'cpu[<isa>]'."""
    if path == 'naive':
        return lambda x, w, b: naive_dcconv(x, w, b, kernel_size, subvector_stride)
    from mmdccnext.ops import dcconv
    if path.startswith('cpu['):
        from mmdccnext.ops.cpu_impl import load_ext
        ext, isa = load_ext(), path[4:-1]

        def run_isa(x, w, b):
            ext.set_isa(isa)  # every call: the rows run round robin with the other ISAs
            return dcconv(x, w, b, subvector_stride=subvector_stride, impl='cpu')

        return run_isa
    return lambda x, w, b: dcconv(x, w, b, subvector_stride=subvector_stride, impl=path)


def isa_report():
    """(header line, ISAs this CPU runs) of the extension's ISA dispatch."""
    from mmdccnext.ops.cpu_impl import load_ext
    ext = load_ext()
    features = ', '.join(f'{f} {"yes" if ok else "no"}' for f, ok in ext.cpu_features())
    supported = list(ext.supported_isas())
    line = (f'C++ kernels: ISA {ext.isa()} (compiled: {", ".join(ext.compiled_isas())}; this '
            f'CPU runs: {", ".join(supported)}; CPU features: {features or "n/a"})')
    return line, supported


def make_inputs(N, C, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, N, C, generator=g).requires_grad_()
    w = (torch.randn(K, C, generator=g) * .02).requires_grad_()
    b = torch.zeros(C).requires_grad_()
    grad = torch.randn(1, N, C, generator=g)
    return x, w, b, grad


def run_once(fn, inputs, mode):
    x, w, b, grad = inputs
    if mode == 'fwd':
        with torch.no_grad():
            fn(x, w, b)
    else:
        x.grad = w.grad = b.grad = None
        fn(x, w, b).backward(grad)


def _status():
    text = open('/proc/self/status').read()
    return {
        k: int(re.search(rf'{k}:\s+(\d+) kB', text).group(1)) * 1024
        for k in ('VmRSS', 'VmHWM')
    }


def child_memory(path, N, C, K, mode, threads):
    """Run in a fresh process: peak resident-memory growth of one call, in bytes."""
    torch.set_num_threads(threads)
    fn = make_fn(path, K)
    inputs = make_inputs(N, C, K)
    if path != 'naive':
        from mmdccnext.ops.cpu_impl import ext_available
        if path.startswith('cpu') and not ext_available():
            return None
    # initialise thread pools, the autograd engine and lazy state on a tiny input first, so
    # that one-time costs are not counted, then measure the real call
    run_once(fn, make_inputs(max(32, K), C, K), mode)
    before = _status()['VmRSS']
    with open('/proc/self/clear_refs', 'w') as f:
        f.write('5')  # reset VmHWM to the current RSS
    run_once(fn, inputs, mode)
    return _status()['VmHWM'] - before


def measure_memory(path, shape, mode, threads):
    N, C, K = shape
    cmd = [
        sys.executable,
        os.path.abspath(__file__), '--child', path,
        str(N),
        str(C),
        str(K), mode, '--threads',
        str(threads)
    ]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f'memory subprocess failed: {out.stderr[-2000:]}')
    return json.loads(out.stdout.strip().splitlines()[-1])['peak']


def time_paths(paths, shape, repeat, mode, max_seconds):
    N, C, K = shape
    inputs = make_inputs(N, C, K)
    fns = {p: make_fn(p, K) for p in paths}
    times = {p: [] for p in paths}
    for p in paths:  # warm-up (and a first timing to size the repetitions)
        t0 = time.perf_counter()
        run_once(fns[p], inputs, mode)
        times[p].append(time.perf_counter() - t0)
    for _ in range(repeat):
        for p in paths:
            if sum(times[p]) > max_seconds and len(times[p]) > 1:
                continue  # slow path: keep the budget
            t0 = time.perf_counter()
            run_once(fns[p], inputs, mode)
            times[p].append(time.perf_counter() - t0)
    # the first call was a warm-up unless the path was too slow to repeat
    return {p: statistics.median(t[1:] if len(t) > 1 else t) for p, t in times.items()}


def parse_shape(text):
    parts = [int(v) for v in text.split(',')]
    if len(parts) != 3:
        raise argparse.ArgumentTypeError(f'shape must be N,C,K, got {text!r}')
    return tuple(parts)


def fmt_ratio(value):
    return f'{value:.2f}x' if value is not None else 'n/a'


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument(
        '--shapes',
        type=parse_shape,
        nargs='+',
        default=DEFAULT_SHAPES,
        help='N,C,K triples (B = 1, float32, d = 8)')
    parser.add_argument('--repeat', type=int, default=5, help='timed repetitions (median)')
    parser.add_argument('--threads', type=int, default=torch.get_num_threads())
    parser.add_argument('--paths', nargs='+', default=list(PATHS), choices=PATHS)
    parser.add_argument(
        '--isa',
        nargs='+',
        choices=list(ISAS) + ['all-supported'],
        help='time the C++ path with the kernels of each of these ISAs (rows cpu[<isa>]) '
        'instead of the ISA the extension picks')
    parser.add_argument('--no-memory', action='store_true', help='skip the memory runs')
    parser.add_argument(
        '--max-seconds',
        type=float,
        default=20.,
        help='time budget per path and shape; slower paths repeat less')
    parser.add_argument(
        '--child', nargs=5, metavar=('PATH', 'N', 'C', 'K', 'MODE'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        path, N, C, K, mode = args.child
        peak = child_memory(path, int(N), int(C), int(K), mode, args.threads)
        print(json.dumps({'peak': peak}))
        return

    torch.set_num_threads(args.threads)
    from mmdccnext.ops.cpu_impl import ext_available
    paths = [p for p in args.paths if p != 'cpu' or ext_available()]
    if 'cpu' in args.paths and 'cpu' not in paths:
        print('note: mmdccnext._ext is not built; the fused C++ path is skipped')
    isa_line = 'C++ kernels: n/a'
    if 'cpu' in paths:
        isa_line, supported = isa_report()
        if args.isa:
            wanted = supported if 'all-supported' in args.isa else [
                i for i in ISAS if i in args.isa
            ]
            for isa in wanted:
                if isa not in supported:
                    print(f'note: this CPU cannot run the {isa} kernels; skipped')
            at = paths.index('cpu')
            paths[at:at + 1] = [f'cpu[{isa}]' for isa in wanted if isa in supported]
    print(f'torch {torch.__version__}, threads {args.threads}, B=1, float32, d=8, '
          f'repeat {args.repeat} (median), load {os.getloadavg()[0]:.2f}\n{isa_line}\n')
    header = ('| N | C | K | path | fwd ms | fwd speed-up | fwd+bwd ms | fwd+bwd speed-up '
              '| peak MB fwd | peak MB fwd+bwd | peak fwd+bwd / naive |')
    print(header)
    print('|' + '---|' * (header.count('|') - 1))
    for shape in args.shapes:
        fwd = time_paths(paths, shape, args.repeat, 'fwd', args.max_seconds)
        fb = time_paths(paths, shape, args.repeat, 'fwdbwd', args.max_seconds)
        mem = {}
        if not args.no_memory:
            for p in paths:
                mem[p] = (measure_memory(p, shape, 'fwd', args.threads),
                          measure_memory(p, shape, 'fwdbwd', args.threads))
        for p in paths:
            sf = fwd['naive'] / fwd[p] if 'naive' in fwd else None
            sb = fb['naive'] / fb[p] if 'naive' in fb else None
            if mem:
                mf, mb = (f'{v / 2**20:.1f}' for v in mem[p])
                mr = (f'{mem[p][1] / mem["naive"][1]:.3f}'
                      if 'naive' in mem and mem['naive'][1] > 0 else 'n/a')
            else:
                mf = mb = mr = '-'
            print(
                f'| {shape[0]} | {shape[1]} | {shape[2]} | {p} | {fwd[p] * 1e3:.2f} | '
                f'{fmt_ratio(sf)} | {fb[p] * 1e3:.2f} | {fmt_ratio(sb)} | {mf} | {mb} | '
                f'{mr} |',
                flush=True)


if __name__ == '__main__':
    main()
