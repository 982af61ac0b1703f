# Mask2Former R50 160k on ADE20K (mmseg 1.2.2) with FAME instead of AdamW. Only the optimizer type
# changes: lr 1e-4, wd 0.05, eps 1e-8, grad-norm clip 0.01, backbone lr_mult 0.1, no decay on
# norms and query/level embeddings, and the poly schedule are inherited from the upstream recipe.
_base_ = 'mmseg::mask2former/mask2former_r50_8xb2-160k_ade20k-512x512.py'

# custom_imports is replaced, not merged: keep the base's mmdet.models import.
custom_imports = dict(
    imports=['mmdet.models', 'mmfame'], allow_failed_imports=False)

# The base's top-level `optimizer` (AdamW) is what optim_wrapper.optimizer was built from: switch
# both.
optimizer = dict(type='FAME')
optim_wrapper = dict(optimizer=optimizer)

# Checkpoint on a cluster's stop signal and resume under torch >= 2.6, with any train.py (this
# repository's, mmdet's or mmseg's own, `mim train`): docs/openmmlab.md.
custom_hooks = [dict(type='mmfame.PreemptionHook'), dict(type='mmfame.WeightsOnlyLoadHook')]
