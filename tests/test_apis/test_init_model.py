"""One model builder for the three tasks (mmdccnext.apis.init_model), and our names in the
libraries' own lookups: MMPretrain's get_model / list_models / ImageClassificationInferencer,
MMDetection's DetInferencer and MMSegmentation's MMSegInferencer."""
import os.path as osp

import numpy as np
import pytest
import torch

import mmdccnext  # noqa: F401  (registers our model index with MMPretrain)
from mmdccnext.apis import config_file, get_config, init_model, register_model_index
from mmdccnext.models import DCCNeXt
from mmdccnext.ops import DCConv

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
B0_CLS = 'dccnext-b0_8xb128_in1k'
B0_DET = 'retinanet_dccnext-b0_fpn_1x_coco'
B0_SEG = 'fpn_dccnext-b0_4xb8-40k_ade20k-512x512'
CLASSIFIERS = [f'dccnext-b{i}_8xb128_in1k' for i in range(5)]
TINY_ARCH = dict(_delete_=True, channels=[8, 16, 24, 32], depths=[1, 1, 1, 1])


def _tiny_classifier_options():
    return {'model.backbone.arch': TINY_ARCH,
            'model.head.in_channels': 32, 'model.head.mid_channels': 40,
            'model.head.num_classes': 5}


def test_config_by_file_name_or_zoo_name():
    by_name = get_config(B0_CLS)
    assert by_name.filename == config_file(B0_CLS)
    assert osp.samefile(config_file(B0_CLS),
                        osp.join(REPO, 'configs', 'classification', f'{B0_CLS}.py'))
    assert config_file(f'zoo://{B0_DET}').endswith(f'configs/detection/{B0_DET}.py')
    with pytest.raises(KeyError, match='no model of that name.*dccnext-b0_8xb128_in1k'):
        get_config('dccnext-b9')
    with pytest.raises(FileNotFoundError, match='config: no such file'):
        get_config('configs/nothing.py')


def test_classifier_from_a_zoo_name_with_the_config_initialisation():
    model = init_model(B0_CLS, seed=0)
    assert type(model).__name__ == 'ImageClassifier' and not model.training
    assert isinstance(model.backbone, DCCNeXt) and model.cfg.filename == config_file(B0_CLS)
    # the config's initialisation: DCConv taps truncated normal (std 0.02, cut at +-0.04)
    taps = torch.cat([m.weight.flatten() for m in model.modules() if isinstance(m, DCConv)])
    assert taps.abs().max() <= 0.04 and 0.015 < taps.std() < 0.025
    again = init_model(B0_CLS, seed=0)
    for (name, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), name


def test_checkpoint_loading_strict_and_dataset_meta(tmp_path):
    options = _tiny_classifier_options()
    model = init_model(B0_CLS, cfg_options=options, seed=1)
    path = str(tmp_path / 'tiny.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': list('abcde')}}}, path)
    loaded = init_model(B0_CLS, path, cfg_options=options, seed=2, strict=True)
    for (name, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    assert loaded.dataset_meta['classes'] == list('abcde')
    # a tensor the file lacks is an error with strict=True, a warning without
    partial = {k: v for k, v in model.state_dict().items() if not k.startswith('head.')}
    torch.save({'state_dict': partial}, str(tmp_path / 'partial.pth'))
    with pytest.raises(RuntimeError, match='head'):
        init_model(B0_CLS, str(tmp_path / 'partial.pth'), cfg_options=options, strict=True)
    init_model(B0_CLS, str(tmp_path / 'partial.pth'), cfg_options=options)
    with pytest.raises(FileNotFoundError, match='checkpoint: no such file'):
        init_model(B0_CLS, str(tmp_path / 'missing.pth'))


def test_detector_and_segmentor_are_built_by_their_libraries():
    # their configs name zoo:// weights that do not exist yet: init_model leaves them out
    detector = init_model(B0_DET, init_weights=False)
    assert type(detector).__name__ == 'RetinaNet' and not detector.training
    assert isinstance(detector.backbone, DCCNeXt)
    assert detector.backbone.init_cfg is None or detector.backbone.init_cfg[0]['type'] != \
        'Pretrained'
    segmentor = init_model(B0_SEG, init_weights=False)
    assert type(segmentor).__name__ == 'EncoderDecoder'
    assert isinstance(segmentor.backbone, DCCNeXt)


def test_mmpretrain_lists_and_builds_our_classifiers_by_name(tmp_path):
    import mmpretrain
    assert sorted(mmpretrain.list_models('dccnext*')) == CLASSIFIERS
    model = mmpretrain.get_model(B0_CLS)
    assert type(model).__name__ == 'ImageClassifier' and isinstance(model.backbone, DCCNeXt)
    # pretrained= a checkpoint file (a zoo:// name once weights are released)
    ours = init_model(B0_CLS, seed=3)
    path = str(tmp_path / 'b0.pth')
    torch.save({'state_dict': ours.state_dict()}, path)
    loaded = mmpretrain.get_model(B0_CLS, pretrained=path)
    for (name, a), b in zip(ours.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), name
    # registering again changes nothing (and does not raise on the names already there)
    assert register_model_index() == []
    assert sorted(mmpretrain.list_models('dccnext*')) == CLASSIFIERS


def test_image_classification_inferencer_takes_our_name(tmp_path):
    from mmengine.registry import init_default_scope
    from mmpretrain import ImageClassificationInferencer

    # MMDetection's and MMSegmentation's builders (other tests) set the global default
    # scope; MMPretrain's inferencer builds its pipeline in the current one
    init_default_scope('mmpretrain')
    ours = init_model(B0_CLS, seed=4)
    path = str(tmp_path / 'b0.pth')
    torch.save({'state_dict': ours.state_dict()}, path)
    inferencer = ImageClassificationInferencer(B0_CLS, pretrained=path, device='cpu')
    image = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    result = inferencer(image)[0]
    assert result['pred_scores'].shape == (1000, )
    assert 0 <= result['pred_label'] < 1000


def _checkpoint_with_meta(model, path, classes):
    torch.save({'state_dict': model.state_dict(), 'meta': {'dataset_meta': {
        'classes': classes, 'palette': [(i, i, i) for i in range(len(classes))]}}}, path)
    return path


def test_det_inferencer_takes_our_config(tmp_path):
    from mmdet.apis import DetInferencer
    options = {'model.backbone.arch': TINY_ARCH,
               'model.neck.in_channels': [16, 24, 32]}
    model = init_model(B0_DET, cfg_options=options, seed=5)
    weights = _checkpoint_with_meta(model, str(tmp_path / 'det.pth'), ['a'] * 80)
    cfg = get_config(B0_DET, options)
    inferencer = DetInferencer(model=cfg, weights=weights, device='cpu')
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    result = inferencer(image, return_datasamples=True)
    sample = result['predictions'][0]
    assert sample.pred_instances.bboxes.shape[-1] == 4
    # the name of a model of ours resolves to its config file, which the inferencer reads
    assert DetInferencer(model=config_file(B0_DET), weights=None, device='cpu').model.__class__ \
        .__name__ == 'RetinaNet'


def test_seg_inferencer_takes_our_config(tmp_path):
    from mmseg.apis import MMSegInferencer
    options = {'model.backbone.arch': TINY_ARCH,
               'model.neck.in_channels': [8, 16, 24, 32]}
    model = init_model(B0_SEG, cfg_options=options, seed=6)
    classes = [f'c{i}' for i in range(150)]
    weights = _checkpoint_with_meta(model, str(tmp_path / 'seg.pth'), classes)
    inferencer = MMSegInferencer(model=get_config(B0_SEG, options), weights=weights,
                                 device='cpu')
    image = np.random.default_rng(0).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    result = inferencer(image, return_datasamples=True)
    assert tuple(result.pred_sem_seg.data.shape[-2:]) == (96, 128)
