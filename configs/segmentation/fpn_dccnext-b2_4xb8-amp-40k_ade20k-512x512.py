# The config in _base_ with mixed-precision training (AmpOptimWrapper: needs a CUDA, NPU
# or MLU device; on CPU MMEngine refuses it).
_base_ = ['./fpn_dccnext-b2_4xb8-40k_ade20k-512x512.py']

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
