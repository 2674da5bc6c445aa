# retinanet_dccnext-b2_fpn_1x_coco.py with the DCCNeXt-B3 backbone (not in the paper's tables).
_base_ = ['./retinanet_dccnext-b2_fpn_1x_coco.py']

model = dict(
    backbone=dict(
        arch='b3',
        drop_path_rate=0.3,
        init_cfg=dict(checkpoint='zoo://dccnext-b3_8xb128_in1k')),
    neck=dict(in_channels=[192, 384, 576]))
