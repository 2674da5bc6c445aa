# DCCNeXt-B2 on ImageNet-1K, the paper's recipe (DeiT settings): 224x224, 300 epochs,
# AdamW, cosine schedule with 20 linear warm-up epochs, RandAugment, Mixup, CutMix,
# Random Erasing, label smoothing, stochastic depth, weight decay, no EMA.
_base_ = [
    'mmpretrain::_base_/datasets/imagenet_bs64_swin_224.py',
    'mmpretrain::_base_/schedules/imagenet_bs1024_adamw_swin.py',
    'mmpretrain::_base_/default_runtime.py',
]

custom_imports = dict(imports=['mmdccnext'], allow_failed_imports=False)

# model settings
model = dict(
    type='ImageClassifier',
    backbone=dict(
        type='mmdccnext.DCCNeXt',
        arch='b2',
        out_indices=(3, ),
        # not given in the paper: DeiT's default (0.1) for B0-B2, more for B3/B4
        drop_path_rate=0.1,
        layer_scale_init_value=1e-6,
        gap_before_final_norm=True),
    head=dict(
        type='mmdccnext.DCCNeXtClsHead',
        num_classes=1000,
        in_channels=512,
        mid_channels=2048,  # 4 x C
        loss=dict(type='LabelSmoothLoss', label_smooth_val=0.1, mode='original'),
        cal_acc=False),
    # Mixup (alpha 0.8) or CutMix (alpha 1.0), one of the two per batch, as in DeiT
    train_cfg=dict(augments=[dict(type='Mixup', alpha=0.8),
                             dict(type='CutMix', alpha=1.0)]),
)

# data: MMPretrain's ImageNet layout at data/imagenet (train/, val/, meta/{train,val}.txt);
# RandomResizedCrop 224, flip, RandAugment (rand-m9-mstd0.5), RandomErasing 0.25.
# 8 GPUs x 128 images = 1024 images per iteration.
train_dataloader = dict(batch_size=128)
val_dataloader = dict(batch_size=128)
test_dataloader = val_dataloader

# schedule: lr 5e-4 x 1024 / 512 = 1e-3 at the total batch size 1024 (DeiT scaling);
# weight decay 0.05, none on norms, biases and layer scale; no gradient clipping.
optim_wrapper = dict(
    optimizer=dict(
        type='AdamW', lr=5e-4 * 1024 / 512, weight_decay=0.05, eps=1e-8, betas=(0.9, 0.999)),
    paramwise_cfg=dict(
        _delete_=True, norm_decay_mult=0.0, bias_decay_mult=0.0, flat_decay_mult=0.0),
    clip_grad=None,
)
# 20 warm-up epochs (linear, from lr x 1e-3), then cosine to 1e-5, 300 epochs in total
param_scheduler = [
    dict(type='LinearLR', start_factor=1e-3, by_epoch=True, end=20, convert_to_iter_based=True),
    dict(
        type='CosineAnnealingLR',
        eta_min=1e-5,
        by_epoch=True,
        begin=20,
        end=300,
        convert_to_iter_based=True),
]
train_cfg = dict(by_epoch=True, max_epochs=300, val_interval=1)

# `--auto-scale-lr` rescales lr linearly from the 1024 images per iteration above.
auto_scale_lr = dict(base_batch_size=1024)

# kill-safe checkpoints: temporary file + rename, outdated ones removed afterwards
default_hooks = dict(checkpoint=dict(type='mmdccnext.AtomicCheckpointHook'))
