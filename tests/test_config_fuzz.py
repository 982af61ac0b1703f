"""A seeded fuzz of FAME optim_wrapper configs: a valid config with one or two of its keys set to a
bad value (a wrong type, a string, inf, NaN, out of range, a typo of the key's name) or to
another valid one, built under mmengine's default constructor and FAMEOptimWrapperConstructor and
stepped when built.

Under FAMEOptimWrapperConstructor every invalid config is refused, naming its key's path. Under
mmengine's default constructor mmfame sees only what FAME receives (the parameter groups the
constructor derived): what FAME refuses names the group's key; what mmengine refuses first is
refused in mmengine's words; and the kinds of mistakes mmengine ignores are listed in
``UNSEEN_BY_DEFAULT`` (FAMEOptimWrapperConstructor checks them).
"""
import random

import pytest
import torch
from mmengine.optim import build_optim_wrapper
from torch import nn

INF, NAN = float('inf'), float('nan')
# Where a key lives: its path in the config and its kind (which values are good and bad).
SITES = {
    ('optimizer', 'lr'): 'rate',
    ('optimizer', 'weight_decay'): 'rate',
    ('optimizer', 'eps'): 'rate',
    ('optimizer', 'betas'): 'pair',
    ('optimizer', 'beta3'): 'unit',
    ('optimizer', 'beta4'): 'unit',
    ('optimizer', 'sq_betas'): 'pair or None',
    ('optimizer', 'amsgrad'): 'flag',
    ('optimizer', 'decoupled_weight_decay'): 'flag',
    ('optimizer', 'maximize'): 'flag',
    ('paramwise_cfg', 'norm_decay_mult'): 'mult or None',
    ('paramwise_cfg', 'bias_decay_mult'): 'mult or None',
    ('paramwise_cfg', 'bias_lr_mult'): 'mult or None',
    ('paramwise_cfg', 'bypass_duplicate'): 'flag',
    ('paramwise_cfg', 'merge_groups'): 'flag',
    ('custom_keys', 'lr_mult'): 'mult',
    ('custom_keys', 'decay_mult'): 'mult',
    ('custom_keys', 'beta3'): 'unit',
    ('custom_keys', 'eps'): 'rate',
}
GOOD = {
    'rate': [2e-3, 0.01, 1],
    'mult': [0.0, 0.5, 2],
    'mult or None': [0.0, 0.5, 2, None],  # paramwise_cfg's: None is not set, as mmengine reads it
    'unit': [0.0, 0.5, 0.99],
    'pair': [(0.8, 0.99), [0.9, 0.999]],
    'pair or None': [None, (0.3, 0.7)],
    'flag': [True, False],
}
BAD = {
    'rate': [-1.0, INF, -INF, NAN, '1e-3', None, [1e-3], True, 10**400, {}],
    'mult': [-0.5, INF, NAN, '0.1', None, [0.1], True, 10**400],
    'mult or None': [-0.5, INF, NAN, '0.1', [0.1], True, 10**400],
    'unit': [1.0, -0.1, 1.5, NAN, INF, '0.3', None, True],
    'pair': [(0.9,), (0.9, 0.999, 0.3), (0.9, 1.0), (NAN, 0.999), '0.9, 0.999', None, 0.9,
             (0.9, '0.999')],
    'pair or None': [(0.5,), (0.5, 1.0), 0.5, '0.5, 0.5', (INF, 0.5)],
    'flag': ['False', 1, 0.0, None],
}
# The keys FAME's parameter groups get from each site under mmengine's default constructor.
GROUP_KEY = {'lr_mult': 'lr', 'bias_lr_mult': 'lr', 'decay_mult': 'weight_decay',
             'norm_decay_mult': 'weight_decay', 'bias_decay_mult': 'weight_decay'}
# What mmengine's default constructor builds without a word and FAME never sees: unknown or
# misspelt paramwise_cfg and custom_keys keys (a custom_keys key becomes a group key torch keeps),
# paramwise flags that are not bools (it reads them as truthy), and a bool as a multiplier.
UNSEEN_BY_DEFAULT = ('paramwise_cfg typo', 'custom_keys typo', 'paramwise_cfg flag',
                     'bool mult')
N_CONFIGS = 320


def base_config():
    return dict(type='OptimWrapper',
                optimizer=dict(type='FAME', lr=1e-3, weight_decay=0.05, betas=(0.9, 0.999),
                               eps=1e-8, beta3=0.3, beta4=0.7),
                paramwise_cfg=dict(norm_decay_mult=0., bias_decay_mult=0.,
                                   custom_keys={'head': dict(lr_mult=0.1, decay_mult=1.)}))


def section(cfg, where):
    return (cfg['paramwise_cfg']['custom_keys']['head'] if where == 'custom_keys' else
            cfg[where])


def path(where, key):
    """How FAMEOptimWrapperConstructor names the key (the message may go on with ``[i]``)."""
    return {'optimizer': f'optimizer.{key}', 'paramwise_cfg': f'paramwise_cfg.{key}',
            'custom_keys': f"paramwise_cfg.custom_keys['head'].{key}"}[where]


def typo(key, rng):
    """The key with one character dropped, doubled or an underscore added."""
    i = rng.randrange(len(key))
    return rng.choice([key[:i] + key[i + 1:], key[:i] + key[i] + key[i:], key + '_'])


def mutate(rng):
    """A config with one or two keys changed, and the mistakes it holds: (name for the FAME
    constructor, group key for FAME under the default one, kind of mistake)."""
    cfg, mistakes = base_config(), []
    for (where, key) in rng.sample(sorted(SITES), rng.choice([1, 2])):
        kind = SITES[where, key]
        target = section(cfg, where)
        choice = rng.random()
        if choice < 0.25:  # another valid value
            target[key] = rng.choice(GOOD[kind])
        elif choice < 0.4:  # the key's name misspelt
            bad = typo(key, rng)
            target[bad] = target.pop(key, rng.choice(GOOD[kind]))
            mistakes.append((bad, bad, f'{where} typo'))
        else:
            value = rng.choice(BAD[kind])
            target[key] = value
            category = ('paramwise_cfg flag' if (where, kind) == ('paramwise_cfg', 'flag') else
                        'bool mult' if kind.startswith('mult') and isinstance(value, bool) else
                        'value')
            mistakes.append((path(where, key), GROUP_KEY.get(key, key), category))
    return cfg, mistakes


def model():
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module('conv', nn.Conv2d(3, 4, 3))
    net.add_module('bn', nn.BatchNorm2d(4))
    net.add_module('head', nn.Linear(4, 2))
    return net


def build_and_step(cfg):
    net = model()
    wrapper = build_optim_wrapper(net, cfg)
    for p in net.parameters():
        p.grad = torch.ones_like(p)
    wrapper.step()
    return net


CONFIGS = [mutate(random.Random(seed)) for seed in range(N_CONFIGS)]


@pytest.mark.parametrize('constructor', ['FAMEOptimWrapperConstructor',
                                         'DefaultOptimWrapperConstructor'])
def test_no_invalid_config_builds_silently_and_every_error_names_its_key(constructor):
    ours = constructor == 'FAMEOptimWrapperConstructor'
    refused_by_fame = refused_by_mmengine = built = unseen = 0
    for i, (cfg, mistakes) in enumerate(CONFIGS):
        cfg = dict(cfg, constructor=constructor)
        try:
            net = build_and_step(cfg)
        except (TypeError, ValueError, RuntimeError, OverflowError, AssertionError) as e:
            message = str(e)
            assert mistakes, f'config {i}: a valid config was refused: {message}'
            if ours:
                names = [name for name, _, _ in mistakes]
            elif message.startswith('FAME'):  # FAME's own check on what it received
                names = [group_key for _, group_key, _ in mistakes]
            else:  # mmengine's constructor refused it before FAME saw anything
                refused_by_mmengine += 1
                continue
            assert any(name in message for name in names), (
                f'config {i}: the error does not name {names}: {message}')
            refused_by_fame += 1
            continue
        if mistakes:  # built: only what mmengine ignores, and only under its constructor
            assert not ours and all(category in UNSEEN_BY_DEFAULT
                                    for _, _, category in mistakes), (
                f'config {i} with {mistakes} built silently under {constructor}')
            unseen += 1
        else:
            built += 1
        assert all(torch.isfinite(p).all() for p in net.parameters()), f'config {i}'
    invalid = sum(bool(m) for _, m in CONFIGS)
    print(f'{constructor}: {invalid} invalid of {len(CONFIGS)}; refused naming the key '
          f'{refused_by_fame}, by mmengine first {refused_by_mmengine}, built unseen {unseen}; '
          f'valid built {built}')
    assert built == len(CONFIGS) - invalid  # every valid config built and stepped
    assert invalid > N_CONFIGS // 2 and (refused_by_fame == invalid if ours else
                                         refused_by_fame > invalid // 2)


def test_the_fuzz_covers_every_site_and_mistake():
    """The seeded configs reach every site with a bad value and a typo, and some valid ones."""
    seen = {(name, category) for _, mistakes in CONFIGS for name, _, category in mistakes}
    for where, key in SITES:
        assert (path(where, key), 'value') in seen or (
            path(where, key), 'paramwise_cfg flag') in seen or (
            path(where, key), 'bool mult') in seen, (where, key)
    assert {c for _, c in seen} >= {'optimizer typo', 'paramwise_cfg typo', 'custom_keys typo'}
    assert sum(not m for _, m in CONFIGS) > 20
