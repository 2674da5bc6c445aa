# The config in _base_ with mixed-precision training (AmpOptimWrapper: needs a CUDA, NPU
# or MLU device; on CPU MMEngine refuses it).
_base_ = ['./retinanet_dccnext-b2_fpn_1x_coco.py']

optim_wrapper = dict(type='AmpOptimWrapper', loss_scale='dynamic')
