# retinanet_dccnext-b2_fpn_1x_coco.py with the DCCNeXt-B0 backbone (not in the paper's tables).
_base_ = ['./retinanet_dccnext-b2_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='b0',
        drop_path_rate=0.1,
        init_cfg=dict(checkpoint='zoo://dccnext-b0_8xb128_in1k')),
    neck=dict(in_channels=[64, 160, 256]))
