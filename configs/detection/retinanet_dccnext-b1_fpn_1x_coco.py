# retinanet_dccnext-b2_fpn_1x_coco.py with the DCCNeXt-B1 backbone (not in the paper's tables).
_base_ = ['./retinanet_dccnext-b2_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='b1',
        drop_path_rate=0.1,
        init_cfg=dict(checkpoint='zoo://dccnext-b1_8xb128_in1k')),
    neck=dict(in_channels=[96, 240, 384]))
