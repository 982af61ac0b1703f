# RetinaNet R50-FPN 1x (mmdet 3.3.0) with FAME instead of SGD.
# Upstream: SGD lr 0.01, momentum 0.9, wd 1e-4. FAME hyper-parameters are this project's choice
# (AdamW-like: lr 1e-4, decoupled wd 0.05, no decay on norm layers, as mmdet's AdamW R50 variants),
# not the paper's; see configs/README.md. The 1x schedule (500-iter linear warm-up, x0.1 at
# epochs 8 and 11) is kept.
_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True,
        type='FAME',
        lr=1e-4,
        betas=(0.9, 0.999),
        beta3=0.3,
        beta4=0.7,
        eps=1e-8,
        weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0., bypass_duplicate=True))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
