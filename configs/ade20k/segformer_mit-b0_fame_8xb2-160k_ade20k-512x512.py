# SegFormer MiT-B0 160k on ADE20K (mmseg 1.2.2) with FAME instead of AdamW. Only the optimizer type
# changes: lr 6e-5, betas (0.9, 0.999), wd 0.01, head lr_mult 10, no decay on norms/pos_block, and
# the warm-up + linear-poly schedule are inherited from the upstream AdamW recipe.
_base_ = 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(type='FAME'))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
