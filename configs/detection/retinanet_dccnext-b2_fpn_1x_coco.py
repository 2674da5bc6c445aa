# RetinaNet + FPN with a DCCNeXt-B2 backbone, 1x schedule on COCO 2017 (paper Table 3:
# 33.8 M params, 247.1 G FLOPs at 1280x800, 43.0 AP). Total batch 16 (8 GPUs x 2 images).
_base_ = [
    'mmdet::_base_/models/retinanet_r50_fpn.py',
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmdccnext'], allow_failed_imports=False)

# ImageNet-1K weights of the backbone, by model-zoo name (docs/en/model_zoo.md).
pretrained = 'zoo://dccnext-b2_8xb128_in1k'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdccnext.DCCNeXt',
        arch='b2',
        # RetinaNet's FPN starts at stride 8: stage 1 (stride 4) is not an output
        out_indices=(1, 2, 3),
        drop_path_rate=0.2,
        gap_before_final_norm=False,
        # the maps to the neck channels-last, as the backbone computes them (no copy; the
        # neck and head run channels-last, faster on the CPU). Not with RoI heads: MMCV's
        # RoIAlign reads NCHW memory (the Mask R-CNN configs keep the default, False)
        out_channels_last=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[128, 320, 512], start_level=0))

# AdamW as usual for this class of backbone (PVT, Swin, ConvNeXt detectors); no weight decay
# on norms, biases and layer scale.
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.))

# lr 1e-4 is for 16 images per iteration; `--auto-scale-lr` rescales for other totals.
auto_scale_lr = dict(enable=False, base_batch_size=16)

# kill-safe checkpoints: temporary file + rename, outdated ones removed afterwards
default_hooks = dict(checkpoint=dict(type='mmdccnext.AtomicCheckpointHook'))
