"""Test helper hooks imported by the end-to-end runs' configs (tests/e2e.py: rank_config).

``RankStateHook``: at the end of a run every rank writes what it holds: the bytes of its optimizer
state (its shard under ZeRO or FSDP, all of it under DDP), a hash of its weights, the model
wrapper, and under Slurm its node and the MASTER_ADDR it joined.
``PauseAtHook``: every rank waits after iteration ``MMFAME_PAUSE_AT`` (or, with
``MMFAME_PAUSE_IN_VAL=1``, after the first iteration of the first validation) until it got a stop
signal or ``<work_dir>/go`` exists, so that a test signals a run at a known point.
``EndsHook``: every rank appends ``after_train`` and ``after_run`` to ``<work_dir>/ends_rank<R>``
when they are called (a preempted run calls them too).
``SampleLogHook``: every rank appends the epoch and the images of each batch it trains to
``<work_dir>/samples_rank<R>.jsonl``.
"""
import hashlib
import json
import os
import time

from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module(force=True)
class RankStateHook(Hook):

    def after_run(self, runner):
        optimizer = runner.optim_wrapper.optimizer
        local = getattr(optimizer, 'optim', optimizer)  # ZeroRedundancyOptimizer's own shard
        nbytes = sum(v.numel() * v.element_size() for state in local.state.values()
                     for k, v in state.items() if k != 'step')
        model = getattr(runner.model, 'module', runner.model)
        weights = hashlib.sha256()
        for name, p in sorted(model.named_parameters()):
            weights.update(name.encode())
            weights.update(p.detach().cpu().contiguous().numpy().tobytes())
        path = os.path.join(runner.work_dir, f'state_rank{get_rank()}.json')
        with open(path, 'w') as f:
            json.dump(dict(world_size=get_world_size(), state_bytes=nbytes,
                           optimizer=type(optimizer).__name__,
                           wrapper=type(runner.model).__name__, weights=weights.hexdigest(),
                           node=os.environ.get('SLURMD_NODENAME', '-'),
                           master_addr=os.environ.get('MASTER_ADDR', '-')), f)


@HOOKS.register_module(force=True)
class PauseAtHook(Hook):
    priority = 'VERY_LOW'  # before PreemptionHook (LOWEST) acts on the signal

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if runner.iter + 1 == int(os.environ.get('MMFAME_PAUSE_AT', 0)):
            self._pause(runner)

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        if os.environ.get('MMFAME_PAUSE_IN_VAL') == '1' and batch_idx == 0:
            os.environ['MMFAME_PAUSE_IN_VAL'] = '0'  # the first validation only
            self._pause(runner)

    def _pause(self, runner):
        preemption = next(h for h in runner.hooks if type(h).__name__ == 'PreemptionHook')
        with open(os.path.join(runner.work_dir, f'paused_rank{get_rank()}'), 'w') as f:
            f.write(str(os.getpid()))
        deadline = time.time() + 300
        go = os.path.join(runner.work_dir, 'go')
        while preemption.received is None and not os.path.exists(go) and time.time() < deadline:
            time.sleep(0.1)


@HOOKS.register_module(force=True)
class SampleLogHook(Hook):

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        images = [os.path.basename(s.img_path) for s in data_batch['data_samples']]
        path = os.path.join(runner.work_dir, f'samples_rank{get_rank()}.jsonl')
        with open(path, 'a') as f:
            f.write(json.dumps(dict(epoch=runner.epoch, images=images)) + '\n')


@HOOKS.register_module(force=True)
class EndsHook(Hook):

    def after_train(self, runner):
        self._record(runner, 'after_train')

    def after_run(self, runner):
        self._record(runner, 'after_run')

    def _record(self, runner, name):
        with open(os.path.join(runner.work_dir, f'ends_rank{get_rank()}'), 'a') as f:
            f.write(name + '\n')
