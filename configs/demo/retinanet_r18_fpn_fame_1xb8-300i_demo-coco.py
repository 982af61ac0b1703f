# RetinaNet (ResNet-18, slim FPN/head), random init, trained with FAME on the synthetic shapes
# demo data in COCO layout (`python -m mmfame.datasets.demo --out data/demo`). CPU: a few minutes.
# Its AdamW twin `retinanet_r18_fpn_adamw_1xb8-300i_demo-coco.py` differs only in the optimizer.
_base_ = 'mmdet::retinanet/retinanet_r18_fpn_1x_coco.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

data_root = 'data/demo/coco/'
metainfo = dict(
    classes=('rectangle', 'ellipse', 'triangle'),
    palette=[(220, 20, 60), (0, 160, 80), (30, 60, 230)])
img_scale = (128, 128)
max_iters = 300

model = dict(
    backbone=dict(frozen_stages=-1, norm_eval=False, init_cfg=None),  # random init: train all
    neck=dict(out_channels=64),
    bbox_head=dict(num_classes=3, in_channels=64, feat_channels=64, stacked_convs=2))

train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape', 'scale_factor'))
]
train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    persistent_workers=True,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json', metric='bbox')
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
# Warm up for 30 iterations, then cosine decay to 5 % at max_iters. tools/demo.py --iters N
# sets train_cfg.max_iters to N and scales every scheduler's begin/end by N / max_iters.
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min_ratio=0.05)
]
optim_wrapper = dict(
    _delete_=True,
    type='OptimWrapper',
    # FAME's beta3=0.3, beta4=0.7 defaults apply; lr, betas and weight decay match the AdamW twin.
    optimizer=dict(type='FAME', lr=1e-3, betas=(0.9, 0.999), weight_decay=0.05),
    paramwise_cfg=dict(norm_decay_mult=0.0, bias_decay_mult=0.0),
    clip_grad=dict(max_norm=10, norm_type=2))
auto_scale_lr = dict(enable=False, base_batch_size=8)

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
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
