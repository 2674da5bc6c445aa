"""Peak memory of one training iteration of a detector/segmentor config, on the CPU.

Each variant runs in its own subprocess (so one's allocations cannot hide another's), builds
the model from the config (pretrained init off), runs one untimed warm-up-free training
step (forward, backward, optimizer) on a random image with one ground-truth box, and reports
the growth of peak resident memory during that step. Ratios are against the first variant.

    python tools/analysis/benchmark_train_memory.py configs/detection/retinanet_dccnext_b2.py \
        --shape 800 1280 --variants base with_cp
"""
import argparse
import json
import resource
import subprocess
import sys
import time

VARIANTS = {
    'base': {},
    'with_cp': {'model.backbone.with_cp': True},
}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_one(config, shape, options):
    import torch
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper
    from mmengine.registry import init_default_scope

    import mmdccnext  # noqa: F401
    cfg = Config.fromfile(config)
    cfg.merge_from_dict({'model.backbone.init_cfg': None, **options})
    init_default_scope(cfg.default_scope)
    scope = cfg.default_scope
    registry = __import__(f'{scope}.registry', fromlist=['MODELS'])
    model = registry.MODELS.build(cfg.model)
    model.train()
    optim_wrapper = build_optim_wrapper(model, cfg.optim_wrapper)
    torch.manual_seed(0)
    h, w = shape
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    if scope == 'mmdet':
        from mmdet.structures import DetDataSample
        from mmengine.structures import InstanceData
        sample = DetDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             pad_shape=(h, w), scale_factor=(1., 1.)))
        sample.gt_instances = InstanceData(
            bboxes=torch.tensor([[w * .25, h * .25, w * .6, h * .7]]),
            labels=torch.tensor([0]))
        if 'mask' in str(cfg.model.get('roi_head', {}).get('mask_head', '')):
            from mmdet.structures.mask import BitmapMasks
            mask = torch.zeros(1, h, w, dtype=torch.uint8)
            mask[:, h // 4:int(h * .7), w // 4:int(w * .6)] = 1
            sample.gt_instances.masks = BitmapMasks(mask.numpy(), h, w)
    elif scope == 'mmseg':
        from mmengine.structures import PixelData
        from mmseg.structures import SegDataSample
        sample = SegDataSample(metainfo=dict(img_shape=(h, w), ori_shape=(h, w),
                                             pad_shape=(h, w)))
        sample.gt_sem_seg = PixelData(data=torch.randint(0, 150, (1, h, w)))
    else:
        raise SystemExit(f'config: default_scope {scope} not supported here')
    data = dict(inputs=[image], data_samples=[sample])
    before = peak_rss_mib()
    start = time.perf_counter()
    losses = model.train_step(data, optim_wrapper)
    seconds = time.perf_counter() - start
    return dict(peak_growth_mib=peak_rss_mib() - before, rss_before_mib=before,
                seconds=seconds, loss=float(sum(v for k, v in losses.items() if 'loss' in k)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config')
    parser.add_argument('--shape', nargs=2, type=int, default=[800, 1280], metavar=('H', 'W'))
    parser.add_argument('--variants', nargs='+', default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument('--threads', type=int, default=None)
    parser.add_argument('--child', help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_one(args.config, args.shape, VARIANTS[args.child])))
        return
    results = {}
    for variant in args.variants:
        cmd = [sys.executable, __file__, args.config, '--shape', *map(str, args.shape),
               '--child', variant] + (['--threads', str(args.threads)] if args.threads else [])
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f'{variant} failed:\n{out.stderr[-3000:]}')
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    base = results[args.variants[0]]
    print(f'{args.config}, one training iteration, batch 1, {args.shape[0]}x{args.shape[1]}, CPU')
    print('| variant | peak memory growth (MiB) | ratio | step time (s) | ratio |')
    print('|---|---|---|---|---|')
    for variant, r in results.items():
        print(f'| {variant} | {r["peak_growth_mib"]:.0f} | '
              f'{r["peak_growth_mib"] / base["peak_growth_mib"]:.2f} | {r["seconds"]:.1f} | '
              f'{r["seconds"] / base["seconds"]:.2f} |')


if __name__ == '__main__':
    main()
