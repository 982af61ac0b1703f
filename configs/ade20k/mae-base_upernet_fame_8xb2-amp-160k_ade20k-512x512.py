# UperNet with an MAE-pre-trained ViT-B/16 160k on ADE20K (mmseg 1.2.2) with FAME instead of
# AdamW, layer-wise lr decay through mmfame's FAMEOptimWrapperConstructor. Kept from the upstream
# AdamW recipe: lr 1e-4, betas (0.9, 0.999), wd 0.05 (none on 1-D params and biases), layer decay
# 0.65 over 12 layers (same lr scales as mmseg's LayerDecayOptimizerConstructor, which also works
# with FAME), the warm-up + linear-poly schedule. As upstream, the backbone weights are a local
# file (./pretrain/mae_pretrain_vit_base_mmcls.pth, converted from the MAE release); the `amp` in
# the name means the training script's --amp flag (mmengine ignores the base's legacy `fp16` key).
_base_ = 'mmseg::mae/mae-base_upernet_8xb2-amp-160k_ade20k-512x512.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(
    optimizer=dict(type='FAME'),
    constructor='FAMEOptimWrapperConstructor',
    paramwise_cfg=dict(
        _delete_=True, decay_rate=0.65, decay_type='layer_wise', num_layers=12))

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
