"""A matrix of runs (configs x settings x seeds) in one work dir, by concern: what it trains
(:mod:`.matrix`), who trains each run and what state it is in (:mod:`.state`), and starting
runs (:mod:`.launching`). This module gathers their public names for the tools."""
from .launching import LAUNCHERS, Launcher, claim, evaluate, launch, release
from .matrix import DATASETS, Matrix, Run, child_path, child_text, prepare, run_dir
from .state import STATES, describe, final_metrics, holder, state

__all__ = ['DATASETS', 'LAUNCHERS', 'STATES', 'Launcher', 'Matrix', 'Run', 'child_path',
           'child_text', 'claim', 'describe', 'evaluate', 'final_metrics', 'holder', 'launch',
           'prepare', 'release', 'run_dir', 'state']
