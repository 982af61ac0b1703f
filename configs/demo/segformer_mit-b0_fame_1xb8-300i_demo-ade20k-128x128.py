# SegFormer MiT-B0, random init, trained with FAME on the synthetic shapes demo data in ADE20K
# layout (`python -m mmfame.datasets.demo --out data/demo`) at 128x128. CPU: a few minutes.
# Its AdamW twin `segformer_mit-b0_adamw_1xb8-300i_demo-ade20k-128x128.py` differs only in the
# optimizer. The labels use ADE20K ids 1..3 (0 = background, ignored; mmseg's tables name them
# 'wall', 'building', 'sky'): the 150-class head is kept and mIoU averages over the classes that
# occur in the ground truth or the predictions.
_base_ = 'mmseg::segformer/segformer_mit-b0_8xb2-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

data_root = 'data/demo/ade/ADEChallengeData2016'
crop_size = (128, 128)
max_iters = 300
norm_cfg = dict(type='BN', requires_grad=True)  # SyncBN needs a distributed GPU run

model = dict(
    data_preprocessor=dict(size=crop_size),
    backbone=dict(init_cfg=None),  # random init: nothing downloads
    decode_head=dict(norm_cfg=norm_cfg))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='RandomResize', scale=crop_size, ratio_range=(1.0, 1.5), keep_ratio=True),
    dict(type='RandomCrop', crop_size=crop_size),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackSegInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=crop_size, keep_ratio=True),
    dict(type='LoadAnnotations', reduce_zero_label=True),
    dict(type='PackSegInputs')
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(data_root=data_root, pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=1,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(data_root=data_root, pipeline=test_pipeline))
test_dataloader = val_dataloader

train_cfg = dict(type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
# Warm up for 30 iterations, then cosine decay to 5 % at max_iters. tools/demo.py --iters N
# sets train_cfg.max_iters to N and scales every scheduler's begin/end by N / max_iters.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min_ratio=0.05)
]
# From scratch the upstream recipe's lr (6e-5, head x10) is far too small for 300 iterations.
# FAME's beta3=0.3, beta4=0.7 defaults apply; lr, betas and weight decay match the AdamW twin.
optim_wrapper = dict(
    optimizer=dict(type='FAME', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.01),
    paramwise_cfg=dict(
        custom_keys={
            'pos_block': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.),
            'head': dict(lr_mult=1.)
        }),
    clip_grad=dict(max_norm=10, norm_type=2))

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10, log_metric_by_epoch=False),
    # Keep 2: mmengine deletes the oldest kept checkpoint before writing the next one, so with 1 a
    # kill during that write would leave nothing to resume from.
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2))
log_processor = dict(type='LogProcessor', window_size=10, by_epoch=False)
env_cfg = dict(
    cudnn_benchmark=False,
    mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
    dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
