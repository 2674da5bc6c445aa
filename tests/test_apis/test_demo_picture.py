"""The `make demo` picture: ground truth beside predictions for several val images, scaled up."""
import glob
import os.path as osp
import sys

import cv2
import torch

from mmdccnext.apis import init_model
from mmdccnext.apis.demo import DEMO_CONFIG, draw_predictions

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, osp.join(REPO, 'tests', 'test_integration'))
from synthetic_helpers import TINY, make_tiny_datasets, tiny_config  # noqa: E402


def test_picture_rows_hold_ground_truth_and_predictions_scaled_up(tmp_path):
    root = make_tiny_datasets(tmp_path / 'data')
    # every box of the untrained model is kept (its scores are all near the 0.01 prior)
    cfg = tiny_config(osp.relpath(osp.join(REPO, DEMO_CONFIG), osp.join(REPO, 'configs')), root,
                      tmp_path / 'work', **{'model.test_cfg.score_thr': 0.0})
    config = str(tmp_path / 'demo.py')
    cfg.dump(config)
    # an untrained model, saved the way a training run saves it (classes in the meta)
    model = init_model(config, seed=0)
    checkpoint = str(tmp_path / 'untrained.pth')
    torch.save({'state_dict': model.state_dict(),
                'meta': {'dataset_meta': {'classes': cfg.metainfo['classes']}}}, checkpoint)
    images = sorted(glob.glob(str(root / 'coco' / 'val2017' / '*.jpg')))[:3]
    out = tmp_path / 'pictures' / 'demo.png'
    counts = draw_predictions(config, checkpoint, images,
                              str(root / 'coco' / 'annotations' / 'instances_val2017.json'),
                              str(out), scale=3, score_thr=0.0)
    assert len(counts) == 3 and all(n > 0 for n in counts)
    picture = cv2.imread(str(out))
    width, height = TINY['coco']['image_size']
    # three rows of (ground truth | predictions), each image 3x, 12-pixel white gaps between
    assert picture.shape == (3 * 3 * height + 2 * 12, 2 * 3 * width, 3)
    gap = picture[3 * height:3 * height + 12]
    assert (gap == 255).all()
    row = picture[:3 * height]
    assert not (row[:, :3 * width] == row[:, 3 * width:]).all(), 'the two halves differ'
