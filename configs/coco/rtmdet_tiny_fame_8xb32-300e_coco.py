# RTMDet-tiny 300e (mmdet 3.3.0) with FAME instead of AdamW. Only the optimizer type changes:
# lr 0.004, wd 0.05, no decay on norm/bias, the warm-up + cosine schedule and the EMA hook are
# inherited from the upstream AdamW recipe.
_base_ = 'mmdet::rtmdet/rtmdet_tiny_8xb32-300e_coco.py'

custom_imports = dict(imports=['mmfame'], allow_failed_imports=False)

optim_wrapper = dict(optimizer=dict(type='FAME'))
