"""The exported clustering at sizes where an N x N matrix would be large: ONNX Runtime's
indices equal to the PyTorch path's (ties, duplicated patches) with memory far below N^2;
``torch.export`` round trips equal to eager."""
import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from onnx_graphs import all_graphs

from mmdccnext.deployment import backbone_module
from mmdccnext.models.backbones import DCCNeXt
from mmdccnext.ops import DCConv, cluster, dcconv
from mmdccnext.ops.export import _row_blocks

ort = pytest.importorskip('onnxruntime', reason='onnxruntime is not installed')
pytest.importorskip('onnxscript', reason="onnxscript (torch's ONNX exporter) is not installed")


class _Layer(torch.nn.Module):
    """One DCConv layer on (B, N, C) tokens, returning its output and its clusters."""

    def __init__(self, channels, kernel_size, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.layer = DCConv(channels, kernel_size)
        torch.nn.init.normal_(self.layer.weight)
        torch.nn.init.normal_(self.layer.bias)

    def forward(self, x):
        return dcconv(x, self.layer.weight, self.layer.bias, return_indices=True)


def _export_layer(path, channels, kernel_size):
    model = _Layer(channels, kernel_size).eval()
    n = torch.export.Dim('N', min=kernel_size + 3, max=2**20)
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        program = torch.onnx.export(
            model, (torch.randn(1, 300, channels), ),
            input_names=['x'],
            output_names=['y', 'idx'],
            dynamic_shapes={'x': {1: n}},
            dynamo=True,
            verbose=False)
    program.save(str(path))
    return model


def _hard_tokens(N, C, seed):
    """Random tokens with exact and near ties: twins, a run of identical patches, small
    integers (exact distance ties) and patches a few ulps apart."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, N, C, generator=g)
    a = N // 10
    x[0, N - a // 2:] = x[0, a:a + a // 2]  # twins far apart
    x[0, 2 * a:2 * a + 40] = x[0, 2 * a - 1]  # 41 identical patches: more ties than candidates
    x[0, 3 * a:3 * a + a // 2] = torch.randint(-2, 3, (a // 2, C), generator=g).float()
    near = x[0, 5 * a:5 * a + 20].repeat(5, 1)
    x[0, 6 * a:6 * a + 100] = near * (1 + torch.randint(-3, 4, near.shape, generator=g) * 2.0**-23)
    return x


_ORT_CHILD = '''
import json, sys
import numpy as np
import onnxruntime as ort
from mmdccnext.utils.memory import proc_status, reset_peak_rss
path, inp, out = sys.argv[1:4]
x = np.load(inp)
opts = ort.SessionOptions()
opts.intra_op_num_threads = 1
session = ort.InferenceSession(path, opts, providers=['CPUExecutionProvider'])
base = proc_status()['VmRSS']
reset_peak_rss()
y, idx = session.run(None, {'x': x})
np.save(out, idx)
print(json.dumps(dict(extra=proc_status()['VmHWM'] - base, out=int(y.nbytes))))
'''


@pytest.mark.parametrize(
    'N,C,K',
    [
        (10000, 160, 12),  # the layer: an N x N float32 matrix would take 400 MB
        (4000, 320, 12),  # B2, stage 3 at 1280 x 800
        (1000, 512, 18),  # B2, stage 4 at 1280 x 800
    ])
def test_onnx_runtime_equal_indices_in_bounded_memory(tmp_path, N, C, K):
    path = tmp_path / 'layer.onnx'
    model = _export_layer(path, C, K)
    x = _hard_tokens(N, C, seed=N + C)
    np.save(tmp_path / 'x.npy', x.numpy())
    # a fresh process: its peak resident set is this run's
    proc = subprocess.run(
        [sys.executable, '-c', _ORT_CHILD,
         str(path), str(tmp_path / 'x.npy'), str(tmp_path / 'idx.npy')],
        capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    mem = json.loads(proc.stdout.strip().splitlines()[-1])
    idx = torch.from_numpy(np.load(tmp_path / 'idx.npy'))
    with torch.no_grad():
        expected = cluster(x, K, 8)  # the default path (the C++ kernels where built)
        assert torch.equal(expected, cluster(x, K, 8, impl='pytorch'))
    assert torch.equal(idx, expected)
    # the old graph's N x N screen alone was N^2 * 4 bytes (400 MB at N = 10000), plus
    # its mask and TopK workspace; the row-blocked graph needs a few (B, N, C) tensors
    assert mem['extra'] < max(64 * 2**20, 8 * mem['out']), mem
    with torch.no_grad():
        y, _ = model(x)
    assert y.shape == (1, N, C)


def _tiny_backbone():
    torch.manual_seed(0)
    backbone = DCCNeXt(
        arch=dict(channels=[16, 32, 64, 96], depths=[1, 1, 2, 1]), out_indices=(0, 1, 2, 3),
        gap_before_final_norm=False, layer_scale_init_value=0.5).eval()
    return backbone


def test_torch_export_round_trip_equal_to_eager(tmp_path):
    backbone = _tiny_backbone()
    module = backbone_module(backbone, cluster_indices=True).eval()
    auto = torch.export.Dim.AUTO
    with torch.no_grad():
        program = torch.export.export(
            module, (torch.randn(2, 3, 256, 224), ),
            dynamic_shapes={'image': {0: auto, 2: auto, 3: auto}})
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # the scan's empty argument lists
        torch.export.save(program, str(tmp_path / 'backbone.pt2'))
        exported = torch.export.load(str(tmp_path / 'backbone.pt2')).module()
    # Random images: the exported program's convolutions and norms may round differently
    # from eager (last bits), which can swap exact ties; duplicated patches and the exact
    # fallback are held to eager on a single layer below, where the features are the same.
    g = torch.Generator().manual_seed(1)
    for shape in [(2, 3, 256, 224), (1, 3, 320, 288), (3, 3, 224, 416)]:
        image = torch.randn(*shape, generator=g)
        with torch.no_grad():
            ours, eager = exported(image), module(image)
        assert len(ours) == len(eager) == 4 + 3
        for a, e in zip(ours[4:], eager[4:]):
            assert torch.equal(a, e), shape  # the clusters: identical
        for a, e in zip(ours[:4], eager[:4]):
            torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_torch_export_of_a_layer_is_exact_at_large_n():
    model = _Layer(160, 12).eval()
    n = torch.export.Dim('N', min=21, max=2**20)
    program = torch.export.export(model, (torch.randn(1, 300, 160), ),
                                  dynamic_shapes={'x': {1: n}})
    x = _hard_tokens(6000, 160, seed=3)
    with torch.no_grad():
        y, idx = program.module()(x)
        y_ref, idx_ref = model(x)
    assert torch.equal(idx, idx_ref)
    assert torch.equal(y, dcconv(x, model.layer.weight, model.layer.bias, impl='export'))
    torch.testing.assert_close(y, y_ref, rtol=0, atol=1e-4)


def test_layer_benchmark_cli_checks_its_arguments():
    import importlib.util
    import os.path as osp
    path = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), 'tools',
                    'deployment', 'benchmark_export_layer.py')
    spec = importlib.util.spec_from_file_location('benchmark_export_layer', path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with pytest.raises(SystemExit):
        tool.parse_args(['--sizes', '14'])  # fewer than K + 3 = 15 patches
    with pytest.raises(SystemExit):
        tool.parse_args(['--threads', '0'])
    args = tool.parse_args(['--sizes', '15', '1000', '--kernel-size', '12'])
    assert args.sizes == [15, 1000] and args.channels == 160


def test_static_export_holds_no_block_sized_constant(tmp_path):
    # With a fixed size ONNX Runtime folds every shape-only computation into a constant the
    # session keeps; a fill of a row block's (R, N) distances held 2 MB per layer at N = 4000.
    # The fills are scalars now: what is folded stays a few ids per patch.
    onnx = pytest.importorskip('onnx', reason='onnx is not installed')
    N, C, K = 2000, 320, 12
    model = _Layer(C, K).eval()
    path, folded = tmp_path / 'static.onnx', tmp_path / 'folded.onnx'
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')
        torch.onnx.export(model, (torch.randn(1, N, C), ), input_names=['x'],
                          output_names=['y', 'idx'], dynamo=True, verbose=False).save(str(path))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    opts.optimized_model_filepath = str(folded)
    session = ort.InferenceSession(str(path), opts, providers=['CPUExecutionProvider'])
    x = _hard_tokens(N, C, seed=1)
    _, idx = session.run(None, {'x': x.numpy()})
    with torch.no_grad():
        _, ref_idx = model(x)
    assert np.array_equal(idx, ref_idx.numpy())
    R = _row_blocks(N, 'cpu', static=True).shape[1]  # 16 blocks of 125 rows
    largest = max(int(np.prod(t.dims)) for g in all_graphs(onnx.load(str(folded)).graph)
                  for t in g.initializer)
    assert largest < R * N // 4
