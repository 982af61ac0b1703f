# The AdamW twin of retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py: only the optimizer differs
# (same lr, betas, weight decay, schedule, clipping, data and seed).
_base_ = './retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py'

optim_wrapper = dict(optimizer=dict(type='AdamW'))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
