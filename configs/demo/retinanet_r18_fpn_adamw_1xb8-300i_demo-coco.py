# The AdamW twin of retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py: only the optimizer differs
# (same lr, betas, weight decay, schedule, clipping, data and seed).
_base_ = './retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py'

optim_wrapper = dict(optimizer=dict(type='AdamW'))
