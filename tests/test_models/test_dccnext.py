import copy

import pytest
import torch
from mmengine.config import Config

from mmdccnext.apis import config_file
from mmdccnext.models import DCCNeXt
from mmdccnext.models.heads import DCCNeXtClsHead
from mmdccnext.ops import DCConv

ARCHS = DCCNeXt.arch_settings
# Table 1 of the paper (parameters of the ImageNet classifier).
PAPER_PARAMS_M = dict(b0=5.5, b1=11.4, b2=26.7, b3=56.8, b4=86.7)
HEAD_MID = dict(b0=1280)  # B0's head is 5 x C wide, B1-B4 4 x C (docs/en/architecture.md)


def _input(size=64, batch=2):
    torch.manual_seed(0)
    return torch.randn(batch, 3, size, size)


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_dense_outputs_every_arch(arch):
    model = DCCNeXt(
        arch, out_indices=(0, 1, 2, 3), gap_before_final_norm=False, dcconv_impl='pytorch')
    model.eval()
    with torch.no_grad():
        outs = model(_input(64))
    channels = ARCHS[arch]['channels']
    assert len(outs) == 4
    for i, out in enumerate(outs):
        side = 64 // 2**(i + 2)
        assert out.shape == (2, channels[i], side, side)
        assert out.is_contiguous()
        assert torch.isfinite(out).all()
    # stages 3-4 mix with DCConv (K = 12, 18; d = 8), stages 1-2 with a 7x7 depthwise conv
    assert isinstance(model.stages[2][0].mixer, DCConv)
    assert model.stages[2][0].mixer.kernel_size == 12
    assert model.stages[3][0].mixer.kernel_size == 18
    assert model.stages[3][0].mixer.subvector_stride == 8
    assert model.stages[3][0].mixer.impl == 'pytorch'
    assert model.stages[0][0].mixer.kernel_size == (7, 7)
    assert len(model.stages[1]) == ARCHS[arch]['depths'][1]


@pytest.mark.parametrize('out_indices,expected', [(-1, [3]), (3, [3]), ((-2, -1), [2, 3]),
                                                  ([0, 2], [0, 2]), ((1, ), [1])])
def test_out_indices_and_gap(out_indices, expected):
    model = DCCNeXt('b0', out_indices=out_indices)
    assert model.out_indices == expected
    model.eval()
    with torch.no_grad():
        outs = model(_input(64))
    assert [o.shape for o in outs] == [(2, ARCHS['b0']['channels'][i]) for i in expected]
    for i in range(4):
        assert hasattr(model, f'norm{i}') == (i in expected)


def test_out_channels_last_hands_the_same_maps_as_channels_last_views():
    torch.manual_seed(0)
    model = DCCNeXt('b0', out_indices=(0, 1, 2, 3), gap_before_final_norm=False).eval()
    cl = copy.deepcopy(model)
    cl.out_channels_last = True
    x = _input(64)
    for grad in (False, True):  # the inference fast path, and autograd
        with torch.set_grad_enabled(grad):
            expected, got = model(x), cl(x)
        for e, g in zip(expected, got):
            assert e.is_contiguous() and not g.is_contiguous()
            assert g.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(g.detach(), e.detach())
    sum(o.sum() for o in expected).backward()
    sum(o.sum() for o in got).backward()
    for (name, p), q in zip(model.named_parameters(), cl.parameters()):
        assert torch.equal(p.grad, q.grad), name
    # the configs of models without RoI operators set it, the two-stage detectors do not
    for name, expected_flag in (('retinanet_dccnext-b2_fpn_1x_coco', True),
                                ('fpn_dccnext-b2_4xb8-40k_ade20k-512x512', True),
                                ('mask-rcnn_dccnext-b2_fpn_1x_coco', False)):
        backbone = Config.fromfile(config_file(name)).model.backbone
        assert backbone.get('out_channels_last', False) is expected_flag, name


def test_odd_input_size_and_single_image():
    model = DCCNeXt('b0', out_indices=(0, 1, 2, 3), gap_before_final_norm=False).eval()
    with torch.no_grad():
        outs = model(torch.randn(1, 3, 70, 90))
    # stem: (H + 4 - 7) // 4 + 1; downsampling: (H + 2 - 3) // 2 + 1
    assert [tuple(o.shape[2:]) for o in outs] == [(17, 22), (9, 11), (5, 6), (3, 3)]


def test_arch_dict_and_errors():
    model = DCCNeXt(
        dict(
            channels=[16, 32, 48, 64],
            depths=[1, 1, 2, 1],
            kernel_sizes=[None, 4, 6, None],
            ffn_ratio=2))
    assert isinstance(model.stages[1][0].mixer, DCConv)
    assert not isinstance(model.stages[3][0].mixer, DCConv)
    assert model.stages[2][1].ffn.fc1.out_features == 96
    model.eval()
    with torch.no_grad():
        assert model(_input(64))[0].shape == (2, 64)
    with pytest.raises(KeyError):
        DCCNeXt('b9')
    with pytest.raises(KeyError):
        DCCNeXt(dict(channels=[16, 32, 48, 64]))
    with pytest.raises(IndexError):
        DCCNeXt('b0', out_indices=(4, ))
    with pytest.raises(ValueError):
        DCCNeXt('b0', frozen_stages=5)
    with pytest.raises(ValueError):
        DCCNeXt('b0', norm_cfg=dict(type='BN'))


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(in_channels=0), ValueError, 'in_channels must be an int >= 1, got 0'),
    (dict(in_channels=True), ValueError, 'in_channels must be an int >= 1, got True'),
    (dict(frozen_stages=2.5), ValueError, r'frozen_stages must be an int in \[0, 4\], got 2.5'),
    (dict(frozen_stages='2'), ValueError, "frozen_stages must be an int in .*, got '2'"),
    (dict(out_indices='0'), TypeError, "out_indices must be an int or a sequence of ints, got '0'"),
    (dict(out_indices=(0, 1.0)), TypeError, r'got \(0, 1.0\)'),
])
def test_bad_arguments_are_named(kwargs, error, message):
    with pytest.raises(error, match=message):
        DCCNeXt('b0', **kwargs)


def test_bad_inputs_name_the_users_shape():
    model = DCCNeXt(dict(channels=[8, 16, 24, 32], depths=[1, 1, 1, 1]), in_channels=4)
    with pytest.raises(ValueError, match=r'expects images of shape \(B, 4, H, W\), got a tensor '
                       r'of shape \(4, 64, 64\)'):
        model(torch.zeros(4, 64, 64))  # a single image without its batch dimension
    with pytest.raises(ValueError, match=r'shape \(B, 4, H, W\), got .* \(2, 3, 64, 64\)'):
        model(torch.zeros(2, 3, 64, 64))
    with pytest.raises(ValueError, match=r'empty batch \(B = 0\): images of shape '
                       r'\(0, 4, 64, 64\)'):
        model(torch.zeros(0, 4, 64, 64))
    assert model(torch.zeros(1, 4, 64, 64))[0].shape == (1, 32)


def test_frozen_stages():
    model = DCCNeXt('b0', frozen_stages=2, out_indices=(0, 1, 2, 3))
    model.init_weights()
    model.train()
    for i in range(4):
        frozen = i < 2
        for module in (model.downsample_layers[i], model.stages[i]):
            assert all(p.requires_grad != frozen for p in module.parameters())
            assert all(m.training != frozen for m in module.modules())
    outs = model(_input(64))
    sum(o.sum() for o in outs).backward()
    for i in range(4):
        for module in (model.downsample_layers[i], model.stages[i]):
            for p in module.parameters():
                assert (p.grad is None) == (i < 2)
    # train() again keeps the frozen stages in eval mode
    model.train()
    assert not model.stages[1].training and model.stages[2].training


def test_with_cp_same_output_and_grads():
    torch.manual_seed(1)
    ref = DCCNeXt('b0', out_indices=(1, 3), gap_before_final_norm=False)
    ref.init_weights()
    cp_model = DCCNeXt('b0', out_indices=(1, 3), gap_before_final_norm=False, with_cp=True)
    cp_model.load_state_dict(ref.state_dict())
    assert all(b.with_cp for s in cp_model.stages for b in s)
    x = _input(64)
    grads = []
    for model in (ref, cp_model):
        model.train()
        xi = x.clone().requires_grad_()
        outs = model(xi)
        (outs[0].square().mean() + outs[1].sum()).backward()
        grads.append((outs, xi.grad, {n: p.grad for n, p in model.named_parameters()}))
    (o1, gx1, g1), (o2, gx2, g2) = grads
    for a, b in zip(o1, o2):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(gx1, gx2)
    assert g1.keys() == g2.keys()
    for name in g1:
        torch.testing.assert_close(g1[name], g2[name], msg=name)


def test_inference_fast_path_matches_autograd_path():
    """Without autograd (no_grad, inference_mode) the result must equal the autograd path
    and leave the caller's tensors alone (the blocks are plain; the in-place inference
    optimisation has its own tests in test_inference_optimization.py)."""
    torch.manual_seed(0)
    model = DCCNeXt(
        'b0', out_indices=(0, 1, 2, 3), gap_before_final_norm=False, layer_scale_init_value=0.5)
    model.init_weights()
    model.eval()
    x = _input(96)
    x_copy = x.clone()
    with torch.enable_grad():
        ref = model(x)
    with torch.no_grad():
        fast = model(x)
    with torch.inference_mode():
        inference = model(x)
    assert torch.equal(x, x_copy)
    for a, b, c in zip(ref, fast, inference):
        torch.testing.assert_close(b, a)
        torch.testing.assert_close(c, a)
    block = model.stages[2][0]
    h = torch.randn(2, 6, 6, 160)
    h_copy = h.clone()
    with torch.no_grad():
        block(h)  # by default a block leaves its input alone
    assert torch.equal(h, h_copy)


def test_drop_path_is_stochastic_in_training_only():
    model = DCCNeXt('b0', drop_path_rate=0.5, layer_scale_init_value=1.)
    model.init_weights()
    x = _input(64)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], model(x)[0])
        model.train()
        torch.manual_seed(0)
        a = model(x)[0]
        torch.manual_seed(1)
        b = model(x)[0]
    assert not torch.allclose(a, b)
    assert model.stages[0][0].drop_path.__class__.__name__ == 'Identity'  # rate 0 at block 0
    assert model.stages[3][-1].drop_path.drop_prob == pytest.approx(0.5)


@pytest.mark.parametrize('arch', sorted(ARCHS))
def test_params_match_table1(arch):
    backbone = DCCNeXt(arch)
    c = ARCHS[arch]['channels'][-1]
    head = DCCNeXtClsHead(num_classes=1000, in_channels=c, mid_channels=HEAD_MID.get(arch))
    n = sum(p.numel() for m in (backbone, head) for p in m.parameters()) / 1e6
    assert n == pytest.approx(PAPER_PARAMS_M[arch], rel=0.02)


def test_layer_scale_and_param_layout():
    model = DCCNeXt('b1')
    block = model.stages[2][0]
    assert block.gamma1.shape == (240, ) and torch.all(block.gamma1 == 1e-6)
    assert block.mixer.weight.shape == (12, 240) and block.mixer.bias.shape == (240, )
    assert block.ffn.fc1.weight.shape == (6 * 240, 240)
    assert block.ffn.dwconv.weight.shape == (6 * 240, 1, 3, 3)
    assert model.downsample_layers[0].conv.weight.shape == (48, 3, 7, 7)
    assert model.downsample_layers[0].conv.padding == (2, 2)
    assert model.downsample_layers[1].conv.weight.shape == (96, 48, 3, 3)
    assert model.downsample_layers[1].conv.stride == (2, 2)
    no_ls = DCCNeXt('b1', layer_scale_init_value=0.)
    assert no_ls.stages[0][0].gamma1 is None


def test_get_layer_depth():
    model = DCCNeXt('b1')  # depths 2, 2, 6, 2 -> 12 blocks, 14 layers
    depth = model.get_layer_depth
    assert depth('backbone.downsample_layers.0.conv.weight', 'backbone.') == (0, 14)
    assert depth('backbone.stages.0.0.norm1.weight', 'backbone.') == (1, 14)
    assert depth('backbone.downsample_layers.1.norm.weight', 'backbone.') == (3, 14)
    assert depth('backbone.stages.1.0.mixer.weight', 'backbone.') == (3, 14)
    assert depth('backbone.stages.2.5.ffn.fc2.bias', 'backbone.') == (10, 14)
    assert depth('backbone.stages.3.1.gamma2', 'backbone.') == (12, 14)
    assert depth('backbone.norm3.weight', 'backbone.') == (13, 14)
    assert depth('head.fc2.weight', 'backbone.') == (13, 14)
    assert depth('stages.3.1.gamma2') == (12, 14)
    stage = dict(decay_type='stage_wise')
    assert depth('backbone.downsample_layers.0.conv.weight', 'backbone.', **stage) == (0, 6)
    assert depth('backbone.downsample_layers.2.conv.weight', 'backbone.', **stage) == (3, 6)
    assert depth('backbone.stages.0.1.mixer.weight', 'backbone.', **stage) == (1, 6)
    assert depth('backbone.stages.3.1.mixer.weight', 'backbone.', **stage) == (4, 6)
    assert depth('neck.conv.weight', 'backbone.', **stage) == (5, 6)
    with pytest.raises(ValueError):
        depth('stages.0.0.gamma1', decay_type='block')


def test_pretrained_round_trip(tmp_path):
    from mmengine.registry import init_default_scope
    from mmpretrain.registry import MODELS
    init_default_scope('mmpretrain')
    clf = MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='mmdccnext.DCCNeXt', arch='b0'),
            head=dict(type='mmdccnext.DCCNeXtClsHead', num_classes=10, in_channels=256)))
    clf.init_weights()
    with torch.no_grad():
        for p in clf.parameters():
            p.add_(torch.rand_like(p))  # differ from any initialisation
    path = tmp_path / 'classifier.pth'
    torch.save(dict(state_dict=clf.state_dict(), meta=dict()), path)

    backbone = DCCNeXt(
        'b0',
        out_indices=(0, 1, 2, 3),
        init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    backbone.init_weights()
    expected = clf.backbone.state_dict()
    loaded = backbone.state_dict()
    shared = set(expected) & set(loaded)
    # the dense backbone has the extra output norms norm0..norm2; all else comes from the file
    assert set(loaded) - shared == {f'norm{i}.{w}' for i in range(3) for w in ('weight', 'bias')}
    for key in shared:
        torch.testing.assert_close(loaded[key], expected[key], msg=key)

    # and a copy of the same classifier's backbone gives the same features
    clf.eval()
    same = DCCNeXt('b0', init_cfg=dict(type='Pretrained', checkpoint=str(path), prefix='backbone.'))
    same.init_weights()
    same.eval()
    x = _input(64)
    with torch.no_grad():
        torch.testing.assert_close(same(x)[0], clf.backbone(x)[0])


def test_head_shapes_and_loss():
    from mmpretrain.structures import DataSample
    head = DCCNeXtClsHead(num_classes=7, in_channels=32)
    head.init_weights()
    assert head.fc1.out_features == 128 and head.norm.normalized_shape == (128, )
    feats = (torch.randn(3, 32), )
    assert head(feats).shape == (3, 7)
    assert head.pre_logits(feats).shape == (3, 128)
    assert head((torch.randn(3, 32, 4, 4), )).shape == (3, 7)  # maps are pooled
    samples = [DataSample().set_gt_label(i) for i in range(3)]
    loss = head.loss(feats, samples)['loss']
    assert loss.ndim == 0 and torch.isfinite(loss)
    preds = head.predict(feats)
    assert len(preds) == 3 and preds[0].pred_score.shape == (7, )
    with pytest.raises(ValueError):
        DCCNeXtClsHead(num_classes=0, in_channels=32)


def test_registered_in_mmdccnext_scope():
    from mmengine.registry import init_default_scope

    from mmdccnext.registry import MODELS
    init_default_scope('mmdccnext')
    # the head's MMPretrain loss is still found under the 'mmdccnext' default scope
    model = MODELS.build(dict(type='DCCNeXt', arch='b0'))
    assert isinstance(model, DCCNeXt)
    head = MODELS.build(dict(type='DCCNeXtClsHead', num_classes=3, in_channels=8))
    assert isinstance(head, DCCNeXtClsHead)
    assert copy.deepcopy(model).arch_settings is DCCNeXt.arch_settings
