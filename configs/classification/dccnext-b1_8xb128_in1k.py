# DCCNeXt-B1 on ImageNet-1K; the recipe of dccnext-b2_8xb128_in1k.py (8 x 128 = 1024
# images per iteration, lr 1e-3) with the B1 backbone and head.
_base_ = ['./dccnext-b2_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='b1', drop_path_rate=0.1),
    head=dict(in_channels=384, mid_channels=1536),  # 4 x C
)
