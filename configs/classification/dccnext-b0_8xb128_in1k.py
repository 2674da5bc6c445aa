# DCCNeXt-B0 on ImageNet-1K; the recipe of dccnext-b2_8xb128_in1k.py (8 x 128 = 1024
# images per iteration, lr 1e-3) with the B0 backbone and head.
_base_ = ['./dccnext-b2_8xb128_in1k.py']

model = dict(
    backbone=dict(arch='b0', drop_path_rate=0.1),
    # hidden width 1280 = 5 x C (not 4 x C as in B1-B4): reproduces the 5.5 M of Table 1
    head=dict(in_channels=256, mid_channels=1280),
)
