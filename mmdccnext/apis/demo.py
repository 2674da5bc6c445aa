"""`make demo`: train and evaluate a DCCNeXt-B0 RetinaNet on synthetic COCO, on the CPU.

Steps: generate the synthetic COCO set if absent → train with ``tools/train.py`` (the
project's entry, MMEngine's Runner) → evaluate the final checkpoint with the real COCO
evaluator (pycocotools) through ``tools/test.py`` → draw ground truth beside predictions for
a few val images → print a summary.
"""
import argparse
import glob
import os
import os.path as osp
import subprocess
import sys
import time

from .runner import test_from_args

DEMO_CONFIG = 'configs/detection/retinanet_dccnext-b0_fpn_synthetic.py'
DATA_ROOT = 'data/synthetic/coco'
PICTURE_IMAGES = 4  # val images in the demo picture
# The demo evaluates the final checkpoint once, afterwards, through tools/test.py's entry: the
# training run's own end-of-training validation would score the same weights on the same 100
# images a second time.
TRAIN_WITHOUT_VAL = ('--cfg-options', 'val_cfg=None', 'val_dataloader=None', 'val_evaluator=None')


def _run(cmd, repo):
    print('[demo] $ ' + ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=repo, check=True)


def draw_predictions(config, checkpoint, images, ann_file, out_file, scale=3, score_thr=0.3):
    """One picture of several images: ground truth (left) beside the predictions (right).

    Each image is scaled up ``scale`` times (nearest neighbour, boxes scaled alike) so that the
    labels stay readable on the small synthetic images; the images are stacked as rows of one
    PNG, written atomically to ``out_file``. Returns the number of predicted boxes with score
    ``>= score_thr`` in each image.
    """
    import json

    import cv2
    import mmcv
    import numpy as np
    import torch
    from mmdet.apis import inference_detector
    from mmdet.registry import VISUALIZERS
    from mmengine.structures import InstanceData

    from mmdccnext.utils.fileio import write_file_atomic
    from .inference import init_model
    model = init_model(config, checkpoint, device='cpu')
    classes = model.dataset_meta['classes']
    with open(ann_file) as f:
        coco = json.load(f)
    label_of = {c['id']: classes.index(c['name']) for c in coco['categories']}
    image_id = {im['file_name']: im['id'] for im in coco['images']}
    visualizer = VISUALIZERS.build(dict(type='DetLocalVisualizer', name=f'demo-{time.time()}'))
    visualizer.dataset_meta = model.dataset_meta
    rows, counts = [], []
    for image in images:
        result = inference_detector(model, image)
        anns = [a for a in coco['annotations'] if a['image_id'] == image_id[osp.basename(image)]]
        boxes = torch.tensor([[x, y, x + w, y + h] for x, y, w, h in (a['bbox'] for a in anns)],
                             dtype=torch.float32).reshape(-1, 4)
        result.gt_instances = InstanceData(
            bboxes=boxes * scale, labels=torch.tensor([label_of[a['category_id']] for a in anns]))
        result.pred_instances.bboxes = result.pred_instances.bboxes * scale
        img = mmcv.imrescale(mmcv.imread(image, channel_order='rgb'), scale,
                             interpolation='nearest')
        visualizer.add_datasample(osp.basename(image), img, result, draw_gt=True,
                                  draw_pred=True, show=False, pred_score_thr=score_thr)
        rows.append(visualizer.get_image())
        counts.append(int((result.pred_instances.scores >= score_thr).sum()))
    gap = np.full((4 * scale, rows[0].shape[1], 3), 255, np.uint8)
    picture = np.concatenate([part for row in rows for part in (row, gap)][:-1])
    ok, png = cv2.imencode('.png', picture[..., ::-1])  # RGB -> BGR for OpenCV
    if not ok:
        raise RuntimeError(f'could not encode the demo picture {out_file} as PNG')
    write_file_atomic(out_file, png.tobytes())
    return counts


def latest_log(work_dir):
    """The newest training log under ``work_dir`` (earlier demos' runs stay beside it), or
    None."""
    logs = glob.glob(osp.join(work_dir, '*', '*.log'))
    return max(logs, key=osp.getmtime) if logs else None


def train_command(python, work_dir, extra_train_args=()):
    """The demo's ``tools/train.py`` command line; ``extra_train_args`` come last, so that a
    user's ``--cfg-options`` add to the demo's (MMEngine merges repeated ``--cfg-options``)."""
    return [python, 'tools/train.py', DEMO_CONFIG, '--work-dir', work_dir, *TRAIN_WITHOUT_VAL,
            *extra_train_args]


def main(repo, work_dir='work_dirs/demo', extra_train_args=()):
    """Run the demo in ``repo``, the working directory (the configs' data roots are relative
    to the repository: ``tools/misc/demo.py`` changes into it)."""
    if osp.realpath(os.getcwd()) != osp.realpath(repo):
        raise RuntimeError(f'the demo runs in the repository {repo}: the data roots of its '
                           f'config are relative to it (working directory: {os.getcwd()})')
    python = sys.executable
    start = time.time()
    _run([python, 'tools/misc/generate_synthetic_data.py', '--task', 'coco', '--out',
          osp.dirname(DATA_ROOT)], repo)
    _run(train_command(python, work_dir, extra_train_args), repo)
    trained = time.time()
    with open(osp.join(repo, work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    # Evaluation in this process, through the same entry as tools/test.py.
    print(f'[demo] $ python tools/test.py {DEMO_CONFIG} {checkpoint}', flush=True)
    metrics = test_from_args(argparse.Namespace(
        config=osp.join(repo, DEMO_CONFIG), checkpoint=checkpoint, cfg_options={},
        work_dir=osp.join(repo, work_dir, 'test'), launcher='none', local_rank=0,
        show_dir=None, out=None))
    evaluated = time.time()
    images = sorted(glob.glob(osp.join(repo, DATA_ROOT, 'val2017', '*.jpg')))[:PICTURE_IMAGES]
    picture = osp.join(repo, work_dir, 'demo_prediction.png')
    counts = draw_predictions(
        osp.join(repo, DEMO_CONFIG), checkpoint, images,
        osp.join(repo, DATA_ROOT, 'annotations', 'instances_val2017.json'), picture)
    log = latest_log(osp.join(repo, work_dir))
    print('\n[demo] ===== summary =====')
    print(f'[demo] trained DCCNeXt-B0 RetinaNet on synthetic COCO in {trained - start:.0f} s '
          f'with the data (CPU, {os.cpu_count()} cores); evaluated in {evaluated - trained:.0f} '
          f's; {time.time() - start:.0f} s in all')
    print(f'[demo] val bbox AP50 = {metrics.get("coco/bbox_mAP_50", float("nan")):.3f}, '
          f'AP = {metrics.get("coco/bbox_mAP", float("nan")):.3f} (pycocotools)')
    print(f'[demo] checkpoint: {checkpoint}')
    print(f'[demo] train log:  {log or "-"}')
    print(f'[demo] picture:    {picture} ({len(images)} val images, ground truth left, '
          f'predictions right; {sum(counts)} boxes with score >= 0.3)')
    return metrics
