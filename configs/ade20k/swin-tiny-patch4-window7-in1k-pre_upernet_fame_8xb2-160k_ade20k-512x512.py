# UperNet Swin-T (ImageNet-1k pre-trained) 160k on ADE20K (mmseg 1.2.2) with FAME instead of AdamW.
# Only the optimizer type changes: lr 6e-5, betas (0.9, 0.999), wd 0.01, no decay on norms and
# position tables, and the warm-up + linear-poly schedule are inherited from the upstream recipe.
_base_ = 'mmseg::swin/swin-tiny-patch4-window7-in1k-pre_upernet_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(type='FAME'))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
