"""Iterations lost per preemption when each rank gets the stop signal more than once.

Under ``srun torchrun ...`` Slurm signals every process of the step and torchrun forwards its own
copy a moment later. Each trial trains a toy mmengine Runner (iteration-based, ``--iter-s`` per
iteration, checkpoints every 20) with ``PreemptionHook(grace=G)`` in a fresh process, sends
SIGTERM at a random moment and ``--copies`` - 1 copies, each up to ``--delay-s`` after the one
before, and reads what was saved: the iterations lost are those finished before the signal that
the next ``--resume`` would not have. ``--grace 0`` is the behaviour before copies were merged
(any repeat stops at once, saving nothing).

    python tools/analysis_tools/preemption_trials.py --trials 20 --grace 30 0
"""
import argparse
import json
import os
import os.path as osp
import random
import signal
import subprocess
import sys
import tempfile
import time

TRIAL = r'''
import os, sys, time
import torch
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.registry import HOOKS
from mmengine.runner import Runner
import mmfame  # noqa: F401  (registers PreemptionHook)


class Toy(BaseModel):
    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(4))

    def forward(self, *batch, mode='loss'):
        time.sleep(float(sys.argv[3]))
        return dict(loss=(self.w ** 2).sum())


@HOOKS.register_module()
class InFlight(Hook):  # the iteration in flight, for the trial to read when it signals
    def before_train_iter(self, runner, batch_idx, data_batch=None):
        with open(os.path.join(runner.work_dir, 'in_flight'), 'w') as f:
            f.write(str(runner.iter + 1))


work, grace = sys.argv[1], float(sys.argv[2])
Runner(model=Toy(), work_dir=work, train_dataloader=dict(
           dataset=[torch.ones(4)] * 8, sampler=dict(type='InfiniteSampler'), batch_size=1,
           collate_fn=dict(type='pseudo_collate')),
       optim_wrapper=dict(optimizer=dict(type='FAME', lr=1e-3)),
       train_cfg=dict(by_epoch=False, max_iters=100000),
       default_hooks=dict(checkpoint=dict(type='CheckpointHook', interval=20, by_epoch=False),
                          logger=dict(type='LoggerHook', interval=1000)),
       custom_hooks=[dict(type='InFlight'), dict(type='mmfame.PreemptionHook', grace=grace)]).train()
'''


def trial(grace: float, copies: int, iter_s: float, delay_s: float, rng) -> dict:
    with tempfile.TemporaryDirectory() as work:
        proc = subprocess.Popen([sys.executable, '-c', TRIAL, work, str(grace), str(iter_s)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while not osp.exists(osp.join(work, 'in_flight')):
            time.sleep(0.05)
        time.sleep(rng.uniform(1.0, 2.0))  # a few iterations in, at a random moment
        in_flight = int(open(osp.join(work, 'in_flight')).read() or 0)
        for _ in range(copies):
            os.kill(proc.pid, signal.SIGTERM)
            time.sleep(rng.uniform(0.0, delay_s))  # the next copy
        rc = proc.wait(timeout=120)
        try:
            saved = json.load(open(osp.join(work, 'preempted.json')))['iter']
        except OSError:
            last = open(osp.join(work, 'last_checkpoint')).read() \
                if osp.exists(osp.join(work, 'last_checkpoint')) else ''
            saved = int(osp.basename(last)[5:-4]) if last else 0
        return dict(rc=rc, lost=max(0, in_flight - 1 - saved))


def main():
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('--trials', type=int, default=20)
    p.add_argument('--copies', type=int, default=2, help='signals per preemption')
    p.add_argument('--iter-s', type=float, default=0.3, help='seconds per iteration')
    p.add_argument('--delay-s', type=float, default=0.3, help='most seconds between copies')
    p.add_argument('--grace', type=float, nargs='+', default=[30.0, 0.0])
    p.add_argument('--seed', type=int, default=0)
    args = p.parse_args()
    print(f'{args.copies} signals per preemption, {args.iter_s:g} s per iteration, copies up to '
          f'{args.delay_s:g} s apart\n')
    print('| grace (s) | trials | saved and exited 75 | iterations lost: mean | max |')
    print('|---|---|---|---|---|')
    for grace in args.grace:
        rng = random.Random(args.seed)
        results = [trial(grace, args.copies, args.iter_s, args.delay_s, rng)
                   for _ in range(args.trials)]
        lost = [r['lost'] for r in results]
        saved = sum(r['rc'] == 75 for r in results)
        print(f'| {grace:g} | {args.trials} | {saved} | {sum(lost) / len(lost):.1f} | '
              f'{max(lost)} |', flush=True)


if __name__ == '__main__':
    main()
