# retinanet_dccnext-b2_fpn_1x_coco.py with the DCCNeXt-B4 backbone (not in the paper's tables).
_base_ = ['./retinanet_dccnext-b2_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='b4',
        drop_path_rate=0.4,
        init_cfg=dict(checkpoint='zoo://dccnext-b4_8xb128_in1k')),
    neck=dict(in_channels=[192, 384, 768]))
