# The AdamW twin of segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py: only the optimizer
# differs (same lr, betas, weight decay, paramwise rules, schedule, clipping, data and seed).
_base_ = './segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py'

optim_wrapper = dict(optimizer=dict(type='AdamW'))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
