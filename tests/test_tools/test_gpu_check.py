"""tools/analysis/gpu_check.py: its float64 reference and comparisons, its CPU memory meter,
and (slow) the whole ``--device cpu`` run, whose output must say that the paths agree."""
import importlib.util
import math
import os
import os.path as osp
import re
import subprocess
import sys

import pytest
import torch

from mmdccnext.ops.reference import cluster_reference

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
SCRIPT = osp.join(REPO, 'tools', 'analysis', 'gpu_check.py')


def load_tool():
    spec = importlib.util.spec_from_file_location('gpu_check', SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gpu_check = load_tool()


def line_tokens(values, C=16):
    """(1, N, C) tokens whose sub-vectors (stride 8) are ``values`` (channel 0) and 3 (channel
    8); the other channels are noise the clustering must not see."""
    x = torch.randn(1, len(values), C)
    x[0, :, 0] = torch.tensor(values)
    x[0, :, 8] = 3.
    return x


def test_reference_follows_the_contract():
    # p3 duplicates p1; p4 is NaN: every distance to it is +inf
    x = line_tokens([0., 1., -1., 1., math.nan])
    idx = cluster_reference(x, 4)
    assert idx.tolist() == [[
        [0, 1, 2, 3],  # three at distance 1: ties to the lower index
        [1, 3, 0, 2],  # the duplicate (distance 0) right after the centre
        [2, 0, 1, 3],
        [3, 1, 0, 2],  # centre first although p1 is at distance 0 too
        [4, 0, 1, 2],  # all others at +inf: by index
    ]]
    # N < K: all N patches
    assert cluster_reference(x[:, :3], 12).shape == (1, 3, 3)


def test_reference_matches_the_op():
    from mmdccnext.ops import cluster
    gen = torch.Generator().manual_seed(0)
    x = gpu_check.make_tokens('dyadic', 2, 300, 64, gen, torch.device('cpu'))
    assert torch.equal(cluster_reference(x, 12), cluster(x, 12, impl='pytorch'))


def test_compare_indices_counts_wrong_and_near_tie_rows():
    # p1 and p2 are a near-tie from p0 (1 vs 1 + 1e-7); p3 is far
    x = line_tokens([0., 1., -(1. + 5e-8), 5.])
    ref = cluster_reference(x, 3)
    assert ref[0, 0].tolist() == [0, 1, 2]
    assert gpu_check.compare_indices(x, ref, ref, near_ties=True) == (4, 0, 0, 4)
    near = ref.clone()
    near[0, 0] = torch.tensor([0, 2, 1])  # the near-tie swapped: float32 could order it so
    assert gpu_check.compare_indices(x, near, ref, near_ties=True) == (3, 1, 0, 4)
    assert gpu_check.compare_indices(x, near, ref, near_ties=False) == (3, 0, 1, 4)
    far = ref.clone()
    far[0, 0] = torch.tensor([0, 1, 3])  # a far patch instead of a near one: wrong
    assert gpu_check.compare_indices(x, far, ref, near_ties=True) == (3, 0, 1, 4)
    centre = ref.clone()
    centre[0, 0] = torch.tensor([1, 0, 2])  # the centre not first: wrong
    assert gpu_check.compare_indices(x, centre, ref, near_ties=True) == (3, 0, 1, 4)


def test_check_case_fails_a_path_that_returns_wrong_clusters(monkeypatch, capsys):
    import mmdccnext.ops as ops
    real = ops.dcconv

    def shifted(x, weight, bias, **kwargs):  # right aggregation, wrong clusters
        out, idx = real(x, weight, bias, **kwargs)
        idx = idx.roll(1, dims=1)
        return real(x, weight, bias, idx=idx, **dict(kwargs, return_indices=False)), idx

    monkeypatch.setattr(ops, 'dcconv', shifted)
    case = gpu_check.Case('dyadic', 1, 50, 16, 4, 'dyadic', ('fp32', ))
    failures = gpu_check.check_case(case, 'fp32', ('pytorch', ), torch.device('cpu'),
                                    torch.Generator().manual_seed(0))
    assert failures == 1
    assert 'WRONG' in capsys.readouterr().out


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='/proc/self/status')
def test_cpu_peak_memory_sees_an_allocation():
    # in a fresh interpreter: after other tests, freed memory may still be resident and hide
    # the allocation from the resident set's high-water mark (seen in the full suite)
    code = (f'import importlib.util, torch\n'
            f'spec = importlib.util.spec_from_file_location("gpu_check", {SCRIPT!r})\n'
            'gpu_check = importlib.util.module_from_spec(spec)\n'
            'spec.loader.exec_module(gpu_check)\n'
            'gpu_check.pin_mmap_threshold()\n'
            'n = 40 * 2**20 // 4\n'
            'def fn():\n'
            '    a = torch.ones(n)\n'
            '    del a\n'
            '    torch.ones(n // 4)  # a smaller second peak must not hide the first\n'
            'print(gpu_check.peak_memory(fn, torch.device("cpu")))\n')
    proc = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    peak = int(proc.stdout.strip().splitlines()[-1])
    assert 38 * 2**20 < peak < 48 * 2**20


@pytest.mark.slow
def test_cpu_run_end_to_end():
    from mmdccnext.ops import available_impls
    impls = available_impls('cpu')
    env = dict(os.environ, OMP_NUM_THREADS='1')
    # no time budget: on a loaded machine the run may be slow, and that must not fail the test
    cmd = [sys.executable, SCRIPT, '--device', 'cpu', '--threads', '1', '--budget', '1e9']
    proc = subprocess.run(cmd,
                          cwd=REPO,
                          env=env,
                          capture_output=True,
                          text=True,
                          timeout=1500)
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    assert 'SKIPPED' not in out and 'FAIL' not in out and 'DISAGREE' not in out, out
    runs = int(re.search(r'RESULT correctness: PASS: (\d+) case/mode runs', out).group(1))
    for impl in impls:
        assert len(re.findall(rf'^ +{impl} vs float64: .* -> OK$', out, re.M)) == runs
    for impl in impls[1:]:
        assert len(re.findall(rf'^ +{impl} vs {impls[0]}: idx identical.* -> agree$', out,
                              re.M)) == runs
    for N in (500, 2000):
        for path in impls + ('naive', ):
            assert re.search(rf'^\| 2 \| {N} \| 320 \| 12 \| {path} \| [0-9.]+ \|', out, re.M)
    for section in ('train', 'compile'):
        for setting in ('32x32 b2', '64x48 b1'):
            assert re.search(rf'^RESULT {section} {setting}: DCCNeXt-B2 / ConvNeXt-T images/s '
                             r'[0-9.]+, peak memory [0-9.]+$', out, re.M), out


def test_mmcv_message_without_ops_names_mmcv_lite():
    # the GPU bundle ships mmcv-lite: a wrong version must not be reported as "needs ops"
    from mmdccnext.utils import check_mmcv
    check_mmcv(version='2.1.0', has_ops=False, require_ops=False)  # what `import mmdccnext` runs
    with pytest.raises(ImportError, match='mmcv-lite is enough for the backbone'):
        check_mmcv(version='2.2.0', require_ops=False)


def test_items_past_the_budget_are_skipped_not_run(capsys):
    # a spent budget: every item says SKIPPED, the tables still print, the run succeeds
    assert gpu_check.main(['--device', 'cpu', '--sections', 'op', 'train', '--budget', '0']) == 0
    out = capsys.readouterr().out
    assert re.search(r'^\| 2 \| 2000 \| 320 \| 12 \| naive \| SKIPPED \|', out, re.M), out
    assert '32x32 b2 DCCNeXt-B2: SKIPPED (time budget' in out
    assert 'images/s, peak' not in out  # no step was measured


def test_selfcheck_comes_first_and_a_failure_counts(monkeypatch, capsys):
    from mmdccnext.ops import selfcheck
    monkeypatch.delenv(selfcheck.ENV_SELFCHECK, raising=False)  # restored after the test
    device = torch.device('cpu')
    # no Triton path on the device: said, nothing counted
    assert gpu_check.section_selfcheck(('cpu', 'pytorch'), device) == 0
    assert 'RESULT self-check: NOT RUN (no Triton path on this device)' in capsys.readouterr().out
    # the Triton path: what the self-check found is printed, a failure counts once per dtype
    # and the self-check is switched off for the sections after it
    verdicts = {torch.float32: selfcheck.Result(True, 'agrees', 0.1),
                torch.float64: selfcheck.Result(False, 'cluster indices differ, first at '
                                                '(b, n, k) = (0, 17, 3)', 0.2)}
    monkeypatch.setattr(selfcheck, 'check', lambda device, dtype: verdicts[dtype])
    assert gpu_check.section_selfcheck(('triton', 'pytorch'), device) == 1
    out = capsys.readouterr().out
    assert 'float32: PASS in 0.10 s (agrees)' in out
    assert 'float64: FAILED in 0.20 s: cluster indices differ, first at (b, n, k) = (0, 17, 3)' \
        in out
    assert 'RESULT self-check: FAIL' in out
    assert os.environ[selfcheck.ENV_SELFCHECK] == '0'
    assert gpu_check.section_selfcheck(('triton', 'pytorch'), device) == 0
    assert 'RESULT self-check: SKIPPED (MMDCCNEXT_DCCONV_SELFCHECK=0)' in capsys.readouterr().out


def test_main_runs_the_selfcheck_first(capsys):
    assert gpu_check.main(['--device', 'cpu', '--sections', 'op', '--budget', '0']) == 0
    out = capsys.readouterr().out
    assert out.index('== self-check') < out.index('== op')
