"""ISA dispatch of the C++ kernels: every ISA this CPU runs gives the same results, forcing one
it cannot run is a clear error, ``impl='auto'`` follows its rule, and the binary keeps each
ISA's instructions inside that ISA's kernels."""
import importlib
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch
from cpu_isa_helpers import ISAS, forced_isa, isa_param, isa_skip_reason
from paths import cluster_bruteforce, cluster_cpu, cluster_pytorch

from mmdccnext.ops import cluster, dcconv

ext_loader = importlib.import_module('mmdccnext.ops.cpu_impl')
dcconv_mod = importlib.import_module('mmdccnext.ops.dcconv')
ext = ext_loader.load_ext()

needs_ext = pytest.mark.skipif(
    ext is None, reason=f'the C++ extension mmdccnext._ext is not built ({ext_loader.ext_error()})')
pytestmark = needs_ext

#: what each ISA's copy of the kernels is compiled for (common/isa_instantiate.h)
FEATURES = {'avx512': {'avx512f', 'avx2', 'fma', 'popcnt'}, 'avx2': {'avx2', 'fma', 'popcnt'},
            'generic': set()}


def unsupported_isas():
    if ext is None:
        return []
    return [isa for isa in ext.compiled_isas() if isa not in ext.supported_isas()]


def first_unsupported():
    isas = unsupported_isas()
    if not isas:
        pytest.skip('this CPU runs every compiled ISA: there is none to refuse')
    return isas[0]


@pytest.fixture
def default_isa(monkeypatch):
    """No MMDCCNEXT_CPU_ISA, the extension's default choice, restored afterwards."""
    monkeypatch.delenv(ext_loader.ENV_ISA, raising=False)
    ext.reset_isa()
    yield
    monkeypatch.delenv(ext_loader.ENV_ISA, raising=False)
    ext.reset_isa()


def randn(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ---------------------------------------------------------------------------------------
# what the extension reports
# ---------------------------------------------------------------------------------------
def test_reported_isas_are_consistent(default_isa):
    compiled, supported = ext.compiled_isas(), ext.supported_isas()
    features = dict(ext.cpu_features())
    assert 'generic' in supported and set(supported) <= set(compiled)
    assert compiled == [i for i in ISAS if i in compiled]  # best first
    assert supported == [i for i in compiled if i in supported]
    for isa in compiled:  # runnable exactly when every feature its copy is built for is there
        assert (isa in supported) == all(features.get(f, False) for f in FEATURES[isa])
    assert ext.isa() == supported[0]  # by default the best the CPU runs
    assert ext_loader.cpu_isa() == supported[0]


def test_features_match_proc_cpuinfo():
    # an independent view of the same CPU: the kernel's flags (which also require OS support)
    if not dict(ext.cpu_features()):
        pytest.skip('not an x86-64 build: no ISA copies beyond generic')
    try:
        text = open('/proc/cpuinfo').read()
    except OSError:
        pytest.skip('no /proc/cpuinfo (not Linux)')
    match = re.search(r'^flags\s*:(.*)$', text, re.M)
    if not match:
        pytest.skip('/proc/cpuinfo has no flags line')
    flags = set(match.group(1).split())
    for feature, present in ext.cpu_features():
        assert present == (feature in flags), feature


# ---------------------------------------------------------------------------------------
# forcing
# ---------------------------------------------------------------------------------------
def test_set_isa_unsupported_is_a_clear_error(default_isa):
    isa = first_unsupported()
    before = ext.isa()
    missing = sorted(f for f, ok in ext.cpu_features() if not ok and f in FEATURES[isa])
    with pytest.raises(RuntimeError) as info:
        ext.set_isa(isa)
    message = str(info.value)
    assert f'the {isa} kernels' in message
    for feature in missing:
        assert feature in message.split('lacks')[1]
    assert 'ISAs this CPU can run: ' + ', '.join(ext.supported_isas()) in message
    # nothing changed, and the kernels still run
    assert ext.isa() == before
    x = randn(1, 40, 16)
    assert torch.equal(cluster_cpu(x, 5, 2), cluster_bruteforce(x, 5, 2))
    # the skip reason the parametrised op tests show is this message
    assert isa_skip_reason(isa) == message.splitlines()[0]


def test_set_isa_unknown_name_and_auto(default_isa):
    with pytest.raises(ValueError, match="unknown ISA 'sse9'.*avx512, avx2, generic"):
        ext.set_isa('sse9')
    ext.set_isa('generic')
    assert ext.isa() == 'generic'
    ext.set_isa('auto')
    assert ext.isa() == ext.supported_isas()[0]
    ext.set_isa(' AVX2 ' if 'avx2' in ext.supported_isas() else 'Generic')
    assert ext.isa() in ('avx2', 'generic')


@pytest.mark.parametrize('isa', [isa_param(i, i) for i in ISAS])
def test_env_var_forces_isa(isa, monkeypatch, default_isa):
    monkeypatch.setenv(ext_loader.ENV_ISA, isa)
    ext.reset_isa()  # the variable is read on the next kernel call
    x = randn(2, 50, 24, seed=1)
    assert torch.equal(cluster_cpu(x, 6, 4), cluster_bruteforce(x, 6, 4))
    assert ext.isa() == isa


def test_env_var_unsupported_isa_in_fresh_process():
    isa = first_unsupported()
    code = ('import torch\n'
            'from mmdccnext.ops import cluster, dcconv\n'
            'from mmdccnext.ops.cpu_impl import load_ext\n'
            'x = torch.randn(1, 30, 16)\n'
            'for call in (lambda: load_ext().isa(), lambda: cluster(x, 4, impl="cpu"),\n'
            '             lambda: dcconv(x, torch.randn(4, 16))):\n'
            '    try:\n'
            '        call()\n'
            '        print("no error")\n'
            '    except RuntimeError as exc:\n'
            '        print("RuntimeError:", str(exc).splitlines()[0])\n'
            'load_ext().set_isa("generic")\n'
            'print("after set_isa:", load_ext().isa(), tuple(cluster(x, 4, impl="cpu").shape))\n')
    env = dict(os.environ, **{ext_loader.ENV_ISA: isa})
    env.pop(dcconv_mod.ENV_IMPL, None)
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr[-3000:]  # an illegal instruction would kill it
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4, out.stdout
    for line in lines[:3]:  # the query, the explicit C++ path and 'auto' all refuse clearly
        assert line.startswith(f'RuntimeError: {ext_loader.ENV_ISA}={isa}: the {isa} kernels')
        assert 'this CPU lacks' in line and 'ISAs this CPU can run:' in line
    assert lines[3] == 'after set_isa: generic (1, 30, 4)'


# ---------------------------------------------------------------------------------------
# every ISA: the same results as the reference and as the generic build
# ---------------------------------------------------------------------------------------
def on_isa(isa, fn, then):
    """``fn()`` with the kernels of ``isa``, then back to the ISA ``then``."""
    ext.set_isa(isa)
    try:
        return fn()
    finally:
        ext.set_isa(then)


# panel widths are 4..32 columns depending on ISA and dtype: sizes around all of them
ODD_SIZES = [1, 2, 3, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 47, 63, 64, 65, 100]


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('C,d', [(16, 1), (40, 4), (64, 8)])  # D = 16 | 10 | 8; < / >= 8
def test_cluster_odd_sizes(cpu_isa, dtype, C, d):
    for N in ODD_SIZES:
        for K in (1, 3, 12, 40):
            x = randn(2, N, C, seed=N * 7 + K, dtype=dtype)
            idx = cluster_cpu(x, K, d)
            assert torch.equal(idx, cluster_bruteforce(x, K, d)), (N, K)
            generic = on_isa('generic', lambda: cluster_cpu(x, K, d), cpu_isa)
            assert torch.equal(idx, generic), (N, K)


@pytest.mark.parametrize('dot', [True, False])
def test_cluster_ties_duplicates_non_finite(cpu_isa, dot):
    ext._set_dot_screen(dot)
    try:
        # all distances equal: every flush leaves more than m + 16 entries and is resolved
        idx = cluster_cpu(torch.zeros(1, 200, 64), 40, 8)
        expected = torch.tensor([[n] + [j for j in range(200) if j != n][:39] for n in range(200)])
        assert torch.equal(idx[0], expected)
        # duplicates across panel boundaries, near ties, NaN and +-inf
        x = randn(2, 150, 64, seed=3)
        x[0, 75:] = x[0, :75]
        x[0, 10:40] = x[0, 5]
        x[0, 100:110] *= 1 + 2**-22
        x[1, 7] = float('nan')
        x[1, 8, 3] = float('inf')
        x[1, 9, 3] = float('-inf')
        for K, d in ((12, 8), (18, 1), (5, 4)):
            idx = cluster_cpu(x, K, d)
            assert torch.equal(idx, cluster_bruteforce(x, K, d)), (K, d)
            assert torch.equal(idx, cluster_pytorch(x, K, d)), (K, d)
    finally:
        ext._set_dot_screen(True)


@pytest.fixture
def threads():
    """Sets torch's thread count for the test, restored afterwards."""
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


@pytest.mark.parametrize('dtype', [torch.float32, torch.float64])
@pytest.mark.parametrize('nthreads', [1, 2])
def test_cluster_many_panels(cpu_isa, dtype, nthreads, threads):
    # rows that see over a hundred panels: the lists are flushed several times as the band
    # tightens, in both screens; integer data ties exactly across flushes. One thread, or
    # two threads and two images: one task per image, each pair screened once; two threads
    # and one image: tasks of rows, every pair screened from both sides
    threads(nthreads)
    g = torch.Generator().manual_seed(5)
    smooth = torch.randn(2, 1500, 320, generator=g, dtype=dtype)
    ties = torch.randint(-1, 2, (2, 1200, 64), generator=g).to(dtype)
    for x, K, d in ((smooth, 12, 8), (smooth[:1], 18, 16), (ties, 18, 8), (ties[1:], 12, 8)):
        idx = cluster_cpu(x, K, d)
        assert torch.equal(idx, cluster_bruteforce(x, K, d)), (tuple(x.shape), K, d)


def test_aggregation_forward_backward(cpu_isa):
    for B, N, C, K in ((1, 33, 20, 12), (2, 65, 48, 9), (3, 7, 5, 12), (1, 300, 320, 12)):
        g = torch.Generator().manual_seed(N)
        x = torch.randn(B, N, C, generator=g)
        w = torch.randn(K, C, generator=g)
        b = torch.randn(C, generator=g)
        grad = torch.randn(B, N, C, generator=g)
        idx = cluster_pytorch(x, K, 4)

        def run(impl):
            xs, ws, bs = (t.clone().requires_grad_() for t in (x, w, b))
            y = dcconv(xs, ws, bs, impl=impl, idx=idx)
            y.backward(grad)
            return y.detach(), xs.grad, ws.grad, bs.grad

        ours, ours_again = run('cpu'), run('cpu')
        generic, reference = on_isa('generic', lambda: run('cpu'), cpu_isa), run('pytorch')
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            one_thread = run('cpu')
        finally:
            torch.set_num_threads(threads)
        assert torch.equal(ours[0], reference[0])  # same roundings in the same order
        for a, r in zip(ours[1:], reference[1:]):
            torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-4)
        # bitwise: every element is one fixed chain of separately rounded operations, so
        # neither the run, the thread count nor the vector width of the ISA may change it
        for other in (ours_again, generic, one_thread):
            for a, o in zip(ours, other):
                assert torch.equal(a, o)


# ---------------------------------------------------------------------------------------
# impl='auto'
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize('isa', [isa_param(i, i) for i in ISAS])
def test_auto_rule(isa, monkeypatch, default_isa):
    # measured: even the generic (SSE2) kernels beat the PyTorch path several times over, so
    # 'auto' runs the C++ kernels whatever the ISA; AUTO_CPU_ISAS is where an ISA measured
    # slower would be left out, and then 'auto' must take the PyTorch path for it
    monkeypatch.delenv(dcconv_mod.ENV_IMPL, raising=False)
    x = randn(1, 30, 16)
    with forced_isa(isa):
        assert dcconv_mod.AUTO_CPU_ISAS == ('avx512', 'avx2', 'generic')
        assert dcconv_mod.resolve_impl('auto', x) == 'cpu'
        monkeypatch.setattr(dcconv_mod, 'AUTO_CPU_ISAS', tuple(i for i in ISAS if i != isa))
        assert dcconv_mod.resolve_impl('auto', x) == 'pytorch'
        assert dcconv_mod.resolve_impl('cpu', x) == 'cpu'  # an explicit choice is kept
        assert torch.equal(cluster(x, 5, impl='cpu'), cluster(x, 5))  # same indices anyway


# ---------------------------------------------------------------------------------------
# the binary: ISA instructions stay inside their ISA's kernels
# ---------------------------------------------------------------------------------------
def disassembly_by_function():
    objdump = shutil.which('objdump')
    if objdump is None:
        pytest.skip('objdump (binutils) is not installed')
    if not dict(ext.cpu_features()):
        pytest.skip('not an x86-64 build')
    out = subprocess.run([objdump, '-d', '-C', '--no-show-raw-insn', ext.__file__],
                         capture_output=True, text=True, check=True).stdout
    functions, name = {}, None
    for line in out.splitlines():
        head = re.match(r'^[0-9a-f]+ <(.*)>:$', line)
        if head:
            name = head.group(1)
            functions[name] = []
        elif name is not None and '\t' in line:
            functions[name].append(line.split('\t', 1)[1])
    return functions


def test_isa_instructions_only_in_their_kernels():
    functions = disassembly_by_function()
    zmm = {n for n, code in functions.items() if any('zmm' in i for i in code)}
    ymm = {n for n, code in functions.items() if any('ymm' in i for i in code)}
    fma = {n for n, code in functions.items() if any(re.match(r'vfn?m(add|sub)', i) for i in code)}
    # the AVX-512 copy is really built for AVX-512, the AVX2 copy for AVX2 + FMA
    assert any('dcconv::avx512::cluster_rows_f32' in n for n in zmm)
    assert any('dcconv::avx2::cluster_rows_f32' in n for n in ymm & fma)
    # ... and nothing else (std::, at::, the generic copy, the dispatch, the parallel loops)
    # holds a zmm / ymm instruction or an FMA: whatever the linker merged, the baseline code
    # runs on any x86-64
    assert all('dcconv::avx512::' in n for n in zmm), sorted(zmm)
    assert all(re.search(r'dcconv::avx(2|512)::', n) for n in ymm | fma), sorted(ymm | fma)
    # no FMA where the numerics forbid it: the canonical distance and the aggregation
    assert not any('exact_sq_dist' in n or 'aggregate' in n or 'backward_block' in n
                   for n in fma), sorted(fma)
