"""YOLOv5 (mmyolo 0.6.0) with FAME, end to end on CPU: the shipped YOLOv5-n FAME config, changed
only as a user changes it (data paths, classes, a tiny budget) in a child config, trains on the
demo data with its whole recipe (Mosaic, random affine, albumentations, HSV and flip at 640, the
EMA of the weights, YOLOv5's parameter scheduler hook), validates and resumes bit-identically
(weights, FAME state, EMA, schedulers) through this repository's tools/train.py and through
mmyolo's own (`mim train mmyolo`), and `mim test mmyolo` tests it (tools/test.py is tested on the
detection and segmentation smoke runs).

mmyolo 0.6.0 asserts mmcv < 2.1.0 when imported: the torch2.1 stack of tools/setup_env.sh (mmcv
2.0.1) runs these tests, the other stacks skip them, saying why.
"""
import os
import os.path as osp
import shutil
import signal
import textwrap

import pytest

try:
    import mmyolo  # noqa: F401
except ImportError as e:
    pytest.skip(f'mmyolo is not installed ({e}); tools/setup_env.sh torch2.1 installs it',
                allow_module_level=True)
except AssertionError as e:  # its mmcv version check
    pytest.skip(f'mmyolo cannot be imported here: {e}', allow_module_level=True)

from e2e import (MIM, PY, REPO, assert_preempted_at, assert_same_checkpoint,  # noqa: E402
                 last_log, load_trusted, rank_env, run_tool, signalled_run, upstream_tool)

pytestmark = [pytest.mark.slow, pytest.mark.smoke]

YOLOV5_N = osp.join(REPO, 'configs', 'mmyolo', 'yolov5_n-v61_fame_syncbn_fast_8xb16-300e_coco.py')
EPOCHS, ITERS = 2, 4  # the demo data's 8 training images in batches of 2


def yolo_config(path, data):
    """The shipped YOLOv5-n FAME config with the demo data, its 3 classes and a 2-epoch budget,
    validating at the end, and tests/rank_state_hook.py's PauseAtHook and EndsHook (inert unless
    MMFAME_PAUSE_AT is set)."""
    root = data['coco']['data_root'].rstrip('/') + '/'
    path.write_text(textwrap.dedent(f"""\
        _base_ = {YOLOV5_N!r}
        custom_imports = dict(imports=['mmfame', 'rank_state_hook'], allow_failed_imports=False)
        metainfo = dict(classes=('rectangle', 'ellipse', 'triangle'))
        model = dict(bbox_head=dict(head_module=dict(num_classes=3)),
                     train_cfg=dict(assigner=dict(num_classes=3)))
        train_dataloader = dict(
            batch_size=2, num_workers=0, persistent_workers=False,
            dataset=dict(data_root={root!r}, metainfo=metainfo,
                         ann_file='annotations/instances_train2017.json',
                         data_prefix=dict(img='train2017/')))
        val_dataloader = dict(
            batch_size=1, num_workers=0, persistent_workers=False,
            dataset=dict(data_root={root!r}, metainfo=metainfo,
                         ann_file='annotations/instances_val2017.json',
                         data_prefix=dict(img='val2017/')))
        test_dataloader = val_dataloader
        val_evaluator = dict(ann_file={root + 'annotations/instances_val2017.json'!r})
        test_evaluator = val_evaluator
        train_cfg = dict(max_epochs={EPOCHS}, val_interval={EPOCHS})
        default_hooks = dict(logger=dict(interval=1),
                             checkpoint=dict(interval=1, max_keep_ckpts=-1))
        custom_hooks = _base_.custom_hooks + [dict(type='PauseAtHook'), dict(type='EndsHook')]
        randomness = dict(seed=0)
        """))
    return str(path)


@pytest.fixture(scope='module')
def yolo_run(demo_data, tmp_path_factory):
    """tools/train.py on the YOLOv5-n FAME config: 2 epochs of 4 iterations, uninterrupted."""
    tmp = tmp_path_factory.mktemp('yolo_run')
    cfg = yolo_config(tmp / 'yolov5_n_demo.py', demo_data)
    work = str(tmp / 'work')
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work], env=rank_env())
    return dict(cfg=cfg, work_dir=work, stdout=out)


def stopped_after_epoch(run, epoch, work_dir):
    """A work dir as a run stopped after ``epoch`` leaves it (its checkpoint copied from ``run``,
    named in ``last_checkpoint``)."""
    os.makedirs(work_dir)
    ckpt = shutil.copy(osp.join(run['work_dir'], f'epoch_{epoch}.pth'), work_dir)
    with open(osp.join(work_dir, 'last_checkpoint'), 'w') as f:
        f.write(ckpt)
    return str(work_dir)


def test_yolov5_n_trains_and_validates_with_fame(yolo_run):
    log, out = last_log(yolo_run['work_dir']), yolo_run['stdout']
    assert f'Epoch(train) [{EPOCHS}][{ITERS}/{ITERS}]' in log and "type='FAME'" in log
    assert 'coco/bbox_mAP' in log
    for hook in ('YOLOv5ParamSchedulerHook', 'EMAHook', 'PreemptionHook', 'WeightsOnlyLoadHook'):
        assert hook in out, hook
    final = osp.join(yolo_run['work_dir'], f'epoch_{EPOCHS}.pth')
    ckpt = load_trusted(final)
    groups = ckpt['optimizer']['param_groups']
    assert len(groups) == 3 and not any('momentum' in g for g in groups)  # FAME's, not SGD's
    assert all(float(s['step']) == EPOCHS * ITERS for s in ckpt['optimizer']['state'].values())
    assert ckpt['ema_state_dict'] and len(ckpt['meta']['random_states']) == 1


def test_yolov5_n_preempted_inside_an_epoch_resumes_bit_identically(yolo_run, tmp_path):
    """SIGTERM during the second epoch: mmfame.PreemptionHook saves that iteration and stops
    with 75; bare --resume goes on inside the epoch, with the random states the stopped run had,
    and ends as the uninterrupted run did: weights, FAME state, EMA, schedulers."""
    cfg, at = yolo_run['cfg'], ITERS + 2
    work = str(tmp_path / 'resumed')
    rc, out = signalled_run([PY, 'tools/train.py', cfg, '--work-dir', work],
                            rank_env(MMFAME_PAUSE_AT=at), work, 1,
                            lambda pids: os.kill(pids[0], signal.SIGTERM))
    assert rc == 75, out[-3000:]
    assert_preempted_at(work, at, out)
    out = run_tool([PY, 'tools/train.py', cfg, '--work-dir', work, '--resume'], env=rank_env())
    assert f'resumed epoch: 1, iter: {at}' in out
    assert f'Resuming epoch 2 after its first {at - ITERS} batches' in out
    assert "Resuming the random states of the stopped run's 1 rank(s)." in out
    assert_same_checkpoint(osp.join(yolo_run['work_dir'], f'epoch_{EPOCHS}.pth'),
                           osp.join(work, f'epoch_{EPOCHS}.pth'))


def test_mim_train_mmyolo_resumes_bit_identically_and_mim_test_loads_it(yolo_run, tmp_path):
    """mmyolo's own packaged train.py and test.py, through `mim`: --resume after epoch 1 (the
    random states restored at the epoch's start) ends as our uninterrupted run did; `mim test
    mmyolo` loads the result (torch >= 2.6 included: the config's mmfame.WeightsOnlyLoadHook)."""
    if not osp.isfile(MIM):
        pytest.skip('openmim is not installed (tools/setup_env.sh installs it)')
    upstream_tool('mmyolo', 'train')  # what `mim train mmyolo` runs is packaged
    cfg = yolo_run['cfg']
    work = stopped_after_epoch(yolo_run, 1, tmp_path / 'mim')
    out = run_tool([MIM, 'train', 'mmyolo', cfg, '--gpus', '0', '--work-dir', work, '--resume'],
                   env=rank_env())
    assert f'resumed epoch: 1, iter: {ITERS}' in out
    assert "Resuming the random states of the stopped run's 1 rank(s)." in out
    final = osp.join(work, f'epoch_{EPOCHS}.pth')
    assert_same_checkpoint(osp.join(yolo_run['work_dir'], f'epoch_{EPOCHS}.pth'), final)
    out = run_tool([MIM, 'test', 'mmyolo', cfg, '--checkpoint', final, '--gpus', '0',
                    '--work-dir', str(tmp_path / 'test')], env=rank_env())
    assert 'Load checkpoint from' in out and 'coco/bbox_mAP' in out
