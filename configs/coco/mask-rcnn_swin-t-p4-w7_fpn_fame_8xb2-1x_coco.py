# Mask R-CNN Swin-T FPN 1x (mmdet 3.3.0) with FAME instead of AdamW. Only the optimizer type
# changes: lr 1e-4, betas (0.9, 0.999), wd 0.05, no decay on norms and position embeddings, and the
# 1x schedule are inherited from the upstream AdamW recipe.
_base_ = 'mmdet::swin/mask-rcnn_swin-t-p4-w7_fpn_1x_coco.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(type='FAME'))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
