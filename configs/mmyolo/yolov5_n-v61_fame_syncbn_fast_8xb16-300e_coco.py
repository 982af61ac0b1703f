# YOLOv5-n (mmyolo 0.6.0) with FAME instead of SGD (lr 0.01, momentum 0.937, nesterov, wd 5e-4
# scaled by mmyolo's constructor). The FAME paper's own detection experiment. Needs mmyolo, which
# refuses mmcv >= 2.1.0 at import: see docs/mmyolo.md. Each change, and why:
# - optimizer: replaced (_delete_: SGD's momentum and nesterov must not reach FAME), keeping
#   batch_size_per_gpu, which YOLOv5OptimizerConstructor reads; lr 1e-3, YOLOv5's own lr0 for
#   Adam (its hyp files: "SGD=1E-2, Adam=1E-3");
#   weight decay decoupled, 0.025 written for an effective 0.05: the constructor multiplies it
#   by the total batch / 64 (2 at 8x16) and gives it to the conv weights only (SGD's 5e-4 as
#   decoupled decay would be almost none).
# - YOLOv5ParamSchedulerHook: warmup_bias_lr 0 (0.1, for SGD's lr 0.01, is 100x FAME's lr); its
#   linear decay to lr_factor x lr is kept. It writes momentum only into groups that have it:
#   FAME's betas are untouched.
# Kept: the EMA of the weights, the data pipeline, the 300-epoch schedule.
_base_ = 'mmyolo::yolov5/yolov5_n-v61_syncbn_fast_8xb16-300e_coco.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='FAME', lr=1e-3, betas=(0.9, 0.999), beta3=0.3, beta4=0.7,
        eps=1e-8, weight_decay=0.025,
        batch_size_per_gpu={{_base_.train_batch_size_per_gpu}}))

default_hooks = dict(param_scheduler=dict(warmup_bias_lr=0.0))

# mmengine adds `_scope_` to every typed dict of an `mmyolo::` base, and its Runner passes the rest
# of the collate dict to the function as keywords: redefined here, yolov5_collate gets none.
train_dataloader = dict(collate_fn=dict(_delete_=True, type='yolov5_collate'))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = _base_.custom_hooks + [
    dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
