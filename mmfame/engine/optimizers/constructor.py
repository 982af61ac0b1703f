"""``FAMEOptimWrapperConstructor``: mmengine's default constructor, plus what FAME configs need.

On top of every ``paramwise_cfg`` key of :class:`DefaultOptimWrapperConstructor` it

* merges the one-group-per-parameter layout into one group per distinct set of hyper-parameters
  (``merge_groups``, default True), in order of first appearance so that a resumed run maps the
  saved state onto the same groups;
* applies layer-/stage-wise learning-rate decay (``decay_rate``, ``decay_type``, ``num_layers``)
  with the layer ids and scales of mmdet's/mmseg's ``LearningRateDecayOptimizerConstructor``,
  for ConvNeXt, ViT/BEiT/MAE and Swin backbones, on top of the default rules;
* passes per-group FAME keys (``betas``, ``beta3``, ``beta4``, ``eps``) from ``custom_keys`` and
  validates them, and rejects FAME configs that cannot be right (SGD leftovers, decay mults
  without weight decay, unknown keys);
* checks sharded setups (:mod:`mmfame.engine.sharding`): a ZeRO-1 ``optimizer_type`` that cannot
  resolve, ``paramwise_cfg`` on an FSDP model with flattened parameters; builds mmengine's
  ``ZeroRedundancyOptimizer`` over FAME through ``mmfame.ZeroRedundancyOptimizer``; under FSDP it
  clips gradients by their norm over all ranks;
* logs the resulting groups compactly.
"""
import difflib
from typing import List

import torch.nn as nn
from mmengine.logging import print_log
from mmengine.optim import DefaultOptimWrapperConstructor, OptimWrapper
from mmengine.registry import OPTIMIZERS

from mmfame.optim.fame import FAME, check_arguments, check_hyper_parameters, is_finite_real
from mmfame.optim.groups import MEMBER_KEYS, merge_param_groups

from mmfame.registry import OPTIM_WRAPPER_CONSTRUCTORS, register_in_root

from ..sharding import (MMENGINE_ZERO_TYPES, MMFAME_ZERO_TYPE, check_fsdp_model, check_zero_cfg,
                        fsdp_clip_func, zero_inner_type)
from .build import build_fame

# Keys that list a group's parameters rather than set hyper-parameters: merged by concatenation.
_DECAY_MULTS = ('bias_decay_mult', 'norm_decay_mult', 'dwconv_decay_mult', 'flat_decay_mult')
_DECAY_TYPES = ('layer_wise', 'stage_wise')
# custom_keys entries: mmengine's multipliers, and FAME's own arguments per group.
_CUSTOM_KEYS = ('lr_mult', 'decay_mult')
# paramwise_cfg: mmengine's DefaultOptimWrapperConstructor keys, then this constructor's own.
_MULTS = ('bias_lr_mult', *_DECAY_MULTS, 'dcn_offset_lr_mult')
_PARAMWISE_KEYS = ('custom_keys', *_MULTS, 'bypass_duplicate',
                   'merge_groups', 'decay_rate', 'decay_type', 'num_layers')
_TOKENS = ('backbone.cls_token', 'backbone.mask_token', 'backbone.pos_embed')
_DELETE_ZERO_BASE = ("in an OpenMMLab config they come from an SGD base optimizer: write "
                     "optim_wrapper=dict(optimizer=dict(_delete_=True, "
                     "type='ZeroRedundancyOptimizer', optimizer_type='FAME', lr=..., "
                     "weight_decay=...)) to drop the base settings")


class FAMEOptimWrapperConstructor(DefaultOptimWrapperConstructor):
    """DefaultOptimWrapperConstructor with group merging, layer decay and FAME config checks.

    Extra ``paramwise_cfg`` keys:

    - ``merge_groups`` (bool): merge groups with identical hyper-parameters. Default True.
    - ``decay_rate`` (float), ``decay_type`` ('layer_wise' | 'stage_wise', default
      'layer_wise'), ``num_layers`` (int): learning-rate decay; the parameter with layer id ``i``
      gets ``lr * decay_rate ** (num_layers + 1 - i)`` and 1-D params and biases get
      ``weight_decay=0``, exactly as in mmdet/mmseg; ``pos_embed``/``cls_token`` get 0 too
      (upstream means to, but compares full names with bare ones and never does). It composes
      with the default rules (e.g. ``custom_keys`` lr_mult), which upstream's ignores.

    ``custom_keys`` entries may set ``betas``, ``beta3``, ``beta4`` and ``eps`` per group.
    """

    def _validate_cfg(self) -> None:
        _check_paramwise_cfg(self.paramwise_cfg)
        _check_optimizer_type(self.optimizer_cfg.get('type'))
        check_zero_cfg(self.optimizer_cfg)
        if self.optimizer_cfg.get('type') in MMENGINE_ZERO_TYPES and zero_inner_type(
                self.optimizer_cfg) == 'FAME':  # mmengine's looks in torch.optim only
            self.optimizer_cfg['type'] = MMFAME_ZERO_TYPE
        if _is_fame(zero_inner_type(self.optimizer_cfg) or self.optimizer_cfg.get('type')):
            self._check_fame_cfg()
        decay_type = self.paramwise_cfg.get('decay_type', 'layer_wise')
        if 'decay_rate' in self.paramwise_cfg:
            if decay_type not in _DECAY_TYPES:
                raise ValueError(f'paramwise_cfg.decay_type must be one of {_DECAY_TYPES}, '
                                 f'got {decay_type!r}')
            if not isinstance(self.paramwise_cfg.get('num_layers'), int):
                raise ValueError('paramwise_cfg.decay_rate needs an int paramwise_cfg.num_layers '
                                 '(the number of backbone layers or stages)')
            if self.base_lr is None:
                raise ValueError('paramwise_cfg.decay_rate needs an explicit optimizer lr')
        super()._validate_cfg()

    def _check_fame_cfg(self) -> None:
        """Reject FAME configs that would train wrongly or fail deep inside the optimizer."""
        cfg = {k: v for k, v in self.optimizer_cfg.items() if k not in ('type', 'optimizer_type')}
        fix = dict(sgd_fix=_DELETE_ZERO_BASE) if zero_inner_type(self.optimizer_cfg) else {}
        check_arguments(cfg, where='optim_wrapper.optimizer', **fix)
        check_hyper_parameters(cfg, where='optim_wrapper.optimizer')
        if not self.base_wd:
            custom = self.paramwise_cfg.get('custom_keys', {})
            # A zero mult without weight_decay asks for no decay, but mmengine's constructor
            # needs weight_decay set to apply it ("base_wd should not be None").
            def matters(cfg, key):
                return key in cfg and (cfg[key] or self.base_wd is None)

            mults = [k for k in _DECAY_MULTS if matters(self.paramwise_cfg, k)]
            mults += [f'custom_keys[{key!r}].decay_mult' for key, value in custom.items()
                      if matters(value, 'decay_mult')]
            if mults:
                effect = ('mmengine needs it set to apply them' if self.base_wd is None else
                          'so they have no effect')
                raise ValueError(
                    f'paramwise_cfg sets {mults} but optimizer weight_decay is '
                    f'{self.base_wd}, {effect}: set weight_decay in optim_wrapper.optimizer '
                    "(e.g. dict(type='FAME', weight_decay=0.05); 0 for none) or remove the mults.")
        for key, value in self.paramwise_cfg.get('custom_keys', {}).items():
            where = f'paramwise_cfg.custom_keys[{key!r}]'
            check_arguments(list(value), where=where, also_valid=_CUSTOM_KEYS,
                            sgd_fix='remove them from custom_keys')
            check_hyper_parameters(value, where=where)

    def add_params(self, params: List[dict], module: nn.Module, prefix: str = '',
                   is_dcn_module=None) -> None:
        """The default rules, then (for the whole model only) layer decay and merging."""
        if prefix:  # the default rules recursing into a submodule
            return super().add_params(params, module, prefix, is_dcn_module)
        groups: List[dict] = []
        super().add_params(groups, module, prefix, is_dcn_module)
        if 'decay_rate' in self.paramwise_cfg:
            self._apply_lr_decay(groups, module)
        if self.paramwise_cfg.get('merge_groups', True):
            groups = merge_param_groups(
                groups, {k: v for k, v in self.optimizer_cfg.items() if k != 'type'})
        params.extend(groups)

    def _apply_lr_decay(self, groups: List[dict], model: nn.Module) -> None:
        """Scale each group's lr by its layer's decay; no weight decay on 1-D/bias/tokens."""
        if not hasattr(model, 'backbone'):
            raise ValueError('paramwise_cfg.decay_rate needs a model with a `backbone`')
        layer_id = _layer_id_fn(model.backbone, self.paramwise_cfg.get('decay_type',
                                                                        'layer_wise'))
        num_layers = self.paramwise_cfg['num_layers']
        decay_rate = self.paramwise_cfg['decay_rate']
        names = {p: n for n, p in model.named_parameters()}
        for group in groups:
            param = group['params'][0]
            name = names[param]
            lid = layer_id(name, num_layers)
            if lid > num_layers + 1:
                raise ValueError(f'{name} has layer id {lid} > num_layers + 1: '
                                 f'paramwise_cfg.num_layers={num_layers} is too small for '
                                 'this backbone')
            group['lr'] = group.get('lr', self.base_lr) * decay_rate**(num_layers + 1 - lid)
            if param.ndim == 1 or name.endswith('.bias') or name.split('.')[-1] in (
                    'pos_embed', 'cls_token'):
                group['weight_decay'] = 0.

    def __call__(self, model: nn.Module) -> OptimWrapper:
        check_fsdp_model(model, self.paramwise_cfg)
        optim_wrapper = super().__call__(model)
        clip = fsdp_clip_func(model)
        if clip is not None and getattr(optim_wrapper, 'grad_name', None) == 'grad_norm':
            optim_wrapper.clip_func = clip
        _log_groups(optim_wrapper.optimizer)
        return optim_wrapper


def _check_paramwise_cfg(cfg) -> None:
    """Every paramwise_cfg key known and of the right type, every multiplier a finite number
    >= 0, before any group is built (mmengine ignores unknown keys and multiplies whatever it
    is given)."""
    if not isinstance(cfg, dict):
        raise TypeError(f'paramwise_cfg must be a dict or None, got {cfg!r} '
                        f'({type(cfg).__name__}): e.g. paramwise_cfg=dict(norm_decay_mult=0.)')
    unknown = [k for k in cfg if k not in _PARAMWISE_KEYS]
    if unknown:
        near = {k: difflib.get_close_matches(str(k), _PARAMWISE_KEYS, n=1) for k in unknown}
        hints = '; '.join(f'{k!r}: did you mean {v[0]!r}?' for k, v in near.items() if v)
        raise ValueError(f'paramwise_cfg got unknown keys {unknown}' + (f' ({hints})' if hints
                                                                       else '')
                         + f'; valid keys: {list(_PARAMWISE_KEYS)}')
    for key in _MULTS:
        if cfg.get(key) is not None:  # None: not set, as mmengine reads it
            _check_mult(f'paramwise_cfg.{key}', cfg[key])
    for key in ('bypass_duplicate', 'merge_groups'):
        if key in cfg and not isinstance(cfg[key], bool):
            raise ValueError(f'paramwise_cfg.{key} must be True or False, got {cfg[key]!r} '
                             f'({type(cfg[key]).__name__})'
                             + ('; write it unquoted' if isinstance(cfg[key], str) else ''))
    if 'decay_rate' in cfg and not (is_finite_real(cfg['decay_rate']) and cfg['decay_rate'] > 0):
        raise ValueError(f'paramwise_cfg.decay_rate must be a finite number > 0, got '
                         f'{cfg["decay_rate"]!r}')
    if 'num_layers' in cfg and not (isinstance(cfg['num_layers'], int) and
                                    not isinstance(cfg['num_layers'], bool) and
                                    cfg['num_layers'] > 0):
        raise ValueError(f'paramwise_cfg.num_layers must be a positive int (the backbone\'s '
                         f'layers or stages), got {cfg["num_layers"]!r}')
    custom = cfg.get('custom_keys', {})
    if not isinstance(custom, dict):
        raise TypeError(f'paramwise_cfg.custom_keys must be a dict of name: settings, got '
                        f"{custom!r}: e.g. custom_keys={{'backbone': dict(lr_mult=0.1)}}")
    for name, value in custom.items():
        where = f'paramwise_cfg.custom_keys[{name!r}]'
        if not isinstance(name, str):
            raise TypeError(f'{where}: a key must be a parameter-name substring (str)')
        if not isinstance(value, dict):
            raise TypeError(f'{where} must be a dict of settings, got {value!r}: e.g. '
                            f'custom_keys={{{name!r}: dict(lr_mult=0.1, decay_mult=0.)}}')
        for key in _CUSTOM_KEYS:
            if key in value:
                _check_mult(f'{where}.{key}', value[key])


def _check_optimizer_type(name) -> None:
    """A type name that no registry in scope knows, with the nearest names (mmengine's own
    message is 'None is not a callable object')."""
    if not isinstance(name, str):
        return
    if not name.strip():
        raise ValueError(f"optim_wrapper.optimizer.type is {name!r}: name an optimizer, e.g. "
                         "type='FAME' (custom_imports=dict(imports=['mmfame']) registers it)")
    if OPTIMIZERS.get(name) is not None:
        return
    lower = {k.lower(): k for k in sorted(set(OPTIMIZERS.module_dict) | {'FAME'})}
    near = [lower[k] for k in difflib.get_close_matches(name.lower(), lower, n=3)]
    raise ValueError(f'optim_wrapper.optimizer.type {name!r} is not a registered optimizer'
                     + (f': did you mean {", ".join(map(repr, near))}?' if near else '')
                     + " (custom_imports=dict(imports=['mmfame']) registers 'FAME')")


def _check_mult(where: str, value) -> None:
    if not (is_finite_real(value) and value >= 0):
        raise ValueError(f'{where} must be a finite number >= 0, got {value!r} '
                         f'({type(value).__name__})'
                         + ('; write it unquoted' if isinstance(value, str) else ''))


def _is_fame(optimizer_type) -> bool:
    if isinstance(optimizer_type, str):
        with OPTIMIZERS.switch_scope_and_registry(None) as registry:
            optimizer_type = registry.get(optimizer_type)
    return optimizer_type is build_fame or (isinstance(optimizer_type, type)
                                            and issubclass(optimizer_type, FAME))


def _log_groups(optimizer) -> None:
    """One line per group: size, lr, weight_decay and every key that differs from the defaults."""
    def fmt(value):
        return f'{value:.4g}' if isinstance(value, float) else str(value)

    lines = [f'{type(optimizer).__name__}: {len(optimizer.param_groups)} param groups']
    for i, group in enumerate(optimizer.param_groups):
        shown = [('lr', group['lr']), ('weight_decay', group.get('weight_decay'))]
        shown += [(k, v) for k, v in group.items()
                  if k not in (*MEMBER_KEYS, 'lr', 'weight_decay')
                  and (k not in optimizer.defaults or v != optimizer.defaults[k])]
        lines.append(f'  group {i}: {len(group["params"])} params, '
                     + ', '.join(f'{k}={fmt(v)}' for k, v in shown))
    print_log('\n'.join(lines), logger='current')


# Layer ids of mmdet/mmseg layer_decay_optimizer_constructor.py. Upstream calls its functions
# with max_layer_id = num_layers (ConvNeXt layer_wise) or num_layers + 2 (the others); written
# here in terms of the config's num_layers. Other parameters (neck, head) get num_layers + 1.
def _convnext_layer_id(name: str, num_layers: int) -> int:
    parts = name.split('.')
    if name in _TOKENS:
        return 0
    if name.startswith('backbone.downsample_layers'):
        return (0, 2, 3, num_layers)[int(parts[2])]
    if name.startswith('backbone.stages'):
        stage, block = int(parts[2]), int(parts[3])
        return (1, 2, 3 + block // 3, num_layers)[stage]
    return num_layers + 1


def _stage_id(name: str, num_layers: int) -> int:
    """get_stage_id_for_convnext; also Swin's patch_embed/absolute_pos_embed/stages.N."""
    if name in _TOKENS or name.startswith(('backbone.downsample_layers', 'backbone.patch_embed',
                                           'backbone.absolute_pos_embed')):
        return 0
    if name.startswith('backbone.stages'):
        return int(name.split('.')[2]) + 1
    return num_layers + 1


def _vit_layer_id(name: str, num_layers: int) -> int:
    if name in _TOKENS or name.startswith('backbone.patch_embed'):
        return 0
    if name.startswith('backbone.layers'):
        return int(name.split('.')[2]) + 1
    return num_layers + 1


def _swin_layer_id_fn(depths: List[int]):
    """Swin (no upstream version): block k overall (1-based) gets id k, a stage's patch merging
    the id of that stage's last block, patch_embed and absolute_pos_embed 0."""

    def layer_id(name: str, num_layers: int) -> int:
        parts = name.split('.')
        if name.startswith(('backbone.patch_embed', 'backbone.absolute_pos_embed')):
            return 0
        if name.startswith('backbone.stages'):
            stage = int(parts[2])
            if parts[3] == 'blocks':
                return sum(depths[:stage]) + int(parts[4]) + 1
            return sum(depths[:stage + 1])
        return num_layers + 1

    return layer_id


def _layer_id_fn(backbone: nn.Module, decay_type: str):
    """Pick the layer-id function by the backbone's class name, as upstream does."""
    cls = type(backbone).__name__
    if decay_type == 'stage_wise' and ('ConvNeXt' in cls or 'Swin' in cls):
        return _stage_id
    if decay_type == 'layer_wise':
        if 'ConvNeXt' in cls:
            return _convnext_layer_id
        if 'Swin' in cls:
            return _swin_layer_id_fn([len(stage.blocks) for stage in backbone.stages])
        if any(k in cls for k in ('ViT', 'VisionTransformer', 'BEiT', 'MAE')):
            return _vit_layer_id
    raise ValueError(f'paramwise_cfg.decay_type={decay_type!r} is not supported for backbone '
                     f'{cls}: layer_wise supports ConvNeXt, Swin and ViT/BEiT/MAE; stage_wise '
                     'supports ConvNeXt and Swin')


OPTIM_WRAPPER_CONSTRUCTORS.register_module(module=FAMEOptimWrapperConstructor)
register_in_root(OPTIM_WRAPPER_CONSTRUCTORS, 'FAMEOptimWrapperConstructor',
                 FAMEOptimWrapperConstructor)
