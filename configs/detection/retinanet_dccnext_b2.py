# Short name of retinanet_dccnext-b2_fpn_1x_coco.py.
_base_ = ['./retinanet_dccnext-b2_fpn_1x_coco.py']
