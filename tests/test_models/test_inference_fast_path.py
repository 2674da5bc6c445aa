"""The backbone's inference fast path (mmdccnext/models/backbones/inference.py): taken by
itself without autograd, bit-identical to the plain forward, skipped wherever it is not safe,
a classifier's buffers kept between passes but never shared between models or threads, and
what the libraries build takes it."""
import gc
import os.path as osp
import threading
import weakref

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from mmdccnext.models import DCCNeXt, optimize_for_inference
from mmdccnext.models.backbones import dccnext, inference
from mmdccnext.ops import cpu_impl, depthwise

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
DEMO_DETECTOR = osp.join(REPO, 'configs', 'detection', 'retinanet_dccnext-b0_fpn_synthetic.py')


def _model(seed=0, **kwargs):
    torch.manual_seed(seed)
    kwargs.setdefault('out_indices', (0, 1, 2, 3))
    kwargs.setdefault('gap_before_final_norm', False)
    model = DCCNeXt('b0', layer_scale_init_value=0.5, **kwargs)
    model.init_weights()
    return model.eval()


def _input(size=96, batch=2, seed=1):
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def _profiled(fn):
    """(result of fn(), {event name: count}) under torch.profiler."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        result = fn()
    counts = {}
    for event in prof.events():
        counts[event.name] = counts.get(event.name, 0) + 1
    return result, counts


def _plain(model, x, monkeypatch):
    """The plain forward without autograd: the reference the fast path equals bit for bit."""
    with monkeypatch.context() as m:
        m.setattr(dccnext, 'fast_path_applies', lambda backbone, x: False)
        with torch.no_grad():
            return model(x)


def _assert_equal(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert torch.equal(a, b)


def _fast_passes(counts):
    return counts.get(inference.PROFILER_RANGE, 0)


def _fc1_output_limit(model, limit):
    """Set every fc1's ``max_output_bytes``: 0 sends fc1 to ATen (into a fast-path buffer),
    None to oneDNN; by default the test's small maps go to oneDNN."""
    for m in model.modules():
        if isinstance(m, dccnext.ConvFFN):
            m.fc1.max_output_bytes = limit
    return model


@pytest.mark.parametrize('fc1_limit', ['default', 0])
def test_taken_by_default_and_bit_identical_to_the_plain_forward(fc1_limit, monkeypatch):
    model = _model()
    if fc1_limit != 'default':
        _fc1_output_limit(model, fc1_limit)
    x = _input()
    expected = _plain(model, x, monkeypatch)
    keys = list(model.state_dict())
    x_copy = x.clone()
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            for _ in range(2):
                got, counts = _profiled(lambda: model(x))
                assert _fast_passes(counts) == 1
                _assert_equal(got, expected)
    assert torch.equal(x, x_copy)  # the caller's images are left alone
    assert list(model.state_dict()) == keys
    # with autograd: the plain forward (no fast-path range), gradients flow
    out, counts = _profiled(lambda: model(x))
    assert _fast_passes(counts) == 0
    for a, b in zip(out, expected):
        torch.testing.assert_close(a.detach(), b)
    out[-1].sum().backward()
    assert model.stages[2][0].mixer.weight.grad is not None


def test_classification_outputs_and_odd_sizes(monkeypatch):
    model = _model(out_indices=(2, 3), gap_before_final_norm=True)
    x = _input(size=71, batch=1)
    expected = _plain(model, x, monkeypatch)
    with torch.no_grad():
        got, counts = _profiled(lambda: model(x))
    assert _fast_passes(counts) == 1
    _assert_equal(got, expected)


def _conv_ffn_convolutions(model, monkeypatch, kernel):
    """Profiler event counts of a fast-path pass, the extension's depthwise kernel allowed
    (``kernel``) or not."""
    with monkeypatch.context() as m:
        if not kernel:
            m.setattr(depthwise, 'applies', lambda x, weight: False)
        with torch.no_grad():
            return _profiled(lambda: model(_input()))


@pytest.mark.skipif(not cpu_impl.ext_available(), reason='the C++ extension is not built')
def test_the_extension_kernel_writes_every_conv_ffn_convolution_into_its_buffer(monkeypatch):
    model = _model()
    expected = _plain(model, _input(), monkeypatch)  # the module runs the same kernel
    got, counts = _conv_ffn_convolutions(model, monkeypatch, kernel=True)
    blocks = sum(len(s) for s in model.stages)
    assert counts.get(depthwise.FORWARD_RANGE, 0) == blocks
    assert counts.get('mkldnn::_convolution_pointwise_', 0) == 0
    _assert_equal(got, expected)


@pytest.mark.skipif(inference._inplace_conv_add() is None,
                    reason="this PyTorch build has no oneDNN in-place convolution")
def test_without_the_kernel_the_onednn_in_place_convolution_runs_in_every_block(monkeypatch):
    model = _model()
    _, counts = _conv_ffn_convolutions(model, monkeypatch, kernel=False)
    blocks = sum(len(s) for s in model.stages)
    assert counts.get('mkldnn::_convolution_pointwise_', 0) == blocks
    assert counts.get(depthwise.FORWARD_RANGE, 0) == 0


def _made_buffers(monkeypatch):
    """The keys of the workspace buffers allocated from now on, in order."""
    made = []
    buffer = inference.Workspace.buffer

    def spy(self, key, like, channels):
        before = self._buffers.get(key)
        out = buffer(self, key, like, channels)
        if self._buffers[key] is not before:
            made.append(key)
        return out

    monkeypatch.setattr(inference.Workspace, 'buffer', spy)
    return made


#: The workspace buffer of the depthwise convolution: none where the extension's kernel writes
#: over fc1's output, oneDNN's convolution into a buffer without it.
DW_BUFFER = [] if cpu_impl.ext_available() else ['ffn_dwconv']


@pytest.mark.parametrize('fc1_limit,buffers', [(0, sorted(DW_BUFFER + ['ffn_hidden'])),
                                               ('default', DW_BUFFER)])
def test_buffers_are_reused_within_a_pass(fc1_limit, buffers, monkeypatch):
    model = _model()
    if fc1_limit != 'default':  # fc1 into a buffer, as for maps over FRESH_PAGES_BYTES
        _fc1_output_limit(model, fc1_limit)
    allocated = _made_buffers(monkeypatch)
    with torch.no_grad():
        model(_input())
    # the first stage has the largest hidden maps: each buffer is allocated once, by the
    # first block, and reused by the 12 others (fc1's output is oneDNN's new tensor where
    # it is small)
    assert sorted(allocated) == buffers


def _classifier(seed=0):
    return _model(seed, out_indices=(2, 3), gap_before_final_norm=True)


def test_a_classifiers_buffers_are_kept_between_passes_until_training(monkeypatch):
    model = _fc1_output_limit(_classifier(), 0)  # fc1's output in a buffer
    made = _made_buffers(monkeypatch)
    x, smaller = _input(96), _input(64, batch=1, seed=4)
    expected = [_plain(model, x, monkeypatch), _plain(model, smaller, monkeypatch)]
    with torch.no_grad():
        first = model(x)
        kept = [t.clone() for t in first]
        assert sorted(made) == sorted(DW_BUFFER + ['ffn_hidden'])
        made.clear()
        # the same buffers serve later passes, also of smaller inputs; a pass's outputs never
        # live in them (the first pass's outputs are unchanged by the later ones)
        _assert_equal(model(smaller), expected[1])
        _assert_equal(model(x), expected[0])
        assert made == []
        _assert_equal(first, kept)
        workspace = weakref.ref(inference.workspace_of(model))
    model.train()  # training does not keep the inference buffers
    gc.collect()
    assert workspace() is None
    model.eval()
    with torch.no_grad():
        _assert_equal(model(x), expected[0])
    assert sorted(made) == sorted(DW_BUFFER + ['ffn_hidden'])


def test_a_backbone_handing_maps_to_a_neck_gets_new_buffers_every_pass(monkeypatch):
    model = _fc1_output_limit(_model(), 0)  # (B, C, H, W) maps out
    made = _made_buffers(monkeypatch)
    expected = _plain(model, _input(), monkeypatch)
    with torch.no_grad():
        for _ in range(2):
            _assert_equal(model(_input()), expected)
    assert sorted(made) == sorted(2 * DW_BUFFER + ['ffn_hidden', 'ffn_hidden'])
    assert inference.workspace_of(model) is not inference.workspace_of(model)


def test_a_threads_buffers_go_with_the_thread():
    model = _fc1_output_limit(_classifier(), 0)  # fc1's output in a buffer
    refs = []

    def work():
        with torch.no_grad():
            model(_input(64))
        refs.append(weakref.ref(inference.workspace_of(model)))

    thread = threading.Thread(target=work)
    thread.start()
    thread.join()
    gc.collect()
    assert len(refs) == 1 and refs[0]() is None
    with torch.no_grad():
        model(_input(64))
    assert inference.workspace_of(model)._buffers  # this thread's, kept


def test_a_models_buffers_go_with_the_model():
    model = _fc1_output_limit(_classifier(), 0)  # fc1's output in a buffer
    with torch.no_grad():
        model(_input(64))
    workspace = weakref.ref(inference.workspace_of(model))
    assert workspace()._buffers
    del model
    gc.collect()
    assert workspace() is None


def test_a_block_called_on_its_own_leaves_its_input_alone():
    block = _model().stages[2][0]
    h = torch.randn(2, 6, 6, 160)
    h_copy = h.clone()
    with torch.no_grad():
        block(h)
    assert torch.equal(h, h_copy)


def _counts_of_pass(model, x):
    with torch.no_grad():
        return _profiled(lambda: model(x))


def test_skipped_where_not_safe():
    x = _input(64)
    # stochastic depth active (training mode, drop_path_rate > 0): the plain, random forward
    model = _model(drop_path_rate=0.5).train()
    torch.manual_seed(0)
    a, counts = _counts_of_pass(model, x)
    torch.manual_seed(1)
    b, _ = _counts_of_pass(model, x)
    assert _fast_passes(counts) == 0 and not torch.allclose(a[0], b[0])
    # training mode without stochastic depth, no autograd: taken
    model = _model().train()
    assert _fast_passes(_counts_of_pass(model, x)[1]) == 1
    model.eval()
    # other dtypes, autocast
    assert _fast_passes(_counts_of_pass(model.double(), x.double())[1]) == 0
    model.float()
    with torch.autocast('cpu', dtype=torch.bfloat16):
        assert _fast_passes(_counts_of_pass(model, x)[1]) == 0
    assert _fast_passes(_counts_of_pass(model, x)[1]) == 1


def test_forward_hooks_see_the_plain_tensors(monkeypatch):
    # a hook keeping a block's output must not see it overwritten by the next block
    model = _model()
    x = _input(64)
    kept = {}

    def keep(store, name):
        return lambda module, args, out: store.__setitem__(name, out)

    handles = [b.register_forward_hook(keep(kept, f'{i}.{j}'))
               for i, s in enumerate(model.stages) for j, b in enumerate(s)]
    with monkeypatch.context() as m:
        m.setattr(dccnext, 'fast_path_applies', lambda backbone, x: False)
        with torch.no_grad():
            model(x)
    expected = {k: v.clone() for k, v in kept.items()}
    kept.clear()
    _, counts = _counts_of_pass(model, x)
    assert _fast_passes(counts) == 0
    assert kept.keys() == expected.keys()
    for name in kept:
        assert torch.equal(kept[name], expected[name]), name
    for h in handles:
        h.remove()
    assert _fast_passes(_counts_of_pass(model, x)[1]) == 1
    # a hook on the backbone itself sees only its input and outputs: the fast path stays
    handle = model.register_forward_hook(lambda module, args, out: None)
    assert _fast_passes(_counts_of_pass(model, x)[1]) == 1
    handle.remove()


def _train_step(model, x):
    model.train()
    model.zero_grad(set_to_none=True)
    outs = model(x)
    sum(o.square().mean() for o in outs).backward()
    return [o.detach() for o in outs], {n: p.grad for n, p in model.named_parameters()}


def test_a_model_evaluated_first_trains_exactly_as_before():
    x = _input(64)
    fresh = _model()
    evaluated = _model()
    with torch.no_grad():
        evaluated(_input(96, batch=3, seed=5))
        evaluated(_input(64, batch=1, seed=6))
    outs_a, grads_a = _train_step(fresh, x)
    outs_b, grads_b = _train_step(evaluated, x)
    _assert_equal(outs_b, outs_a)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        assert torch.equal(grads_a[name], grads_b[name]), name


def test_models_and_threads_are_independent(monkeypatch):
    models = [_model(seed=0), _model(seed=1, out_indices=(1, 3))]
    inputs = [_input(64, seed=2), _input(80, batch=1, seed=3)]
    expected = [_plain(m, x, monkeypatch) for m, x in zip(models, inputs)]
    results, errors = [[], []], []

    def work(i):
        try:
            with torch.no_grad():
                for _ in range(4):
                    results[i].append(models[i](inputs[i]))
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i, )) for i in (0, 1, 0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    for i in (0, 1):
        assert len(results[i]) == 8
        for got in results[i]:
            _assert_equal(got, expected[i])


def test_optimize_for_inference_is_a_deprecated_no_op():
    model = _model()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(DeprecationWarning, match='no longer needed'):
        assert optimize_for_inference(model) is model
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


# ------------------------------------------------------------------------------------------
# What the libraries build takes the fast path, without any call of ours
# ------------------------------------------------------------------------------------------
def test_a_detector_from_mmdets_init_detector(monkeypatch):
    pytest.importorskip('mmdet')
    import numpy as np
    from mmdet.apis import inference_detector, init_detector
    from mmengine.config import Config

    cfg = Config.fromfile(DEMO_DETECTOR)
    cfg.model.test_cfg.score_thr = 0.  # random weights: keep every box, so boxes are compared
    torch.manual_seed(0)
    model = init_detector(cfg, checkpoint=None, device='cpu')
    image = np.random.default_rng(0).integers(0, 256, (128, 160, 3), dtype=np.uint8)
    features = []
    model.backbone.register_forward_hook(lambda module, args, out: features.append(out))

    fast, counts = _profiled(lambda: inference_detector(model, image))
    assert _fast_passes(counts) == 1
    with monkeypatch.context() as m:
        m.setattr(dccnext, 'fast_path_applies', lambda backbone, x: False)
        plain, counts = _profiled(lambda: inference_detector(model, image))
    assert _fast_passes(counts) == 0
    _assert_equal(features[0], features[1])
    fast, plain = fast.pred_instances, plain.pred_instances
    assert len(fast.scores) > 0
    for key in ('bboxes', 'scores', 'labels'):
        assert torch.equal(fast[key], plain[key]), key


def test_a_classifier_from_mmpretrains_get_model(monkeypatch):
    pytest.importorskip('mmpretrain')
    from mmpretrain import get_model

    import mmdccnext  # noqa: F401  (adds our models to MMPretrain's index)
    torch.manual_seed(0)
    model = get_model('dccnext-b0_8xb128_in1k', pretrained=False).eval()
    x = _input(64)
    with torch.no_grad():
        fast, counts = _profiled(lambda: model(x))
    assert _fast_passes(counts) == 1
    with monkeypatch.context() as m:
        m.setattr(dccnext, 'fast_path_applies', lambda backbone, x: False)
        with torch.no_grad():
            plain, counts = _profiled(lambda: model(x))
    assert _fast_passes(counts) == 0
    assert torch.equal(fast, plain)
