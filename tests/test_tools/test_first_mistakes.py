"""A new user's first mistakes get one clear message, no traceback: a config without its data,
positional arguments in the wrong order, a misspelt model-zoo name, unreleased weights."""
import os
import os.path as osp
import shlex
import subprocess
import sys

import pytest
from mmengine.config import Config

import mmdccnext  # noqa: F401
from mmdccnext.apis.cli import ArgumentError, check_positionals, file_kind
from mmdccnext.apis.data_check import DataNotFoundError, check_data_roots, missing_data
from mmdccnext.apis.zoo import NoWeightsError, UnknownModelError, lookup, weights_of

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
RETINANET_B2 = osp.join(REPO, 'configs', 'detection', 'retinanet_dccnext_b2.py')
SYNTHETIC_RETINANET = osp.join(REPO, 'configs', 'detection',
                               'retinanet_dccnext-b0_fpn_synthetic.py')


def run_tool(args, cwd):
    env = dict(os.environ, PYTHONPATH=REPO)
    env.pop('MMDCCNEXT_TRACEBACK', None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def one_message(proc):
    """The tool's one error message; fails on a traceback or a second message."""
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.count('error: ') == 1, proc.stderr[-3000:]
    return proc.stderr[proc.stderr.index('error: '):]


def test_real_config_without_data_lists_every_missing_path_in_one_message(tmp_path):
    message = one_message(run_tool([osp.join(REPO, 'tools', 'train.py'), RETINANET_B2],
                                   cwd=tmp_path))
    lines = message.splitlines()
    assert lines[0] == f'error: {RETINANET_B2}: its data is not on this machine. Missing:'

    def listed(path, *keys):
        line = next((x for x in lines if x.split() and x.split()[0] == path), None)
        assert line is not None, f'{path} not listed in:\n{message}'
        for key in keys:
            assert key in line, (key, line)

    listed('data/coco/annotations/instances_train2017.json',
           'train_dataloader.dataset.ann_file')
    listed('data/coco/train2017/', 'train_dataloader.dataset.data_prefix.img')
    # the loader's and the evaluator's file, once, with both keys
    listed('data/coco/annotations/instances_val2017.json', 'val_dataloader.dataset.ann_file',
           'val_evaluator.ann_file')
    listed('data/coco/val2017/', 'val_dataloader.dataset.data_prefix.img')
    assert 'COCO 2017' in message and 'README, section "Data"' in message
    assert 'ln -s /path/to/your/copy data/coco' in message and 'make demo' in message


def test_only_what_is_missing_is_listed_the_evaluator_file_too(tmp_path, monkeypatch):
    # relative data paths are read from the current folder: one without data/ (a checkout
    # where make demo ran has data/synthetic/coco)
    monkeypatch.chdir(tmp_path)
    cfg = Config.fromfile(SYNTHETIC_RETINANET)
    root = tmp_path / 'coco'
    for folder in ('annotations', 'train2017', 'val2017'):
        (root / folder).mkdir(parents=True)
    for name in ('instances_train2017.json', 'instances_val2017.json'):
        (root / 'annotations' / name).write_text('{}')
    for key in ('train_dataloader', 'val_dataloader'):
        cfg[key].dataset.data_root = str(root)
    keys = ('train_dataloader', 'val_dataloader', 'val_evaluator')
    # the config's evaluator still reads data/synthetic/coco/...: the one thing missing
    assert list(missing_data(cfg, keys).values()) == [['val_evaluator.ann_file']]
    cfg.val_evaluator.ann_file = str(root / 'annotations' / 'instances_val2017.json')
    check_data_roots(cfg, keys, 'cfg.py')  # nothing missing: no error
    (root / 'val2017').rmdir()
    with pytest.raises(DataNotFoundError, match=r'val2017.*val_dataloader\.dataset\.data_prefix'):
        check_data_roots(cfg, keys, 'cfg.py')


def test_paths_of_each_library_layout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cls = Config.fromfile(osp.join(REPO, 'configs', 'classification',
                                   'dccnext-b0_8xb128_in1k.py'))
    # MMPretrain's ImageNet(split='train') reads the folder data/imagenet/train
    assert missing_data(cls, ('train_dataloader', 'val_dataloader', 'val_evaluator')) == {
        'data/imagenet/train': ['train_dataloader.dataset.split'],
        'data/imagenet/val': ['val_dataloader.dataset.split']}
    seg = Config.fromfile(osp.join(REPO, 'configs', 'segmentation', 'fpn_dccnext_b2.py'))
    ade = 'data/ade/ADEChallengeData2016'
    assert missing_data(seg, ('test_dataloader', 'test_evaluator')) == {
        f'{ade}/images/validation': ['test_dataloader.dataset.data_prefix.img_path'],
        f'{ade}/annotations/validation': ['test_dataloader.dataset.data_prefix.seg_map_path']}


def test_synthetic_config_says_how_to_generate_its_data_and_that_command_works(
        tmp_path, monkeypatch):
    checkpoint = tmp_path / 'some.pth'
    checkpoint.write_bytes(b'')  # the data check comes before the checkpoint is read
    message = one_message(run_tool([osp.join(REPO, 'tools', 'test.py'), SYNTHETIC_RETINANET,
                                    str(checkpoint)], cwd=tmp_path))
    assert 'test_dataloader.dataset.ann_file' in message and 'test_evaluator.ann_file' in message
    command = message.split('generate it with `')[1].split('`')[0]
    assert command == ('python tools/misc/generate_synthetic_data.py --task coco '
                       '--out data/synthetic')
    argv = shlex.split(command)[1:]
    proc = subprocess.run([sys.executable, osp.join(REPO, argv[0]), *argv[1:], '--num-train',
                           '2', '--num-val', '2'], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    cfg = Config.fromfile(SYNTHETIC_RETINANET)
    monkeypatch.chdir(tmp_path)  # the config's paths are relative to where the tool runs
    assert missing_data(cfg, ('train_dataloader', 'val_dataloader', 'val_evaluator',
                              'test_dataloader', 'test_evaluator')) == {}


def test_swapped_config_and_checkpoint_are_named(tmp_path):
    message = one_message(run_tool([osp.join(REPO, 'tools', 'test.py'), 'work/epoch_12.pth',
                                    RETINANET_B2], cwd=tmp_path))
    assert "config: 'work/epoch_12.pth' is a checkpoint, not a config" in message
    assert 'is a config, not a checkpoint' in message
    assert 'config and checkpoint look swapped' in message
    assert 'usage: tools/test.py CONFIG CHECKPOINT' in message


def test_swapped_image_and_checkpoint_are_named(tmp_path):
    tool = osp.join(REPO, 'tools', 'analysis', 'visualize_clusters.py')
    config = osp.join(REPO, 'configs', 'classification', 'dccnext-b0_8xb128_in1k.py')
    message = one_message(run_tool([tool, config, 'cat.jpg', 'epoch_1.pth', '--out', 'x.png'],
                                   cwd=tmp_path))
    assert "checkpoint: 'cat.jpg' is an image, not a checkpoint" in message
    assert "image: 'epoch_1.pth' is a checkpoint, not an image" in message
    assert 'checkpoint and image look swapped' in message
    # the checkpoint given alone where the image goes
    message = one_message(run_tool([tool, config, 'epoch_1.pth', '--out', 'x.png'],
                                   cwd=tmp_path))
    assert "image: 'epoch_1.pth' is a checkpoint, not an image" in message
    assert 'missing or out of order' in message


def test_file_kind_by_name_and_by_content(tmp_path):
    import cv2
    import numpy as np
    import torch
    assert file_kind('a/b.PTH') == 'checkpoint' and file_kind('x.jpeg') == 'image'
    assert file_kind('configs/x.py') == 'config' and file_kind('zoo://name') == 'checkpoint'
    assert file_kind('https://host/photo.png') == 'image' and file_kind('nothing') is None
    torch.save({'a': torch.zeros(1)}, tmp_path / 'weights')
    cv2.imwrite(str(tmp_path / 'picture.png'), np.zeros((4, 4, 3), np.uint8))
    os.rename(tmp_path / 'picture.png', tmp_path / 'picture')
    assert file_kind(tmp_path / 'weights') == 'checkpoint'
    assert file_kind(tmp_path / 'picture') == 'image'
    check_positionals('t CONFIG CHECKPOINT', config='c.py', checkpoint='zoo-name')  # fine
    with pytest.raises(ArgumentError, match=r"^checkpoint: 'c\.py' is a config"):
        check_positionals('t CONFIG CHECKPOINT', config='c.py', checkpoint='c.py')


def test_init_model_names_an_image_given_as_checkpoint(tmp_path):
    from mmdccnext.apis import init_model
    image = tmp_path / 'cat.jpg'
    image.write_bytes(b'not read')
    config = osp.join(REPO, 'configs', 'classification', 'dccnext-b0_8xb128_in1k.py')
    with pytest.raises(ArgumentError, match="checkpoint: '.*cat.jpg' is an image"):
        init_model(config, str(image))
    with pytest.raises(ArgumentError, match=r"config: 'w\.pth' is a checkpoint.*look swapped"):
        init_model('w.pth', config)


def test_zoo_name_typo_is_answered_with_the_nearest_names(tmp_path):
    with pytest.raises(UnknownModelError, match=r'did you mean dccnext-b2_8xb128_in1k\b'):
        lookup('dccnext-b2_8xb128_in1')
    with pytest.raises(UnknownModelError, match='did you mean retinanet_dccnext_b2'):
        lookup('zoo://RetinaNet_DCCNeXt_B2x')
    config = osp.join(REPO, 'configs', 'classification', 'dccnext-b0_8xb128_in1k.py')
    message = one_message(run_tool([osp.join(REPO, 'tools', 'test.py'), config,
                                    'dccnext-b0_8xb128_in1'], cwd=tmp_path))
    assert 'did you mean dccnext-b0_8xb128_in1k' in message
    assert 'python tools/download_checkpoint.py --list' in message


@pytest.mark.parametrize('name,trained', [
    ('retinanet_dccnext-b2_fpn_1x_coco', 'work_dirs/retinanet_dccnext-b2_fpn_1x_coco/epoch_12.pth'),
    ('retinanet_dccnext_b2', 'work_dirs/retinanet_dccnext_b2/epoch_12.pth'),
    ('fpn_dccnext-b2_4xb8-40k_ade20k-512x512',
     'work_dirs/fpn_dccnext-b2_4xb8-40k_ade20k-512x512/iter_40000.pth'),
    ('dccnext-b2_8xb128_in1k', 'work_dirs/dccnext-b2_8xb128_in1k/epoch_300.pth'),
])
def test_unreleased_weights_name_the_checkpoint_that_training_writes(name, trained):
    with pytest.raises(NoWeightsError) as error:
        weights_of(lookup(name))
    message = str(error.value)
    assert f'which ends with {trained};' in message
    assert ('model.backbone.init_cfg.checkpoint=' in message) == name.startswith('dccnext')
