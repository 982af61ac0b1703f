"""Checkpoint on the signal a cluster sends before it stops a job, and resume mid-epoch.

Slurm ends a preempted or timed-out job with SIGTERM (then SIGKILL after ``KillWait``) and, where
asked (``--signal=USR1@90``), warns it with SIGUSR1; torchrun passes a SIGTERM it gets on to
every rank. :class:`PreemptionHook` (``custom_hooks=[dict(type='mmfame.PreemptionHook')]``;
``tools/train.py`` adds it to configs without it) turns either signal into: finish the current
iteration (or stop the validation in progress), agree on it across ranks (the rank that got no
signal stops at the same iteration), save a resumable checkpoint with every rank taking part
(ZeRO and FSDP gather their shards), name it in ``last_checkpoint``, write a ``preempted.json``
record that launchers which report their own status (torchrun, srun) cannot lose, run every
hook's ``after_train`` and ``after_run`` as a finished run would, and end ``runner.train()``
with :class:`Preempted`: a ``SystemExit`` whose status is :data:`PREEMPTED_EXIT`
(``EX_TEMPFAIL``: "try again"), under any tool, which a notebook or a sweep can catch. Copies of
the signal (Slurm signals every process, a launcher forwards its own) are one preemption; a
repeat after the grace period stops at once, as does SIGINT. Handlers installed before the
hook's are called too (as PyTorch Lightning's signal connector does).

A checkpoint saved during a validation resumes by running that validation first. One saved
inside an epoch resumes inside it, by the position it records (``epoch_position.py``): the
batches the stopped run trained are skipped by index, or, with another world size or batch
size, the epoch's other samples are dealt to the new ranks. Each rank's random states are saved
with an epoch-based run's checkpoints and restored where the same number of ranks resumes it, as
its first batch is drawn: with no data loader workers, a resumed run draws the augmentations the
stopped run would have (workers reseed themselves from mmengine's seed: theirs start again).
Iteration-based loops replay their data iterator from the seed instead (mmengine's own resume).
"""
import json
import logging
import os
import os.path as osp
import signal
import socket
import threading
import time

import torch
from mmengine.dist import all_gather_object, all_reduce, barrier, get_dist_info, is_main_process
from mmengine.hooks import CheckpointHook, Hook
from mmengine.logging import print_log
from mmengine.runner import EpochBasedTrainLoop
from torch.utils.data import DataLoader

from mmfame.registry import HOOKS

from . import random_state
from .epoch_position import describe_layout, resumed_loader
from .fileio import ATOMIC_BACKEND
from .protocol import PREEMPTED_EXIT, PREEMPTION_RECORD, write_atomic

__all__ = ['PREEMPTED_EXIT', 'PREEMPTION_RECORD', 'Preempted', 'PreemptionHook']

SIGNALS = ('SIGTERM', 'SIGUSR1')
POSITION = 'epoch_position'  # checkpoint meta: where inside its epoch (epoch_position.py)
VALIDATE_FIRST = 'validate_first'  # checkpoint meta: stopped during the validation after it
RANDOM_STATES = 'random_states'  # checkpoint meta: each rank's (random_state.py), epoch-based


class Preempted(SystemExit):
    """How ``runner.train()`` ends on a preemption, once the checkpoint is saved and every hook's
    ``after_train``/``after_run`` has run: uncaught, the process exits with
    :data:`PREEMPTED_EXIT`. ``checkpoint`` is the file to resume from."""

    def __init__(self, checkpoint: str):
        super().__init__(PREEMPTED_EXIT)
        self.checkpoint = checkpoint


@HOOKS.register_module()
class PreemptionHook(Hook):
    """Save at the end of the iteration during which the job got SIGTERM or SIGUSR1 (on any
    rank), or at once during validation, and end training with :class:`Preempted`; resume an
    epoch-based run inside its epoch, with the stopped run's layout or another one.

    Runs after every other hook (lowest priority): a checkpoint the CheckpointHook wrote for
    this iteration is not written twice. Repeats of the stop signals within ``grace`` seconds of
    the first, or while the checkpoint is being written, are the same preemption (Slurm signals
    every process of a step and a launcher such as torchrun forwards its own copy); a repeat after
    ``grace`` seconds, before the save began, stops at once, as does SIGINT (not handled here).
    """
    priority = 'LOWEST'

    def __init__(self, signals=SIGNALS, grace: float = 30.0):
        bad = [s for s in signals if not isinstance(getattr(signal, str(s), None), signal.Signals)]
        if bad or not signals:
            raise ValueError(f'PreemptionHook: signals must be names of signals of this system, '
                             f'e.g. {list(SIGNALS)}, got {signals!r}')
        if not isinstance(grace, (int, float)) or isinstance(grace, bool) or grace < 0:
            raise ValueError(f'PreemptionHook: grace must be seconds >= 0, got {grace!r}')
        self.signals = [getattr(signal, s) for s in signals]
        self.grace = float(grace)
        self.received = None  # the name of the first signal received
        self.repeats = 0  # later copies taken as the same preemption
        self._first = self._saving = None
        self._stopped = False
        self._previous = {}
        self._full_loader = None
        self._segment = None  # the position this epoch's batches are counted from
        self._start_iter = 0  # runner.iter at the segment's first batch
        self._resumed = None  # the meta of the checkpoint loaded, until training starts
        self._val_checks = 0  # validation iterations on which every rank checks the signal
        self._random_states = None  # (iteration, every rank's random states after it)

    # ------------------------------------------------------------------ the signal
    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.received is None:
            self.received, self._first = signal.Signals(signum).name, now
            print_log(f'{self.received}: saving a checkpoint at the end of this iteration, then '
                      f'exiting with {PREEMPTED_EXIT} (resume with --resume). Repeats within '
                      f'{self.grace:g} s are the same preemption; SIGINT stops at once.',
                      logger='current', level=logging.WARNING)
        elif self._saving or now - self._first < self.grace:
            self.repeats += 1  # the same preemption (no logging here: it may hold a lock)
        else:  # asked again, well after the first, and the save has not begun: stop now
            self._restore()
            os.kill(os.getpid(), signum)  # to the handler that was there before ours
            return
        previous = self._previous.get(signum)
        if callable(previous) and not isinstance(getattr(previous, '__self__', None),
                                                 PreemptionHook):
            previous(signum, frame)  # another library's handler, installed before ours

    def _restore(self):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def before_train(self, runner) -> None:
        self.received, self.repeats, self._saving, self._stopped = None, 0, None, False
        if threading.current_thread() is not threading.main_thread():
            print_log('PreemptionHook: training runs outside the main thread, where signals '
                      'cannot be handled: a stop signal will not save a checkpoint.',
                      logger='current', level=logging.WARNING)
        else:
            for signum in self.signals:
                self._previous[signum] = signal.signal(signum, self._handle)
        if self._resumed_meta(runner).get(VALIDATE_FIRST) and runner.val_loop is not None:
            print_log('Resuming with the validation the stopped run was preempted in.',
                      logger='current')
            runner.val_loop.run()

    def after_train(self, runner) -> None:
        if not self._stopped:  # a preemption leaves the signals ignored until the exit
            self._restore()

    # ------------------------------------------------------------------ where the epoch is
    def after_load_checkpoint(self, runner, checkpoint) -> None:
        self._resumed = checkpoint.get('meta', {})  # acted on where training resumes from it

    def _resumed_meta(self, runner) -> dict:
        """The meta of the checkpoint training resumed from ({} for ``load_from`` weights)."""
        meta = self._resumed or {}
        return meta if runner.iter and meta.get('iter') == runner.iter else {}

    def before_train_epoch(self, runner) -> None:
        loop = runner.train_loop
        self._segment, self._start_iter = None, runner.iter
        meta, self._resumed = self._resumed_meta(runner), None
        if not isinstance(loop, EpochBasedTrainLoop) or not isinstance(loop.dataloader,
                                                                        DataLoader):
            return  # iteration-based loops replay their infinite iterator themselves
        rank, world_size = get_dist_info()
        layout = describe_layout(loop.dataloader, world_size)
        position = meta.get(POSITION)
        skip = runner.iter - runner.epoch * len(loop.dataloader)
        if meta and position is None and 0 < skip < len(loop.dataloader):
            print_log('resume: the checkpoint does not record the layout its position inside '
                      'the epoch was counted in: taking it as this run\'s.', logger='current',
                      level=logging.WARNING)  # written by an earlier mmfame
            position = dict(layout=layout, epoch=runner.epoch, batches=skip, before=None)
        restore = _restorer(meta.get(RANDOM_STATES), world_size, rank, loop.dataloader)
        if position is not None and position['epoch'] == runner.epoch:
            loader, self._segment, said = resumed_loader(position, loop.dataloader, world_size,
                                                         rank, first=restore)
            self._start_iter = runner.iter - self._segment['batches']
            print_log(said, logger='current')
            self._full_loader, loop.dataloader = loop.dataloader, loader
        else:
            self._segment = dict(layout=layout, epoch=runner.epoch, batches=0, before=None)
            if restore is not None:
                restore()  # before the loader draws its base seed, as the stopped run did

    def after_train_epoch(self, runner) -> None:
        self._segment = None
        if self._full_loader is not None:
            runner.train_loop.dataloader, self._full_loader = self._full_loader, None

    def before_save_checkpoint(self, runner, checkpoint) -> None:
        meta = checkpoint.setdefault('meta', {})
        if self._segment is not None and meta.get('epoch') == self._segment['epoch']:
            meta[POSITION] = dict(self._segment,
                                  batches=meta['iter'] - self._start_iter)  # inside the epoch
        if self._saving == 'val':
            meta[VALIDATE_FIRST] = True
        if isinstance(getattr(runner, '_train_loop', None), EpochBasedTrainLoop):
            if get_dist_info()[1] == 1:
                meta[RANDOM_STATES] = [random_state.capture()]
            elif self._random_states and self._random_states[0] == meta.get('iter'):
                meta[RANDOM_STATES] = self._random_states[1]

    def _gather_random_states(self, runner, step: int) -> None:
        """Every rank's random states after ``step`` iterations, gathered where every rank is:
        the Runner saves on rank 0 alone (``master_only``), with its hooks' additions."""
        if get_dist_info()[1] > 1 and isinstance(runner.train_loop, EpochBasedTrainLoop):
            self._random_states = (step, all_gather_object(random_state.capture()))

    # ------------------------------------------------------------------ stop and save
    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        loop = runner.train_loop
        if isinstance(loop, EpochBasedTrainLoop) and batch_idx == len(loop.dataloader) - 1:
            self._gather_random_states(runner, runner.iter + 1)  # for the epoch's checkpoint
        if self._agreed():
            self._stop(runner, runner.iter + 1, 'train')

    def before_val_epoch(self, runner) -> None:
        """Every rank checks the signal on as many validation iterations as the shortest rank
        has (a sampler that does not round up gives ranks unequal shares)."""
        if not self._previous:
            return  # a validation outside training
        loader = runner.val_loop.dataloader
        count = torch.tensor([len(loader) if hasattr(loader, '__len__') else 0])
        if get_dist_info()[1] > 1:
            all_reduce(count, op='min')
        self._val_checks = int(count.item())

    def after_val_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        if not self._previous or batch_idx >= self._val_checks:
            return  # a validation outside training (tools/test.py) or past the common part
        if self._agreed():
            self._stop(runner, runner.iter, 'val')

    def _stop(self, runner, step, during):
        """Save the state after ``step`` iterations (before the validation stopped, for
        ``during='val'``), record it, end the run as a finished one ends, and raise
        :class:`Preempted`."""
        self._saving = during
        self._gather_random_states(runner, step)
        ckpt_hook = next((h for h in runner.hooks if isinstance(h, CheckpointHook)), None)
        out_dir = getattr(ckpt_hook, 'out_dir', None) or runner.work_dir
        filename = f'iter_{step}.pth'
        path = osp.join(out_dir, filename)
        saved = runner.message_hub.get_info('last_ckpt')
        if during == 'val' or saved is None or osp.abspath(saved) != osp.abspath(path):
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
                during=during, checkpoint=path, config=_config_path(runner),
                job=os.environ.get('SLURM_JOB_ID'), host=socket.gethostname(), pid=os.getpid(),
                time=time.time())))
        barrier()  # no rank exits (and makes its launcher kill the others) before the save is done
        repeats = f' ({self.repeats} repeated signals were the same preemption)' \
            if self.repeats else ''
        print_log(f'Preempted{" during validation" * (during == "val")}: saved {path} after '
                  f'iteration {step}{repeats}; exiting with {PREEMPTED_EXIT}. Resume with '
                  '--resume.', logger='current', level=logging.WARNING)
        for signum in self._previous:  # saved: later copies must not kill the exit (Python
            signal.signal(signum, signal.SIG_IGN)  # restores the default handler at shutdown)
        self._stopped = True
        runner.call_hook('after_train')  # what the loop and the Runner call at a normal end
        runner.call_hook('after_run')
        raise Preempted(path)

    def _agreed(self) -> bool:
        """Whether any rank got the signal (every rank calls this on the same iterations)."""
        if get_dist_info()[1] == 1:
            return self.received is not None
        flag = torch.tensor([int(self.received is not None)], dtype=torch.int32)
        all_reduce(flag, op='max')
        return bool(flag.item())


def _restorer(states, world_size, rank, loader):
    """What restores this rank's random states from a checkpoint's ``states`` (None: nothing
    to restore, said why)."""
    if not states:
        return None
    if len(states) != world_size:
        print_log(f'resume: the checkpoint holds the random states of {len(states)} rank(s), '
                  f'this run has {world_size}: augmentations are drawn from the seed instead, '
                  'not as the stopped run would have.', logger='current', level=logging.WARNING)
        return None
    workers = getattr(loader, 'num_workers', 0)
    print_log(f'Resuming the random states of the stopped run\'s {world_size} rank(s)'
              + (f' (its {workers} data loader worker(s) reseed themselves)' if workers else '')
              + '.', logger='current')
    mine = [states[rank]]

    def restore():  # once: the loader may be iterated again
        if mine:
            random_state.restore(mine.pop())
    return restore


def _config_path(runner):
    filename = getattr(runner.cfg, 'filename', None)
    return osp.abspath(filename) if filename else None


def _write(path: str, text: str) -> None:
    write_atomic(path, text.encode())

