# Mask R-CNN + FPN with a DCCNeXt-B2 backbone, 1x schedule on COCO 2017 (paper Table 3:
# 43.7 M params, 281.1 G FLOPs at 1280x800, 44.6 box AP / 40.6 mask AP).
# Total batch 16 (8 GPUs x 2 images).
_base_ = [
    'mmdet::_base_/models/mask-rcnn_r50_fpn.py',
    'mmdet::_base_/datasets/coco_instance.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    'mmdet::_base_/default_runtime.py',
]
custom_imports = dict(imports=['mmdccnext'], allow_failed_imports=False)

pretrained = 'zoo://dccnext-b2_8xb128_in1k'
model = dict(
    backbone=dict(
        _delete_=True,
        type='mmdccnext.DCCNeXt',
        arch='b2',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        gap_before_final_norm=False,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512]))

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.))

auto_scale_lr = dict(enable=False, base_batch_size=16)

# kill-safe checkpoints: temporary file + rename, outdated ones removed afterwards
default_hooks = dict(checkpoint=dict(type='mmdccnext.AtomicCheckpointHook'))
