"""ClusterVisualizationHook in a short real training run (MMEngine Runner, tiny synthetic
ImageNet-layout data): pictures in the LocalVisBackend's files and in TensorBoard."""
import glob
import os.path as osp
import sys

import cv2
import numpy as np
import pytest
from mmengine.runner import Runner
from vis_helpers import REPO, read_png

from mmdccnext.datasets import generate
from mmdccnext.engine import ClusterVisualizationHook
from mmdccnext.visualization import model_for_pictures, visualize_clusters

sys.path.insert(0, osp.join(REPO, 'tests', 'test_integration'))
from synthetic_helpers import TINY, tiny_config  # noqa: E402

BLOCKS = ['stages.2.0', 'stages.3.0']


def _config(tmp_path, vis_backends, **hook):
    root = tmp_path / 'synthetic'
    generate('imagenet', str(root / 'imagenet'), seed=0, num_train=12, num_val=2,
             image_size=TINY['imagenet']['image_size'])
    cfg = tiny_config('classification/dccnext-b0_synthetic.py', root, tmp_path / 'work')
    cfg.train_dataloader.batch_size = 4  # 12 images: 3 iterations
    # a narrow, shallow DCCNeXt (stages 3-4 still DCConv) keeps the run short on a CPU
    cfg.model.backbone.arch = dict(channels=[16, 32, 48, 64], depths=[1, 1, 2, 1])
    cfg.model.head.update(in_channels=64, mid_channels=128)
    for transform in cfg.train_dataloader.dataset.pipeline:
        if transform.type == 'RandomResizedCrop':
            transform.scale = 64  # quick iterations; the val pipeline (the hook's) unchanged
    cfg.train_cfg = dict(by_epoch=True, max_epochs=1, val_interval=10)
    cfg.default_hooks.checkpoint = None
    cfg.log_level = 'WARNING'
    cfg.visualizer = dict(type='UniversalVisualizer', vis_backends=vis_backends)
    cfg.custom_hooks = [dict(type='mmdccnext.ClusterVisualizationHook', **hook)]
    return cfg


def _tensorboard_images(log_dir, tag):
    event_accumulator = pytest.importorskip(
        'tensorboard.backend.event_processing.event_accumulator',
        reason='tensorboard is not installed (pip install tensorboard)')
    events = event_accumulator.EventAccumulator(
        osp.join(log_dir, 'vis_data'), size_guidance={event_accumulator.IMAGES: 0})
    events.Reload()
    assert tag in events.Tags()['images']
    return {
        e.step: cv2.imdecode(np.frombuffer(e.encoded_image_string, np.uint8),
                             cv2.IMREAD_COLOR)[..., ::-1]
        for e in events.Images(tag)
    }


@pytest.mark.slow
def test_hook_writes_pictures_during_training(tmp_path):
    pytest.importorskip('tensorboard', reason='tensorboard is not installed (pip install '
                        'tensorboard), needed by TensorboardVisBackend')
    cfg = _config(
        tmp_path, [dict(type='LocalVisBackend'), dict(type='TensorboardVisBackend')],
        interval=2, blocks=BLOCKS, num_centers=2, panel_size=128)
    runner = Runner.from_cfg(cfg)
    runner.train()
    assert runner.iter == 3

    local = osp.join(runner.log_dir, 'vis_data', 'vis_image')
    files = sorted(osp.basename(f) for f in glob.glob(osp.join(local, '*.png')))
    assert files == ['dcconv_clusters_2.png']  # every 2 iterations: after the 2nd only
    picture = read_png(osp.join(local, 'dcconv_clusters_2.png'))
    # 2 centres x 2 blocks, 128-pixel panels (the 64x64 val image, scaled up) + titles
    assert picture.shape[1] == 2 * 128 + 6
    assert picture.shape[0] > 2 * 128

    (hook, ) = [h for h in runner.hooks if isinstance(h, ClusterVisualizationHook)]
    assert len(hook.centers) == 2  # picked at the first picture, kept for the next ones
    images = _tensorboard_images(runner.log_dir, 'dcconv_clusters')
    assert sorted(images) == [2]
    assert np.array_equal(images[2], picture)

    # the hook draws what the library draws for the first val image and the current model:
    # one more call after training (runner.iter == 3, so step 4) against a direct drawing
    dataset = runner.val_dataloader.dataset
    image = dataset.get_data_info(0)['img_path']
    result = visualize_clusters(runner.model, image, dataset.pipeline.transforms, BLOCKS,
                                hook.centers, panel_size=128)
    runner.model.train()
    hook.after_train_iter(runner, 0)
    assert np.array_equal(read_png(osp.join(local, 'dcconv_clusters_4.png')), result.canvas)

    # the Runner's own checkpoint (optimizer, message hub and all) gives the same picture
    runner.save_checkpoint(str(tmp_path), 'iter_3.pth')
    loaded = model_for_pictures(runner.cfg, str(tmp_path / 'iter_3.pth'))
    again = visualize_clusters(loaded, image, dataset.pipeline.transforms, BLOCKS,
                               hook.centers, panel_size=128)
    assert np.array_equal(again.canvas, result.canvas)
    # the training model is left as it was
    assert all(m.training for m in runner.model.modules())
    assert not any(b.mixer.record_indices for b in
                   (runner.model.backbone.stages[2][0], runner.model.backbone.stages[3][0]))


def test_hook_checks_its_arguments_before_training(tmp_path):
    for bad, match in ((dict(interval=0), 'interval must be an int >= 1'),
                       (dict(num_centers=0), 'num_centers must be an int >= 1'),
                       (dict(dataloader='train'), "dataloader must be 'val' or 'test'")):
        with pytest.raises(ValueError, match=match):
            ClusterVisualizationHook(**bad)
    cfg = _config(tmp_path, [dict(type='LocalVisBackend')], interval=1, blocks=['stages.1.0'])
    runner = Runner.from_cfg(cfg)
    with pytest.raises(ValueError, match=r"'stages.1.0' is a depthwise-convolution block.*"
                       r'stages\.2\.0'):
        runner.train()
    assert runner.iter == 0
    hook = ClusterVisualizationHook(centers=[(64, 3)])
    with pytest.raises(ValueError, match=r'centers: \(64, 3\) is outside the 64x64 image'):
        hook.before_train(runner)
    hook = ClusterVisualizationHook(image_index=2)
    with pytest.raises(ValueError, match='image_index 2 is out of range for the 2 images'):
        hook.before_train(runner)
