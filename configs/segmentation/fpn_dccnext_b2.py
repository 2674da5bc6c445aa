# Short name of fpn_dccnext-b2_4xb8-40k_ade20k-512x512.py.
_base_ = ['./fpn_dccnext-b2_4xb8-40k_ade20k-512x512.py']
