"""The recipe converter (mmfame/recipe.py, tools/analysis_tools/convert_recipe.py).

* Converting the upstream base of every shipped FAME config gives back that config's optimizer,
  constructor, schedulers, hooks and imports: the rules the shipped configs were written by,
  one row per shipped config (mmyolo's rows need mmyolo, whose package holds their bases).
* What no rule converts is refused with the key and its value; Adam's L2 decay stays L2; the
  delta's one ``base_lr`` line moves its lr floors with it (``write_lr``).
"""
import math
import os.path as osp
import subprocess
import sys

import pytest

pytest.importorskip('mmdet', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')

from mmengine.config import Config  # noqa: E402

from mmfame.experiments.configs import REPO, load_config, select_configs  # noqa: E402
from mmfame.experiments.upstream import upstream_base  # noqa: E402
from mmfame.recipe import RecipeError, convert, differences, render, write_lr  # noqa: E402

SHIPPED = [osp.join(REPO, p) for p in select_configs(('ade20k', 'coco', 'mmyolo'))]
def converted(base, tmp_path, **kwargs):
    conversion = convert(load_config(base), base, **kwargs)
    path = tmp_path / 'fame.py'
    path.write_text(render(conversion, base))
    return conversion, path


@pytest.mark.parametrize('config', SHIPPED, ids=lambda p: osp.splitext(osp.basename(p))[0])
def test_converting_the_upstream_base_gives_the_shipped_config(config, tmp_path):
    base = upstream_base(config)
    if base.startswith('mmyolo::'):
        pytest.importorskip('mmyolo', reason='the mmyolo:: base ships inside mmyolo')
    _, path = converted(base, tmp_path)
    got, want = load_config(str(path)), load_config(config)
    assert want.optim_wrapper.optimizer.type == 'FAME'
    assert not differences(got, want)


def test_differences_are_found():
    want = Config(dict(optim_wrapper=dict(optimizer=dict(type='FAME', lr=1e-4)),
                       param_scheduler=[dict(type='PolyLR', eta_min=1e-6, _scope_='mmseg')]))
    assert not differences(Config(dict(
        optim_wrapper=dict(optimizer=dict(type='FAME', lr=1e-4 * (1 + 1e-12))),
        param_scheduler=[dict(type='PolyLR', eta_min=1e-6)])), want)
    got = Config(dict(optim_wrapper=dict(optimizer=dict(type='FAME', lr=2e-4, eps=1e-8)),
                      param_scheduler=[dict(type='PolyLR', eta_min=1e-5)]))
    assert differences(got, want) == [
        "optim_wrapper.optimizer: keys ['eps', 'lr', 'type'] != ['lr', 'type']",
        'param_scheduler[0].eta_min: 1e-05 != 1e-06']


def test_lr_and_its_floors_move_together(tmp_path):
    """--lr replaces the rule's lr; write_lr changes the one base_lr line, and the absolute
    cosine floor (0.05 x the lr in the YOLOX recipe) follows it."""
    conversion, path = converted('mmdet::yolox/yolox_tiny_8xb8-300e_coco.py', tmp_path, lr=2e-3)
    assert conversion.lr == 2e-3 and 'lr 0.002: given (--lr)' in conversion.rules
    write_lr(str(path), 3e-4, 'test')
    cfg = Config.fromfile(str(path), import_custom_modules=False)
    assert cfg.optim_wrapper.optimizer.lr == 3e-4
    assert math.isclose(cfg.param_scheduler[1].eta_min, 3e-4 * 0.05)
    path.write_text(path.read_text() + 'base_lr = 1.0\n')
    with pytest.raises(RecipeError, match='found 2'):
        write_lr(str(path), 1e-3, 'test')


def test_adam_keeps_its_coupled_decay():
    cfg = Config(dict(optim_wrapper=dict(optimizer=dict(type='Adam', lr=3e-4,
                                                        weight_decay=1e-4))))
    conversion = convert(cfg, 'x.py')
    optimizer = conversion.keys['optim_wrapper']['optimizer']
    assert optimizer['type'] == 'FAME' and optimizer['decoupled_weight_decay'] is False
    assert conversion.lr == 3e-4


SGD = dict(type='SGD', lr=0.02, momentum=0.9, weight_decay=1e-4)
REFUSED = [  # (what, recipe, words the error names)
    ('another optimizer', dict(optim_wrapper=dict(optimizer=dict(type='RMSprop', lr=0.01))),
     ["optim_wrapper.optimizer.type='RMSprop'", 'by hand']),
    ('already FAME', dict(optim_wrapper=dict(optimizer=dict(type='FAME', lr=0.01))),
     ["type='FAME'", 'FAME already']),
    ('an unknown constructor', dict(optim_wrapper=dict(optimizer=SGD, constructor='MyCtor'),
                                    default_scope='mmdet'),
     ["optim_wrapper.constructor='MyCtor'", 'known:']),
    ('an unknown scheduler', dict(optim_wrapper=dict(optimizer=SGD), default_scope='mmseg',
                                  param_scheduler=[dict(type='MyLR', begin=0, end=9)]),
     ["param_scheduler[0].type='MyLR'", 'FAME-scale values']),
    ('a momentum scheduler', dict(optim_wrapper=dict(optimizer=SGD), default_scope='mmseg',
                                  param_scheduler=[dict(type='CosineAnnealingMomentum')]),
     ["param_scheduler[0].type='CosineAnnealingMomentum'", 'momentum']),
    ('SGD of a package without a rule', dict(optim_wrapper=dict(optimizer=SGD),
                                             default_scope='mmaction'),
     ['mmaction', '--lr', '--weight-decay']),
    ('no batch size to scale by', dict(optim_wrapper=dict(optimizer=SGD), default_scope='mmdet'),
     ['total batch', '--gpus']),
]


@pytest.mark.parametrize('what,recipe,words', REFUSED, ids=[r[0] for r in REFUSED])
def test_refuses_what_no_rule_converts(what, recipe, words):
    with pytest.raises(RecipeError) as e:
        convert(Config(recipe), 'my_recipe.py')
    for word in words:
        assert word in str(e.value), (word, str(e.value))


def test_the_tool_writes_a_delta_and_keeps_an_existing_file(tmp_path):
    out = tmp_path / 'my_fame.py'
    tool = [sys.executable, osp.join(REPO, 'tools', 'analysis_tools', 'convert_recipe.py'),
            'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py', str(out)]
    done = subprocess.run(tool, capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert 'FAME lr 0.0001' in done.stdout and 'bypass_duplicate' in done.stdout
    assert "_base_ = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'" in out.read_text()
    again = subprocess.run(tool, capture_output=True, text=True, cwd=REPO)
    assert again.returncode != 0 and '--force' in again.stderr


def test_a_constructor_that_builds_by_type_is_kept():
    """mmpretrain's layer-decay constructor (as its ViT / Swin fine-tuning recipes use it)
    builds any optimizer type: the conversion changes the type only."""
    cfg = Config(dict(optim_wrapper=dict(
        optimizer=dict(type='AdamW', lr=4e-3, weight_decay=0.05),
        constructor='LearningRateDecayOptimWrapperConstructor',
        paramwise_cfg=dict(layer_decay_rate=0.65))))
    conversion = convert(cfg, 'mmpretrain::vision_transformer/vit-base-p16_ft.py')
    assert conversion.keys['optim_wrapper'] == dict(optimizer=dict(type='FAME', lr='base_lr'))
    assert conversion.lr == 4e-3
