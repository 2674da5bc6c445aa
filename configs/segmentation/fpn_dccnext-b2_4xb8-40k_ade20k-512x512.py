# Semantic FPN with a DCCNeXt-B2 backbone on ADE20K (paper Table 4: 27.8 M params, 43.3 G
# FLOPs at 512x512, 44.5 mIoU). Paper recipe: 512x512 random resize + crop, 40k iterations,
# total batch 32, AdamW lr 1e-4, poly decay (power 0.9), test with the shorter side at 512,
# new layers Xavier-initialised. Total batch 32 = 4 GPUs x 8 images.
_base_ = [
    'mmseg::_base_/models/fpn_r50.py',
    'mmseg::_base_/datasets/ade20k.py',
    'mmseg::_base_/default_runtime.py',
    'mmseg::_base_/schedules/schedule_40k.py',
]
custom_imports = dict(imports=['mmdccnext'], allow_failed_imports=False)

crop_size = (512, 512)
data_preprocessor = dict(size=crop_size)
pretrained = 'zoo://dccnext-b2_8xb128_in1k'
xavier = dict(type='Xavier', layer='Conv2d', distribution='uniform')
model = dict(
    data_preprocessor=data_preprocessor,
    pretrained=None,  # the base's ResNet weights; ours come through backbone.init_cfg
    backbone=dict(
        _delete_=True,
        type='mmdccnext.DCCNeXt',
        arch='b2',
        out_indices=(0, 1, 2, 3),
        drop_path_rate=0.2,
        gap_before_final_norm=False,
        # the maps to the neck channels-last, as the backbone computes them (no copy; the
        # neck and head run channels-last, faster on the CPU). Not with RoI heads: MMCV's
        # RoIAlign reads NCHW memory (the Mask R-CNN configs keep the default, False)
        out_channels_last=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained, prefix='backbone.')),
    neck=dict(in_channels=[64, 128, 320, 512], init_cfg=xavier),
    decode_head=dict(num_classes=150, init_cfg=xavier))

train_dataloader = dict(batch_size=8, num_workers=4)
val_dataloader = dict(batch_size=1, num_workers=4)
test_dataloader = val_dataloader

optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-4, betas=(0.9, 0.999), weight_decay=1e-4),
    paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0., flat_decay_mult=0.))
param_scheduler = [
    dict(type='PolyLR', power=0.9, eta_min=0.0, begin=0, end=40000, by_epoch=False)
]
# lr 1e-4 is for 32 images per iteration; `--auto-scale-lr` rescales for other totals.
auto_scale_lr = dict(enable=False, base_batch_size=32)

# kill-safe checkpoints: temporary file + rename, outdated ones removed afterwards
default_hooks = dict(checkpoint=dict(type='mmdccnext.AtomicCheckpointHook'))
