# RTMDet-tiny 300e (mmdet 3.3.0) with FAME instead of AdamW. Only the optimizer type changes:
# lr 0.004, wd 0.05, no decay on norm/bias, the warm-up + cosine schedule and the EMA hook are
# inherited from the upstream AdamW recipe.
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(type='FAME'))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = _base_.custom_hooks + [
    dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
