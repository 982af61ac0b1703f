# YOLOX-tiny, random init, trained with FAME on the synthetic shapes demo data in COCO layout
# (`python -m mmfame.datasets.demo --out data/demo`) at 128 x 128 for 300 iterations: the
# YOLOX-tiny FAME recipe (configs/coco/) at a CPU budget. Changed from the recipe, as a user changes
# it for their data: data paths and classes, the image scale (Mosaic, affine border, resize, the
# batch resize range, test resize), batch, workers, and the schedule: 300 iterations with a
# 30-iteration quadratic warm-up and a cosine decay to 5 % (as the other demo configs), so the
# last-15-epochs mode switch of a 300-epoch run does not apply and is left out.
_base_ = '../coco/yolox_tiny_fame_8xb8-300e_coco.py'

data_root = 'data/demo/coco/'
metainfo = dict(
    classes=('rectangle', 'ellipse', 'triangle'),
    palette=[(220, 20, 60), (0, 160, 80), (30, 60, 230)])
img_scale = (128, 128)
max_iters = 300

model = dict(
    data_preprocessor=dict(batch_augments=[
        dict(type='BatchSyncRandomResize', random_size_range=(96, 160), size_divisor=32,
             interval=10)
    ]),
    bbox_head=dict(num_classes=3))

train_pipeline = _base_.train_pipeline
train_pipeline[0].update(img_scale=img_scale)  # Mosaic
train_pipeline[1].update(border=(-img_scale[0] // 2, -img_scale[1] // 2))  # RandomAffine
train_pipeline[4].update(scale=img_scale)  # Resize
test_pipeline = _base_.test_pipeline
test_pipeline[1].update(scale=img_scale)

train_dataloader = dict(
    batch_size=8,
    num_workers=1,
    sampler=dict(type='InfiniteSampler', shuffle=True),
    dataset=dict(
        pipeline=train_pipeline,
        dataset=dict(
            data_root=data_root,
            metainfo=metainfo,
            ann_file='annotations/instances_train2017.json',
            data_prefix=dict(img='train2017/'))))
val_dataloader = dict(
    batch_size=8,
    num_workers=1,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=max_iters,
                 val_interval=max_iters)
param_scheduler = [
    dict(type='mmdet.QuadraticWarmupLR', by_epoch=False, begin=0, end=30),
    dict(type='CosineAnnealingLR', by_epoch=False, begin=30, end=max_iters, eta_min_ratio=0.05)
]

default_hooks = dict(
    logger=dict(type='LoggerHook', interval=10),
    checkpoint=dict(type='CheckpointHook', by_epoch=False, interval=max_iters, max_keep_ckpts=2))
log_processor = dict(type='LogProcessor', window_size=10, by_epoch=False)
env_cfg = dict(mp_cfg=dict(mp_start_method='fork', opencv_num_threads=0),
               dist_cfg=dict(backend='gloo'))
randomness = dict(seed=0)

custom_hooks = [
    dict(type='SyncNormHook', priority=48),
    dict(type='EMAHook', ema_type='ExpMomentumEMA', momentum=0.0001, update_buffers=True,
         priority=49),
    dict(type='mmfame.PreemptionHook'),
    dict(type='mmfame.WeightsOnlyLoadHook')
]
