"""Every bad FAME optimizer config fails when the optim wrapper is built, naming the key and the
fix, whichever constructor builds it (mmengine's default, FAMEOptimWrapperConstructor, with or
without paramwise_cfg) and in plain PyTorch."""
import re

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

from mmfame import FAME

DELETE = r"_delete_=True, type='FAME'"
UNQUOTED = 'write the value unquoted'
# (optimizer keys, exception, regex the message must match): the regex names the key and the fix.
CASES = {
    'sgd momentum': (dict(momentum=0.9), TypeError, r"\['momentum'\].*" + DELETE),
    'sgd nesterov': (dict(nesterov=True), TypeError, r"\['nesterov'\].*" + DELETE),
    'sgd dampening': (dict(dampening=0.), TypeError, r"\['dampening'\].*" + DELETE),
    'typo': (dict(beta_3=0.5), TypeError, r"unknown arguments \['beta_3'\]; valid arguments: "
             r"\['lr', 'betas', 'eps', 'weight_decay', 'amsgrad', 'beta3', 'beta4'"),
    'lr str': (dict(lr='1e-4'), ValueError, r"lr must be a number .* got '1e-4' .*lr=1e-4"),
    'lr None': (dict(lr=None), ValueError, r'lr must be a number .* got None'),
    'lr negative': (dict(lr=-1e-3), ValueError, r'lr: Invalid learning rate: -0.001 \(must be >= 0\)'),
    'lr bool': (dict(lr=True), ValueError, r'lr must be a number .* got True'),
    'eps str': (dict(eps='1e-8'), ValueError, r"eps must be a number >= 0, got '1e-8' .*"
                + UNQUOTED),
    'eps negative': (dict(eps=-1.), ValueError, r'eps: Invalid epsilon value: -1.0 \(must be >= 0\)'),
    'weight_decay None': (dict(weight_decay=None), ValueError,
                          r'weight_decay must be a number >= 0, got None .*use 0 for no weight'),
    'weight_decay str': (dict(weight_decay='0.05'), ValueError, r"weight_decay .*'0.05'.*"
                         + UNQUOTED),
    'weight_decay negative': (dict(weight_decay=-0.1), ValueError, r'weight_decay .*-0.1'),
    'betas str': (dict(betas='(0.9, 0.999)'), ValueError, r'betas must be a pair \(beta1, beta2\)'),
    'betas three': (dict(betas=(0.9, 0.999, 0.3)), ValueError,
                    r'betas must be a pair .*separate arguments beta3 and beta4'),
    'betas element str': (dict(betas=(0.9, '0.999')), ValueError,
                          r"betas\[1\] must be a number in \[0, 1\), got '0.999'"),
    'betas element range': (dict(betas=(1.0, 0.999)), ValueError,
                            r'betas: Invalid beta parameter at index 0: 1.0 \(must be in \[0, 1\)\)'),
    'beta3 range': (dict(beta3=1.5), ValueError, r'beta3 must be a number in \[0, 1\), got 1.5'),
    'beta4 str': (dict(beta4='0.7'), ValueError, r"beta4 must be .*'0.7'.*" + UNQUOTED),
    'sq_betas number': (dict(sq_betas=0.5), ValueError, r'sq_betas must be a pair .*or None'),
    'sq_betas range': (dict(sq_betas=(0.3, 1.2)), ValueError, r'sq_betas\[1\] .*got 1.2'),
    'amsgrad str': (dict(amsgrad='False'), ValueError, r"amsgrad must be True or False, got "
                    r"'False'.*amsgrad=False"),
    'maximize int': (dict(maximize=1), ValueError, r'maximize must be True or False, got 1'),
    'foreach str': (dict(foreach='yes'), ValueError, r'foreach must be None, True or False'),
    'lr inf': (dict(lr=float('inf')), ValueError, r'lr must be a finite number >= 0, got inf'),
    'weight_decay inf': (dict(weight_decay=float('inf')), ValueError,
                         r'weight_decay must be a finite number >= 0, got inf'),
    'eps too large for a float': (dict(eps=10**400), ValueError,
                                  r'eps must be a finite number >= 0, got 1000'),
}
CONSTRUCTORS = {
    'default': dict(),
    'default paramwise': dict(paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.)),
    'fame': dict(constructor='FAMEOptimWrapperConstructor'),
    'fame paramwise': dict(constructor='FAMEOptimWrapperConstructor',
                           paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.)),
}

# mmengine's default constructor multiplies weight_decay by the paramwise decay mults before FAME
# (or any mmfame code) sees it: it fails at build time too, with mmengine's own message
# ('base_wd should not be None', or Python's for a string). FAMEOptimWrapperConstructor checks first.
MMENGINE_FIRST = {('weight_decay None', 'default paramwise'),
                  ('weight_decay str', 'default paramwise')}


@pytest.mark.parametrize('constructor', CONSTRUCTORS)
@pytest.mark.parametrize('case', CASES)
def test_bad_config_fails_at_build_naming_key_and_fix(case, constructor):
    keys, error, match = CASES[case]
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    before = [p.detach().clone() for p in net.parameters()]
    optimizer = dict(type='FAME', lr=1e-3, weight_decay=0.05)
    optimizer.update(keys)
    cfg = dict(type='OptimWrapper', optimizer=optimizer, **CONSTRUCTORS[constructor])
    ours = (case, constructor) not in MMENGINE_FIRST
    if not ours:
        error, match = (TypeError, ValueError), None
    with pytest.raises(error, match=match) as info:
        build_optim_wrapper(net, cfg)
    if ours and constructor.startswith('fame'):  # FAMEOptimWrapperConstructor says where
        assert str(info.value).startswith('optim_wrapper.optimizer'), str(info.value)
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters()))


@pytest.mark.parametrize('case', CASES)
def test_bad_argument_fails_in_plain_pytorch(case):
    """As with any torch optimizer: a bad value in FAME's words, an unknown keyword in Python's
    (the fix for a config's SGD leftovers is named where configs are built)."""
    keys, error, match = CASES[case]
    with pytest.raises(error) as info:
        FAME([nn.Parameter(torch.zeros(2))], **keys)
    if error is TypeError:  # "unexpected keyword argument 'momentum'"
        assert repr(next(iter(keys))) in str(info.value), str(info.value)
    else:
        assert re.search(match, str(info.value)), str(info.value)
        assert str(info.value).startswith('FAME')  # the message says where


@pytest.mark.parametrize('lr', [torch.tensor([1e-3, 1e-3]), torch.tensor(1)])
def test_tensor_lr_must_be_one_floating_point_element(lr):
    # torch's own optimizer tests match "Tensor lr must be 1-element"
    with pytest.raises(ValueError, match='Tensor lr must be 1-element, a floating-point tensor'):
        FAME([nn.Parameter(torch.zeros(2))], lr=lr)


@pytest.mark.parametrize('case', [c for c in CASES if CASES[c][1] is ValueError])
def test_bad_group_value_fails_before_the_group_is_added(case):
    keys, error, match = CASES[case]
    optimizer = FAME([nn.Parameter(torch.zeros(2))])
    with pytest.raises(error, match=match) as info:
        optimizer.add_param_group(dict(params=[nn.Parameter(torch.zeros(3))], **keys))
    assert str(info.value).startswith('FAME.param_groups[1]')
    assert len(optimizer.param_groups) == 1


@pytest.mark.parametrize('value, match', [
    (dict(beta3='0.5'), r"custom_keys\['head'\]\.beta3 must be .*'0.5'"),
    (dict(beta3=1.0), r"custom_keys\['head'\]\.beta3 must be a number in \[0, 1\)"),
    (dict(beta4=-0.1), r"custom_keys\['head'\]\.beta4 must be a number in \[0, 1\)"),
    (dict(betas=(0.9, 0.999, 0.3)), r"custom_keys\['head'\]\.betas must be a pair"),
    (dict(betas=0.9), r"custom_keys\['head'\]\.betas must be a pair"),
    (dict(betas=(0.9, 1.0)), r"custom_keys\['head'\]\.betas: Invalid beta parameter at index 1: 1.0"),
    (dict(eps=-1.), r"custom_keys\['head'\]\.eps: Invalid epsilon value: -1.0"),
    (dict(amsgrad='True'), r"custom_keys\['head'\]\.amsgrad must be True or False"),
    (dict(momentum=0.9), r"custom_keys\['head'\] got SGD arguments \['momentum'\]: FAME has "
                         r'no momentum; remove them from custom_keys'),
    (dict(lr_mutl=0.1), r"custom_keys\['head'\] got unknown arguments \['lr_mutl'\]; valid "
                        r"arguments: \['lr_mult', 'decay_mult', 'lr', 'betas'"),
])
def test_bad_custom_keys_value_names_the_entry(value, match):
    net = nn.Sequential()
    net.add_module('head', nn.Linear(2, 2))
    cfg = dict(type='OptimWrapper', optimizer=dict(type='FAME', lr=1e-3),
               constructor='FAMEOptimWrapperConstructor',
               paramwise_cfg=dict(custom_keys={'head': value}))
    with pytest.raises((ValueError, TypeError), match=match):
        build_optim_wrapper(net, cfg)


def test_zero_decay_mult_without_weight_decay_names_the_fix():
    """mmengine's own message here is 'base_wd should not be None'."""
    cfg = dict(type='OptimWrapper', optimizer=dict(type='FAME', lr=1e-3),
               constructor='FAMEOptimWrapperConstructor',
               paramwise_cfg=dict(norm_decay_mult=0.))
    with pytest.raises(ValueError, match=r"\['norm_decay_mult'\].*set weight_decay in "
                                         r'optim_wrapper.optimizer'):
        build_optim_wrapper(nn.Sequential(nn.BatchNorm1d(2)), cfg)


def test_good_config_builds_under_every_constructor():
    for constructor, extra in CONSTRUCTORS.items():
        cfg = dict(type='OptimWrapper', optimizer=dict(type='FAME', lr=1e-3, weight_decay=0.05,
                                                       betas=[0.9, 0.99], sq_betas=[0.5, 0.5]),
                   **extra)
        wrapper = build_optim_wrapper(nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)), cfg)
        assert isinstance(wrapper.optimizer, FAME), constructor
        assert wrapper.optimizer.defaults['betas'] == (0.9, 0.99)


# paramwise_cfg under FAMEOptimWrapperConstructor: (paramwise_cfg, exception, regex naming the key
# and the fix). mmengine's default constructor ignores unknown keys and multiplies what it is given.
PARAMWISE_CASES = {
    'not a dict': (['norm_decay_mult'], TypeError, r'paramwise_cfg must be a dict or None'),
    'custom_keys not a dict': (dict(custom_keys=[('head', {})]), TypeError,
                               r'paramwise_cfg.custom_keys must be a dict of name: settings'),
    'custom_keys entry None': (dict(custom_keys={'head': None}), TypeError,
                               r"custom_keys\['head'\] must be a dict of settings, got None"),
    'custom_keys entry number': (dict(custom_keys={'head': 0.1}), TypeError,
                                 r"custom_keys\['head'\] must be a dict of settings"),
    'lr_mult str': (dict(custom_keys={'head': dict(lr_mult='0.1')}), ValueError,
                    r"custom_keys\['head'\].lr_mult must be a finite number >= 0, got '0.1'"
                    r'.*unquoted'),
    'lr_mult list': (dict(custom_keys={'head': dict(lr_mult=[0.1])}), ValueError,
                     r"\.lr_mult must be a finite number >= 0, got \[0.1\]"),
    'decay_mult nan': (dict(custom_keys={'head': dict(decay_mult=float('nan'))}), ValueError,
                       r"\.decay_mult must be a finite number >= 0, got nan"),
    'lr_mult negative': (dict(custom_keys={'head': dict(lr_mult=-1)}), ValueError,
                         r'\.lr_mult must be a finite number >= 0, got -1'),
    'lr_mult inf': (dict(custom_keys={'head': dict(lr_mult=float('inf'))}), ValueError,
                    r'\.lr_mult must be a finite number >= 0, got inf'),
    'norm_decay_mult str': (dict(norm_decay_mult='0'), ValueError,
                            r"paramwise_cfg.norm_decay_mult must be a finite number >= 0, got '0'"),
    'norm_decay_mul typo': (dict(norm_decay_mul=0.), ValueError,
                            r"unknown keys \['norm_decay_mul'\].*did you mean 'norm_decay_mult'"),
    'bypass_duplicates typo': (dict(bypass_duplicates=True), ValueError,
                               r"did you mean 'bypass_duplicate'"),
    'num_layer typo': (dict(num_layer=12), ValueError, r"did you mean 'num_layers'"),
    'merge_groups str': (dict(merge_groups='False'), ValueError,
                         r"paramwise_cfg.merge_groups must be True or False, got 'False'"),
    'decay_rate nan': (dict(decay_rate=float('nan'), num_layers=2), ValueError,
                       r'paramwise_cfg.decay_rate must be a finite number > 0'),
    'num_layers bool': (dict(decay_rate=0.9, num_layers=True), ValueError,
                        r'paramwise_cfg.num_layers must be a positive int'),
}


@pytest.mark.parametrize('case', PARAMWISE_CASES)
def test_bad_paramwise_cfg_names_the_key_and_fix(case):
    paramwise_cfg, error, match = PARAMWISE_CASES[case]
    net = nn.Sequential()
    net.add_module('head', nn.Linear(2, 2))
    cfg = dict(type='OptimWrapper', optimizer=dict(type='FAME', lr=1e-3, weight_decay=0.05),
               constructor='FAMEOptimWrapperConstructor', paramwise_cfg=paramwise_cfg)
    with pytest.raises(error, match=match):
        build_optim_wrapper(net, cfg)


@pytest.mark.parametrize('name, near', [('FAMe', "'FAME'"), ('fame', "'FAME'"),
                                        ('AdamWW', "'AdamW'")])
def test_an_unknown_optimizer_type_suggests_the_nearest(name, near):
    """mmengine's own message is 'None is not a callable object'."""
    cfg = dict(type='OptimWrapper', optimizer=dict(type=name, lr=1e-3),
               constructor='FAMEOptimWrapperConstructor')
    with pytest.raises(ValueError, match=f"type {name!r} is not a registered optimizer: did "
                                         f"you mean {near}"):
        build_optim_wrapper(nn.Linear(2, 2), cfg)


@pytest.mark.parametrize('name', ['', '   '])
def test_an_empty_optimizer_type_names_the_key_and_the_fix(name):
    """mmengine's own message is 'Failed to get ' with nothing after it."""
    cfg = dict(type='OptimWrapper', optimizer=dict(type=name, lr=1e-3),
               constructor='FAMEOptimWrapperConstructor')
    with pytest.raises(ValueError, match=rf"optim_wrapper.optimizer.type is {name!r}: name an "
                                         r"optimizer, e.g. type='FAME'"):
        build_optim_wrapper(nn.Linear(2, 2), cfg)
