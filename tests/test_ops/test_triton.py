"""The Triton leaf of DCConv (mmdccnext/ops/triton_impl.py), tested without a GPU.

* What the kernels compute: ``triton_interp_checks.py`` runs them on CPU tensors with Triton's
  interpreter, in a fresh Python with ``TRITON_INTERPRET=1`` (it has to be set before
  ``triton.jit`` decorates the kernels, i.e. before the leaf is imported), once for the whole
  module; each test below asserts on one of its checks (indices against the canonical and
  float64 brute force and the PyTorch path, forward bit-identical to the fixed-order loop,
  gradients against float64 and bit-identical between runs).
* What a GPU would run, which the interpreter (numpy, never fused) cannot show: every launch
  passes ``enable_fp_fusion=False``, and the kernels compiled ahead of time for sm_90 from
  those launches hold no ``fma`` and no flush-to-zero arithmetic in their PTX.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys
from contextlib import contextmanager

import pytest
import torch

pytest.importorskip('triton', reason='triton is not importable (it comes with torch on Linux)')

from triton_interp_checks import CHECKS, LEAF  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope='module')
def interpreted():
    """Results of every interpreted check (one subprocess: Python, torch and Triton start
    once; about a minute on 2 cores)."""
    # the self-check of impl='triton' has its own tests (test_selfcheck.py); here it would
    # only add its probe under the interpreter (seconds per dtype) before the seam's check
    env = dict(os.environ, TRITON_INTERPRET='1', MMDCCNEXT_DCCONV_SELFCHECK='0')
    env['PYTHONPATH'] = os.pathsep.join([ROOT] +
                                        ([env['PYTHONPATH']] if env.get('PYTHONPATH') else []))
    proc = subprocess.run(
        [sys.executable, '-W', 'ignore',
         os.path.join(HERE, 'triton_interp_checks.py')],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200)
    assert proc.returncode == 0, f'the interpreted checks crashed:\n{proc.stderr[-4000:]}'
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('name', list(CHECKS))
def test_interpreted(interpreted, name):
    result = interpreted[name]
    if 'PyTorch path is importable neither' in result['detail']:
        pytest.skip(result['detail'])  # the op package is mid-reshape, not the leaf's fault
    assert result['ok'], result['detail']


@contextmanager
def _env_without_interpreter():
    saved = os.environ.pop('TRITON_INTERPRET', None)
    try:
        yield
    finally:
        if saved is not None:
            os.environ['TRITON_INTERPRET'] = saved


@pytest.fixture(scope='module')
def compiled_leaf():
    """The leaf as a GPU would import it (kernels compiled, not interpreted), by its file:
    it imports only torch and triton."""
    with _env_without_interpreter():
        spec = importlib.util.spec_from_file_location('mmdccnext_triton_leaf_jit', LEAF)
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    assert not mod._interpreted()
    return mod


def test_available_says_why_not(compiled_leaf):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA: the "no CUDA, no interpreter" answer is not reachable')
    ok, reason = compiled_leaf.available()
    assert not ok and 'no CUDA' in reason and 'TRITON_INTERPRET=1' in reason


def test_auto_on_cuda_without_triton_takes_pytorch_and_says_so(monkeypatch):
    if torch.cuda.is_available():
        pytest.skip('this machine has CUDA: Triton may run, so the fallback is not reachable')
    dcconv_mod = importlib.import_module('mmdccnext.ops.dcconv')
    said = []
    monkeypatch.setattr(dcconv_mod, 'print_log', lambda msg, **kwargs: said.append(msg))
    monkeypatch.setattr(dcconv_mod, '_logged', set())
    monkeypatch.delenv(dcconv_mod.ENV_IMPL, raising=False)
    dcconv_mod._triton_status.cache_clear()
    try:
        with _env_without_interpreter():
            assert dcconv_mod._resolve('auto', 'cuda') == 'pytorch'
            assert dcconv_mod._resolve('auto', 'cuda') == 'pytorch'
            with pytest.raises(RuntimeError, match="impl='triton' cannot run: .*no CUDA"):
                dcconv_mod._resolve('triton', 'cuda')
    finally:
        dcconv_mod._triton_status.cache_clear()
    assert len(said) == 1, said  # one line, not one per call
    assert 'runs the pytorch path' in said[0] and 'no CUDA' in said[0]


class _Recorder:
    """Stands in for a JIT kernel: records (kernel, args, kwargs) of each launch."""

    def __init__(self, fn, log):
        self.fn, self.log = fn, log

    def __getitem__(self, grid):
        return lambda *args, **kwargs: self.log.append((self.fn, args, kwargs))


_PTR_TYPES = {torch.float32: '*fp32', torch.float64: '*fp64', torch.int64: '*i64'}


def _recorded_launches(leaf, monkeypatch):
    log = []
    for name in ('_cluster_kernel', '_agg_fwd_kernel', '_agg_partials_kernel',
                 '_sum_partials_kernel', '_grad_x_kernel'):
        monkeypatch.setattr(leaf, name, _Recorder(getattr(leaf, name), log))
    for dtype in (torch.float32, torch.float64):
        x = torch.randn(2, 20, 13, dtype=dtype)
        idx = torch.randint(0, 20, (2, 20, 5))
        w = torch.randn(5, 13, dtype=dtype)
        leaf.cluster(x[..., ::4].contiguous(), 12)
        for bias in (None, torch.randn(13, dtype=dtype)):
            leaf.aggregate_forward(x, idx, w, bias)
        leaf.aggregate_backward(torch.randn_like(x), x, idx, w, True, True, True)
    return log


def _ast_source(fn, args, kwargs):
    from triton.compiler import ASTSource
    signature, constexprs = {}, {}
    for name, value in zip(fn.arg_names, args):
        if isinstance(value, torch.Tensor):
            signature[name] = _PTR_TYPES[value.dtype]
        else:
            assert isinstance(value, int) and abs(value) < 2**31, (name, value)
            signature[name] = 'i32'
    for name, value in kwargs.items():
        if name in fn.arg_names:
            signature[name] = 'constexpr'
            constexprs[name] = value
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs)


def test_gpu_code_has_no_fma(compiled_leaf, monkeypatch, tmp_path):
    import triton
    from triton.backends import backends
    from triton.backends.compiler import GPUTarget
    if 'nvidia' not in backends:
        pytest.skip("triton's NVIDIA backend is not installed (no ahead-of-time compile)")
    # recorded launches: the real arguments and options of every kernel the leaf launches
    with monkeypatch.context() as m:
        launches = _recorded_launches(compiled_leaf, m)
    names = {fn.__name__ for fn, _, _ in launches}
    assert names == {
        '_cluster_kernel', '_agg_fwd_kernel', '_agg_partials_kernel', '_sum_partials_kernel',
        '_grad_x_kernel'
    }
    for fn, _, kwargs in launches:
        assert kwargs.get('enable_fp_fusion') is False, f'{fn.__name__} may fuse into FMA'
    monkeypatch.setenv('TRITON_CACHE_DIR', str(tmp_path))  # compile, do not reuse a cache
    seen = set()
    for fn, args, kwargs in launches:
        src = _ast_source(fn, args, kwargs)
        key = (fn.__name__, tuple(sorted(src.signature.items())), repr(src.constants))
        if key in seen:
            continue
        seen.add(key)
        options = {k: kwargs[k] for k in ('num_warps', 'enable_fp_fusion')}
        # sm_90 (H100 / H200) only: contraction into FMA is decided by LLVM and ptxas
        # whatever the architecture, and each compile costs seconds here
        ptx = triton.compile(src, target=GPUTarget('cuda', 90, 32), options=options).asm['ptx']
        float_ops = re.findall(r'\b(?:add|sub|mul|fma)\.[a-z0-9.]*f(?:32|64)\b', ptx)
        assert float_ops, f'{fn.__name__}: no float arithmetic found in the PTX'
        bad = [op for op in float_ops if op.startswith('fma') or '.ftz' in op]
        assert not bad, f'{fn.__name__}: {sorted(set(bad))}'
