# Segmenter (ViT-T/16, mask transformer head) 160k on ADE20K (mmseg 1.2.2) with FAME instead of
# SGD. Upstream: SGD lr 1e-3, momentum 0.9, wd 0, PolyLR(power 0.9, eta_min 1e-4). FAME settings
# are this project's choice, see configs/README.md: lr 1e-4 (the authors' FAME lr for DeepLabV3+,
# near mmseg's AdamW ViT recipes' 6e-5); wd stays 0 as in the upstream Segmenter recipe. The poly
# schedule's floor keeps its ratio to the lr (upstream eta_min 1e-4 would be the full new lr), and
# it gets the 1500-iter linear warm-up of mmseg's AdamW recipes.
_base_ = 'mmseg::segmenter/segmenter_vit-t_mask_8xb1-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

# The base's top-level `optimizer` (SGD) is replaced too, so no SGD dict is left in the config.
optimizer = dict(
    _delete_=True,
    type='FAME',
    lr=1e-4,
    betas=(0.9, 0.999),
    beta3=0.3,
    beta4=0.7,
    eps=1e-8,
    weight_decay=0.0)
optim_wrapper = dict(optimizer=optimizer)

param_scheduler = [
    dict(
        type='LinearLR', start_factor=1e-6, by_epoch=False, begin=0, end=1500),
    dict(
        type='PolyLR',
        eta_min=1e-5,  # 10% of lr, the upstream eta_min/lr ratio (1e-4 / 1e-3)
        power=0.9,
        begin=1500,
        end=160000,
        by_epoch=False)
]

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
