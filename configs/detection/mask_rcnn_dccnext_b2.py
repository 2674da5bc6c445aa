# Short name of mask-rcnn_dccnext-b2_fpn_1x_coco.py.
_base_ = ['./mask-rcnn_dccnext-b2_fpn_1x_coco.py']
