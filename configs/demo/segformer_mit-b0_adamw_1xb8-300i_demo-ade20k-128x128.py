# The AdamW twin of segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py: only the optimizer
# differs (same lr, betas, weight decay, paramwise rules, schedule, clipping, data and seed).
_base_ = './segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py'

optim_wrapper = dict(optimizer=dict(type='AdamW'))
