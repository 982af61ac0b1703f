# YOLOv5-n trained with FAME on the synthetic shapes demo data (`python -m mmfame.datasets.demo
# --out data/demo`), random init, at 256 x 256 for 30 epochs: the YOLOv5-n FAME recipe at a CPU
# budget (docs/results.md compares it with mmyolo's own SGD and with AdamW). Changed from the
# recipe, as a user changes it for their data:
# data paths, classes (and the class loss weight mmyolo scales with them), the image scale (and
# the objectness loss weight mmyolo scales with it), batch, epochs, checkpoint/validation interval,
# and the warm-up: YOLOv5ParamSchedulerHook warms up for at least 1000 iterations, more than this
# whole schedule (600), so it is set to its 3 epochs (60 iterations).
_base_ = './yolov5_n-v61_fame_syncbn_fast_8xb16-300e_coco.py'

data_root = 'data/demo/coco/'
metainfo = dict(
    classes=('rectangle', 'ellipse', 'triangle'),
    palette=[(220, 20, 60), (0, 160, 80), (30, 60, 230)])
num_classes = 3
img_scale = (256, 256)  # width, height
max_epochs = 30
interval = 10

# batch_size_per_gpu: YOLOv5OptimizerConstructor scales the weight decay by the total batch / 64
# (rounded up by accumulation): 1 below 64, so FAME's 0.025 applies as written.
optim_wrapper = dict(optimizer=dict(batch_size_per_gpu=8))

model = dict(
    bbox_head=dict(
        head_module=dict(num_classes=num_classes),
        loss_cls=dict(loss_weight=0.5 * num_classes / 80),  # mmyolo's 0.5 x classes / 80
        loss_obj=dict(loss_weight=1.0 * (img_scale[0] / 640)**2)),  # 1.0 x (scale / 640)^2
    train_cfg=dict(assigner=dict(num_classes=num_classes)))

# The recipe's pipelines at this scale: Mosaic and the random affine of the training pipeline,
# the resize and letterbox of the test pipeline.
train_pipeline = _base_.train_pipeline
train_pipeline[2].update(img_scale=img_scale)
train_pipeline[3].update(border=(-img_scale[0] // 2, -img_scale[1] // 2))
test_pipeline = _base_.test_pipeline
test_pipeline[1].update(scale=img_scale)
test_pipeline[2].update(scale=img_scale)

train_dataloader = dict(
    batch_size=8,
    num_workers=2,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_train2017.json',
        data_prefix=dict(img='train2017/'),
        pipeline=train_pipeline))
val_dataloader = dict(
    batch_size=8,
    num_workers=2,
    dataset=dict(
        data_root=data_root,
        metainfo=metainfo,
        ann_file='annotations/instances_val2017.json',
        data_prefix=dict(img='val2017/'),
        pipeline=test_pipeline,
        batch_shapes_cfg=dict(batch_size=8, img_size=img_scale[0])))
test_dataloader = val_dataloader
val_evaluator = dict(ann_file=data_root + 'annotations/instances_val2017.json')
test_evaluator = val_evaluator

train_cfg = dict(max_epochs=max_epochs, val_interval=interval)
default_hooks = dict(
    param_scheduler=dict(max_epochs=max_epochs, warmup_mim_iter=60),
    checkpoint=dict(interval=interval, max_keep_ckpts=2),
    logger=dict(interval=10))
