# DINO-4scale R50 12e (mmdet 3.3.0) with FAME instead of AdamW. Only the optimizer type changes:
# lr 1e-4, wd 1e-4, grad-norm clip 0.1, backbone lr_mult 0.1 and the step schedule are inherited
# from the upstream AdamW recipe.
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(type='FAME'))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
