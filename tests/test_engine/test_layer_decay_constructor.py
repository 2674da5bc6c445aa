import os.path as osp

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from mmengine.registry import init_default_scope

from mmdccnext.analysis import build_model_from_cfg
from mmdccnext.engine import LearningRateDecayOptimizerConstructor

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

BASE_LR, BASE_WD, RATE = 1e-3, 0.05, 0.8
B0_LAYERS = 3 + 3 + 5 + 2 + 2  # one per block + stem + everything after the backbone


def _retinanet():
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    return MODELS.build(
        dict(
            type='RetinaNet',
            data_preprocessor=dict(
                type='DetDataPreprocessor',
                mean=[123.675, 116.28, 103.53],
                std=[58.395, 57.12, 57.375],
                bgr_to_rgb=True),
            backbone=dict(
                type='mmdccnext.DCCNeXt',
                arch='b0',
                out_indices=(1, 2, 3),
                gap_before_final_norm=False,
                frozen_stages=1),
            neck=dict(
                type='FPN',
                in_channels=[64, 160, 256],
                out_channels=32,
                start_level=0,
                add_extra_convs='on_input',
                num_outs=4),
            bbox_head=dict(
                type='RetinaHead',
                num_classes=3,
                in_channels=32,
                stacked_convs=1,
                feat_channels=32,
                anchor_generator=dict(
                    type='AnchorGenerator',
                    octave_base_scale=4,
                    scales_per_octave=3,
                    ratios=[0.5, 1.0, 2.0],
                    strides=[8, 16, 32, 64]),
                bbox_coder=dict(
                    type='DeltaXYWHBBoxCoder',
                    target_means=[.0, .0, .0, .0],
                    target_stds=[1.0, 1.0, 1.0, 1.0]),
                loss_cls=dict(
                    type='FocalLoss', use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                loss_bbox=dict(type='L1Loss', loss_weight=1.0))))


def _classifier():
    init_default_scope('mmpretrain')
    from mmpretrain.registry import MODELS
    return MODELS.build(
        dict(
            type='ImageClassifier',
            backbone=dict(type='mmdccnext.DCCNeXt', arch='b0'),
            head=dict(type='mmdccnext.DCCNeXtClsHead', num_classes=10, in_channels=256)))


def _optim_cfg(**paramwise):
    return dict(
        constructor='mmdccnext.LearningRateDecayOptimizerConstructor',
        optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
        paramwise_cfg=dict(layer_decay_rate=RATE, **paramwise))


def _by_name(optimizer):
    out = {}
    for group in optimizer.param_groups:
        for name, p in zip(group['param_names'], group['params']):
            assert name not in out
            out[name] = group
    return out


def _check_groups(model, optim_wrapper):
    groups = _by_name(optim_wrapper.optimizer)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert set(groups) == trainable
    for name, group in groups.items():
        depth, n = model.backbone.get_layer_depth(name, 'backbone.')
        assert n == B0_LAYERS
        assert group['layer_depth'] == depth
        assert group['lr'] == pytest.approx(BASE_LR * RATE**(n - 1 - depth))
        param = dict(model.named_parameters())[name]
        no_decay = param.ndim == 1 or name.endswith('.bias')
        assert group['weight_decay'] == (0. if no_decay else BASE_WD), name
    # parameters sharing (depth, lr, weight decay) share one group
    assert len(optim_wrapper.optimizer.param_groups) == len({(g['layer_depth'], g['lr'],
                                                              g['weight_decay'])
                                                             for g in groups.values()})
    return groups


def test_detector_layer_decay():
    model = _retinanet()
    optim_wrapper = build_optim_wrapper(model, _optim_cfg())
    groups = _check_groups(model, optim_wrapper)
    # frozen stage 1 is left out; stage 2 starts at depth 4, the neck and head at the top
    assert 'backbone.stages.0.0.mixer.weight' not in groups
    assert groups['backbone.downsample_layers.1.conv.weight']['layer_depth'] == 4
    assert groups['backbone.stages.3.1.mixer.weight']['layer_depth'] == B0_LAYERS - 2
    assert groups['neck.lateral_convs.0.conv.weight']['lr'] == pytest.approx(BASE_LR)
    assert groups['bbox_head.retina_cls.weight']['lr'] == pytest.approx(BASE_LR)
    assert groups['backbone.stages.2.0.gamma1']['weight_decay'] == 0.
    assert groups['backbone.stages.2.0.mixer.weight']['weight_decay'] == BASE_WD
    # one optimisation step runs
    x = torch.randn(1, 3, 64, 64)
    loss = sum(o.float().sum() for outs in model._forward(x) for o in outs)
    optim_wrapper.update_params(loss)


def test_classifier_layer_decay_and_mmpretrain_compat():
    model = _classifier()
    optim_wrapper = build_optim_wrapper(model, _optim_cfg())
    groups = _check_groups(model, optim_wrapper)
    assert groups['backbone.downsample_layers.0.conv.weight']['lr'] == pytest.approx(
        BASE_LR * RATE**(B0_LAYERS - 1))
    assert groups['head.fc2.weight']['lr'] == pytest.approx(BASE_LR)
    # MMPretrain's own constructor reaches the same depths through
    # ImageClassifier.get_layer_depth -> DCCNeXt.get_layer_depth
    theirs = build_optim_wrapper(
        model,
        dict(
            constructor='LearningRateDecayOptimWrapperConstructor',
            optimizer=dict(type='AdamW', lr=BASE_LR, weight_decay=BASE_WD),
            paramwise_cfg=dict(layer_decay_rate=RATE)))
    for group in theirs.optimizer.param_groups:
        assert group['lr'] == pytest.approx(groups[group['param_name']]['lr'])


def test_stage_wise_custom_keys_and_mmdet_spelling():
    model = _classifier()
    cfg = _optim_cfg(
        decay_type='stage_wise',
        num_layers=6,
        custom_keys={'.mixer.weight': dict(lr_mult=0.5, decay_mult=0.)})
    cfg['paramwise_cfg']['decay_rate'] = cfg['paramwise_cfg'].pop('layer_decay_rate')
    groups = _by_name(build_optim_wrapper(model, cfg).optimizer)
    assert groups['backbone.downsample_layers.0.conv.weight']['lr'] == pytest.approx(BASE_LR *
                                                                                     RATE**5)
    assert groups['backbone.stages.1.2.ffn.fc1.weight']['lr'] == pytest.approx(BASE_LR * RATE**3)
    mixer = groups['backbone.stages.2.0.mixer.weight']
    assert mixer['lr'] == pytest.approx(BASE_LR * RATE**2 * 0.5)
    assert mixer['weight_decay'] == 0.
    assert groups['head.fc1.weight']['lr'] == pytest.approx(BASE_LR)


def test_rejects_models_without_layer_depth():
    constructor = LearningRateDecayOptimizerConstructor(
        dict(optimizer=dict(type='SGD', lr=0.1)), dict(layer_decay_rate=0.9))
    with pytest.raises(NotImplementedError):
        constructor(torch.nn.Linear(2, 2))


def test_segmentor_layer_decay():
    model = build_model_from_cfg(
        osp.join(ROOT, 'configs', 'segmentation', 'fpn_dccnext-b0_4xb8-40k_ade20k-512x512.py'))
    assert type(model).__name__ == 'EncoderDecoder'
    groups = _check_groups(model, build_optim_wrapper(model, _optim_cfg()))
    assert groups['decode_head.conv_seg.weight']['lr'] == pytest.approx(BASE_LR)
    assert groups['backbone.stages.1.0.ffn.fc1.weight']['layer_depth'] == 4
