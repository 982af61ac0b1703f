# YOLOX-s 300e (mmdet 3.3.0) with FAME instead of SGD (lr 0.01, momentum 0.9, nesterov, wd 5e-4).
# The FAME paper's detection experiment is YOLOv5 (mmyolo, see docs/mmyolo.md); YOLOX is the
# closest recipe inside mmdet: CSPDarknet, Mosaic + MixUp, model EMA, 300 epochs.
# What an Adam-type optimizer changes in the recipe:
# - optimizer: lr 1e-3 and decoupled wd 0.05, mmdet's own AdamW recipe for a one-stage detector of
#   this kind (RTMDet: lr 0.004 at batch 256, linearly 1e-3 at this batch of 64; wd 0.05); SGD's
#   5e-4 as decoupled decay would be almost none. No decay on norms and biases, as upstream.
# - CosineAnnealingLR's eta_min is an absolute lr upstream (0.05 x SGD's 0.01 = 5e-4, half of
#   FAME's lr): 0.05 x FAME's lr.
# Kept, checked against an Adam-type optimizer: the 5-epoch quadratic warm-up and the last-15-epoch
# ConstantLR (factors on each group's lr), YOLOXModeSwitchHook (pipeline and L1 loss only),
# SyncNormHook, EMAHook (an EMA of the weights); no hook or scheduler here writes momentum.
_base_ = 'mmdet::yolox/yolox_s_8xb8-300e_coco.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

base_lr = 1e-3
max_epochs = 300
num_last_epochs = 15

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='FAME', lr=base_lr, betas=(0.9, 0.999), beta3=0.3, beta4=0.7,
        eps=1e-8, weight_decay=0.05))

param_scheduler = [
    dict(type='mmdet.QuadraticWarmupLR', by_epoch=True, begin=0, end=5,
         convert_to_iter_based=True),
    dict(type='CosineAnnealingLR', eta_min=base_lr * 0.05, begin=5,
         T_max=max_epochs - num_last_epochs, end=max_epochs - num_last_epochs, by_epoch=True,
         convert_to_iter_based=True),
    dict(type='ConstantLR', by_epoch=True, factor=1, begin=max_epochs - num_last_epochs,
         end=max_epochs),
]

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = _base_.custom_hooks + [
    dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
