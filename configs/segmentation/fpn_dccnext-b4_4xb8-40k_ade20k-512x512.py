# The B2 recipe (fpn_dccnext-b2_4xb8-40k_ade20k-512x512.py) with DCCNeXt-B4 (not in the paper).
_base_ = ['./fpn_dccnext-b2_4xb8-40k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='b4',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='zoo://dccnext-b4_8xb128_in1k')),
    neck=dict(in_channels=[96, 192, 384, 768]))
