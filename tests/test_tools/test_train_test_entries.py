"""tools/train.py and tools/test.py as a user runs them."""
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest
from mmengine.runner.checkpoint import CheckpointLoader

import mmdccnext  # noqa: F401
from mmdccnext.apis.zoo import NoWeightsError

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tests', 'test_integration'))
from synthetic_helpers import make_tiny_datasets, tiny_config  # noqa: E402


def run_tool(args, cwd, timeout=600):
    env = dict(os.environ, PYTHONPATH=REPO)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_zoo_entry_without_weights_explains_how_to_get_them():
    with pytest.raises(NoWeightsError, match='tools/train.py configs/classification/'):
        CheckpointLoader.load_checkpoint('zoo://dccnext-b2_8xb128_in1k')
    with pytest.raises(KeyError, match='dccnext-b2_8xb128_in1k'):
        CheckpointLoader.load_checkpoint('zoo://no-such-model')


@pytest.mark.slow
def test_train_then_test_with_out_and_show_dir(tmp_path):
    root = make_tiny_datasets(tmp_path / 'data')
    cfg = tiny_config(
        'detection/retinanet_dccnext-b0_fpn_synthetic.py', root, tmp_path / 'work',
        **{'train_cfg': dict(_delete_=True, type='IterBasedTrainLoop', max_iters=2,
                             val_interval=1000),
           'train_dataloader.batch_size': 2,
           'default_hooks.checkpoint': dict(type='CheckpointHook', interval=2,
                                            by_epoch=False),
           'test_dataloader.dataset.indices': 2})
    config = str(tmp_path / 'tiny.py')
    cfg.dump(config)
    proc = run_tool([osp.join(REPO, 'tools', 'train.py'), config], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    checkpoint = tmp_path / 'work' / 'iter_2.pth'
    assert checkpoint.is_file()

    # --show-dir relative to the current folder, as its help says (mmdet's hook alone would
    # put it under <work_dir>/<timestamp>/)
    out, show = tmp_path / 'preds.pkl', tmp_path / 'show'
    proc = run_tool([osp.join(REPO, 'tools', 'test.py'), config, str(checkpoint), '--out',
                     str(out), '--show-dir', 'show'], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out, 'rb') as f:
        predictions = pickle.load(f)
    assert len(predictions) == 2 and 'pred_instances' in predictions[0]
    pictures = [f for _, _, files in os.walk(show) for f in files
                if f.endswith(('.jpg', '.png'))]
    assert len(pictures) == 2


@pytest.mark.slow
@pytest.mark.parametrize('config,pictures_in', [
    ('segmentation/fpn_dccnext-b0_synthetic.py', 'show/vis_data/vis_image'),
    ('classification/dccnext-b0_synthetic.py', 'show'),
])
def test_show_dir_draws_every_test_image_under_the_folder_given(config, pictures_in, tmp_path):
    root = make_tiny_datasets(tmp_path / 'data')
    cfg = tiny_config(
        config, root, tmp_path / 'work',
        **{'train_cfg': dict(_delete_=True, type='IterBasedTrainLoop', max_iters=1,
                             val_interval=1000),
           'train_dataloader.batch_size': 2,
           'train_dataloader.sampler': dict(type='InfiniteSampler', shuffle=True),
           'param_scheduler': [],
           'default_hooks.checkpoint': dict(type='CheckpointHook', interval=1, by_epoch=False),
           'test_dataloader.dataset.indices': 3,
           'test_dataloader.batch_size': 1})
    config = str(tmp_path / 'tiny.py')
    cfg.dump(config)
    proc = run_tool([osp.join(REPO, 'tools', 'train.py'), config], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_tool([osp.join(REPO, 'tools', 'test.py'), config,
                     str(tmp_path / 'work' / 'iter_1.pth'), '--show-dir', 'show'], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    pictures = sorted(f for f in os.listdir(tmp_path / pictures_in)
                      if f.endswith(('.jpg', '.png')))
    assert len(pictures) == 3, pictures
