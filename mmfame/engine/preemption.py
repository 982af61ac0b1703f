"""Checkpoint on the signal a cluster sends before it stops a job, and resume mid-epoch.

Slurm ends a preempted or timed-out job with SIGTERM (then SIGKILL after ``KillWait``) and, where
asked (``--signal=USR1@90``), warns it with SIGUSR1; torchrun passes a SIGTERM it gets on to
every rank. :class:`PreemptionHook` (added to every run by ``tools/train.py``) turns either
signal into: finish the current iteration, agree on it across ranks (the rank that got no signal
stops at the same iteration), save a resumable checkpoint with every rank taking part (ZeRO and
FSDP gather their shards), name it in ``last_checkpoint``, and exit with :data:`PREEMPTED_EXIT`
(``EX_TEMPFAIL``: "try again"), beside a ``preempted.json`` record that launchers which report
their own status (torchrun, srun) cannot lose. A second signal stops at once, as without the hook.

An epoch-based run stopped mid-epoch resumes inside that epoch: its first epoch skips, by index and
without loading them, the batches the stopped run had trained on (the sampler reshuffles per epoch
from the seed, so the remaining batches are exactly the ones the stopped epoch had not seen).
Random augmentation draws are not replayed: with workers they cannot be, so a resumed epoch sees
the same images in the same order with fresh augmentation draws.
"""
import itertools
import json
import logging
import os
import os.path as osp
import signal
import socket
import time

import torch
from mmengine.dist import all_reduce, barrier, get_dist_info, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.registry import HOOKS
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader

from .fileio import ATOMIC_BACKEND, AtomicLocalBackend
from .registry import register

__all__ = ['PREEMPTED_EXIT', 'PREEMPTION_RECORD', 'PreemptionHook', 'skip_first_batches']

PREEMPTED_EXIT = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, rerunning is meant to work
PREEMPTION_RECORD = 'preempted.json'  # written in the work dir beside the checkpoint
SIGNALS = ('SIGTERM', 'SIGUSR1')


class _SkipBatches:
    """A batch sampler that leaves out the first ``skip`` batches of ``batch_sampler``."""

    def __init__(self, batch_sampler, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip
        self.sampler = getattr(batch_sampler, 'sampler', None)

    def __iter__(self):
        return itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self):
        return max(0, len(self.batch_sampler) - self.skip)


def skip_first_batches(loader: DataLoader, skip: int) -> DataLoader:
    """A DataLoader over ``loader``'s dataset yielding its batches from the ``skip``-th on,
    without loading the ones before (its batch sampler is iterated, its dataset is not)."""
    workers = loader.num_workers
    return DataLoader(
        loader.dataset, batch_sampler=_SkipBatches(loader.batch_sampler, skip),
        num_workers=workers, collate_fn=loader.collate_fn, pin_memory=loader.pin_memory,
        timeout=loader.timeout, worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        generator=loader.generator, persistent_workers=False,
        **({'prefetch_factor': loader.prefetch_factor} if workers else {}))


class PreemptionHook(Hook):
    """Save and exit with :data:`PREEMPTED_EXIT` at the end of the iteration during which the
    job got SIGTERM or SIGUSR1 (on any rank); resume an epoch-based run inside its epoch.

    Runs after every other ``after_train_iter`` (lowest priority): a checkpoint the
    CheckpointHook wrote for this iteration is not written twice.
    """
    priority = 'LOWEST'

    def __init__(self, signals=SIGNALS):
        bad = [s for s in signals if not isinstance(getattr(signal, str(s), None), signal.Signals)]
        if bad or not signals:
            raise ValueError(f'PreemptionHook: signals must be names of signals of this system, '
                             f'e.g. {list(SIGNALS)}, got {signals!r}')
        self.signals = [getattr(signal, s) for s in signals]
        self.received = None  # the name of the first signal received
        self._previous = {}
        self._full_loader = None

    # ------------------------------------------------------------------ the signal
    def _handle(self, signum, frame):
        if self.received is not None:  # asked twice: stop now, as without this hook
            self._restore()
            os.kill(os.getpid(), signum)
            return
        self.received = signal.Signals(signum).name
        print_log(f'{self.received}: saving a checkpoint at the end of this iteration, then '
                  f'exiting with {PREEMPTED_EXIT} (resume with --resume). Send it again to stop '
                  'at once.', logger='current', level=logging.WARNING)

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def before_train(self, runner) -> None:
        self.received = None
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._handle)

    def after_train(self, runner) -> None:
        self._restore()

    # ------------------------------------------------------------------ resume mid-epoch
    def before_train_epoch(self, runner) -> None:
        loop = runner.train_loop
        if not isinstance(loop, EpochBasedTrainLoop) or not isinstance(loop.dataloader,
                                                                        DataLoader):
            return  # iteration-based loops replay their infinite iterator themselves
        skip = runner.iter - runner.epoch * len(loop.dataloader)
        if 0 < skip < len(loop.dataloader):
            print_log(f'Resuming epoch {runner.epoch + 1} after its first {skip} batches, which '
                      'the stopped run trained on.', logger='current')
            self._full_loader, loop.dataloader = loop.dataloader, skip_first_batches(
                loop.dataloader, skip)

    def after_train_epoch(self, runner) -> None:
        if self._full_loader is not None:
            runner.train_loop.dataloader, self._full_loader = self._full_loader, None

    # ------------------------------------------------------------------ stop and save
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self._agreed(runner):
            return
        step = runner.iter + 1
        ckpt_hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
        out_dir = getattr(ckpt_hook, 'out_dir', None) or runner.work_dir
        filename = f'iter_{step}.pth'
        path = osp.join(out_dir, filename)
        saved = runner.message_hub.get_info('last_ckpt')
        if saved is None or osp.abspath(saved) != osp.abspath(path):  # not saved this iteration
            runner.save_checkpoint(
                out_dir, filename, meta=dict(epoch=runner.epoch, iter=step), by_epoch=False,
                save_optimizer=getattr(ckpt_hook, 'save_optimizer', True),
                save_param_scheduler=getattr(ckpt_hook, 'save_param_scheduler', True),
                backend_args=dict(backend=ATOMIC_BACKEND))  # never half a file under its name
            if is_main_process():
                _write(osp.join(runner.work_dir, 'last_checkpoint'), path)
        if is_main_process():
            _write(osp.join(runner.work_dir, PREEMPTION_RECORD), json.dumps(dict(
                signal=self.received or 'another rank', iter=step, epoch=runner.epoch,
                checkpoint=path, host=socket.gethostname(), pid=os.getpid(), time=time.time())))
        barrier()  # no rank exits (and makes its launcher kill the others) before the save is done
        print_log(f'Preempted: saved {path} after iteration {step}; exiting with '
                  f'{PREEMPTED_EXIT}. Resume with --resume.', logger='current',
                  level=logging.WARNING)
        self._restore()
        raise SystemExit(PREEMPTED_EXIT)

    def _agreed(self, runner) -> bool:
        """Whether any rank got the signal (every rank calls this once per iteration)."""
        if get_dist_info()[1] == 1:
            return self.received is not None
        flag = torch.tensor([int(self.received is not None)], dtype=torch.int32)
        all_reduce(flag, op='max')
        return bool(flag.item())


def _write(path: str, text: str) -> None:
    AtomicLocalBackend().put(text.encode(), path)


register(HOOKS, 'PreemptionHook', PreemptionHook)
