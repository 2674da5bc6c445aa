"""`make demo`: train and evaluate a DCCNeXt-B0 RetinaNet on synthetic COCO, on the CPU.

Steps: generate the synthetic COCO set if absent → train with ``tools/train.py`` (the
project's entry, MMEngine's Runner) → evaluate the final checkpoint with the real COCO
evaluator (pycocotools) through ``tools/test.py`` → draw the predictions on one val image
→ print a summary.
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


def _run(cmd, repo):
    print('[demo] $ ' + ' '.join(cmd), flush=True)
    subprocess.run(cmd, cwd=repo, check=True)


def draw_predictions(config, checkpoint, image, out_file, score_thr=0.3):
    from mmdet.apis import inference_detector, init_detector
    from mmdet.registry import VISUALIZERS
    from mmengine.config import Config

    import mmdccnext  # noqa: F401
    cfg = Config.fromfile(config)
    model = init_detector(cfg, checkpoint, device='cpu')
    result = inference_detector(model, image)
    visualizer = VISUALIZERS.build(dict(type='DetLocalVisualizer', name=f'demo-{time.time()}'))
    visualizer.dataset_meta = model.dataset_meta
    import mmcv
    img = mmcv.imread(image, channel_order='rgb')
    visualizer.add_datasample('prediction', img, result, draw_gt=False, show=False,
                              pred_score_thr=score_thr, out_file=out_file)
    return int((result.pred_instances.scores >= score_thr).sum())


def main(repo, work_dir='work_dirs/demo', extra_train_args=()):
    python = sys.executable
    os.chdir(repo)  # the configs' data roots are relative to the repository
    start = time.time()
    _run([python, 'tools/misc/generate_synthetic_data.py', '--task', 'coco', '--out',
          osp.dirname(DATA_ROOT)], repo)
    _run([python, 'tools/train.py', DEMO_CONFIG, '--work-dir', work_dir, *extra_train_args],
         repo)
    trained = time.time()
    with open(osp.join(repo, work_dir, 'last_checkpoint')) as f:
        checkpoint = f.read().strip()
    # Evaluation in this process, through the same entry as tools/test.py.
    print(f'[demo] $ python tools/test.py {DEMO_CONFIG} {checkpoint}', flush=True)
    metrics = test_from_args(argparse.Namespace(
        config=osp.join(repo, DEMO_CONFIG), checkpoint=checkpoint, cfg_options={},
        work_dir=osp.join(repo, work_dir, 'test'), launcher='none', local_rank=0,
        show_dir=None, out=None))
    image = sorted(glob.glob(osp.join(repo, DATA_ROOT, 'val2017', '*.jpg')))[0]
    picture = osp.join(repo, work_dir, 'demo_prediction.png')
    n_boxes = draw_predictions(osp.join(repo, DEMO_CONFIG), checkpoint, image, picture)
    logs = sorted(glob.glob(osp.join(repo, work_dir, '*', '*.log')))
    print('\n[demo] ===== summary =====')
    print(f'[demo] trained DCCNeXt-B0 RetinaNet on synthetic COCO in {trained - start:.0f} s '
          f'(CPU, {os.cpu_count()} cores)')
    print(f'[demo] val bbox AP50 = {metrics.get("coco/bbox_mAP_50", float("nan")):.3f}, '
          f'AP = {metrics.get("coco/bbox_mAP", float("nan")):.3f} (pycocotools)')
    print(f'[demo] checkpoint: {checkpoint}')
    print(f'[demo] train log:  {logs[0] if logs else "-"}')
    print(f'[demo] picture:    {picture} ({n_boxes} boxes with score >= 0.3)')
    return metrics
