# The B2 recipe (fpn_dccnext-b2_4xb8-40k_ade20k-512x512.py) with DCCNeXt-B1 (not in the paper).
_base_ = ['./fpn_dccnext-b2_4xb8-40k_ade20k-512x512.py']

model = dict(
    backbone=dict(
        arch='b1',
        drop_path_rate=0.1,
        init_cfg=dict(checkpoint='zoo://dccnext-b1_8xb128_in1k')),
    neck=dict(in_channels=[48, 96, 240, 384]))
