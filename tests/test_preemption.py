"""PreemptionHook's signal handling: copies of one preemption are one, a deliberate repeat stops
at once through the handler it replaced, the handler installed before it hears every signal, and
it stays out of threads that cannot take signals; the random states it saves read back with
``weights_only=True`` and draw again what they drew. The saves, the agreement across ranks and the resumes run end to end in test_tools.py."""
import io
import os
import random
import signal
import threading
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from mmfame.runtime import PreemptionHook, random_state

RUNNER = SimpleNamespace(iter=0, val_loop=None)


@pytest.fixture
def previous():
    """A handler of SIGUSR1's installed before the hook (what it must hand a real stop to)."""
    calls = []
    old = signal.signal(signal.SIGUSR1, lambda signum, frame: calls.append(signum))
    yield calls
    signal.signal(signal.SIGUSR1, old)


def storm(count, pause=0.01):
    for _ in range(count):
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(pause)


# id: (grace, saving, signals after the first, repeats taken as the same preemption, signals the
# previous handler hears: it hears every one, from the hook or, once the hook gave up, directly)
STORMS = {
    'copies within the grace period': (30, None, 2, 2, 3),
    'a repeat after the grace period stops at once': (0, None, 1, 0, 2),
    'a repeat while the checkpoint is written': (0, 'train', 2, 2, 3),
}


@pytest.mark.parametrize('case', STORMS)
def test_repeated_signals(case, previous):
    grace, saving, later, repeats, handed_on = STORMS[case]
    hook = PreemptionHook(signals=('SIGUSR1',), grace=grace)
    hook.before_train(RUNNER)
    try:
        storm(1)
        hook._saving = saving
        storm(later)
        assert hook.received == 'SIGUSR1'
        assert hook.repeats == repeats
        assert len(previous) == handed_on
    finally:
        hook.after_train(RUNNER)
    storm(1)  # after training the previous handler is back
    assert len(previous) == handed_on + 1


def test_outside_the_main_thread_no_handler_is_installed(previous):
    hook = PreemptionHook(signals=('SIGUSR1',))
    thread = threading.Thread(target=hook.before_train, args=(RUNNER,))
    thread.start()
    thread.join()
    assert not hook._previous
    storm(1)
    assert hook.received is None and len(previous) == 1


@pytest.mark.parametrize('kwargs, words', [
    (dict(signals=('SIGNOPE',)), 'signals must be names of signals'),
    (dict(grace=-1), 'grace must be seconds >= 0'),
    (dict(grace='30'), 'grace must be seconds >= 0'),
])
def test_bad_arguments_are_refused(kwargs, words):
    with pytest.raises(ValueError, match=words):
        PreemptionHook(**kwargs)


def test_random_states_read_back_weights_only_and_draw_the_same():
    def draws():
        return random.random(), float(np.random.rand()), np.random.randn(), torch.rand(3).tolist()

    torch.manual_seed(1), np.random.seed(1), random.seed(1)
    draws()
    np.random.randn()  # a cached Gaussian is part of NumPy's state
    buf = io.BytesIO()
    torch.save(dict(meta=dict(random_states=[random_state.capture()])), buf)
    want = draws()
    buf.seek(0)
    states = torch.load(buf, weights_only=True)['meta']['random_states']
    random_state.restore(states[0])
    assert draws() == want

