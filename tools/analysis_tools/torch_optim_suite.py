"""Run torch's own optimizer test suite (``test/test_optim.py``, ``TestOptimRenewed``) on FAME.

torch's wheel ships the suite's tables (``torch.testing._internal.common_optimizers``) but not the
test file: pass the ``test_optim.py`` of a PyTorch source tree of your torch release. FAME's
``OptimizerInfo`` (Adam's, without ``capturable``/``differentiable``, with FAME's own settings) is
added to the table before pytest imports the file, so every generic test makes FAME cases, and
only those run. Needs ``pip install expecttest``.

    python tools/analysis_tools/torch_optim_suite.py PATH/test/test_optim.py [PYTEST ARGS]

FAME's error inputs are torch's for every optimizer and Adam's range errors, less FAME's
deliberate departures (docs/pytorch.md): a parameter listed twice in a group is an error,
where torch warns; a Tensor lr works with foreach (Adam refuses it without capturable); betas are
numbers, not tensors. FAME has no ``capturable`` or ``differentiable`` argument (its fused kernel
reads the step count on the device without one), so those inputs and tests do not apply.
"""
import argparse
import sys

import pytest
import torch

from mmfame import FAME


def fame_inputs(device, dtype=None):
    from torch.testing._internal.common_optimizers import OptimizerInput
    configs = {
        'default': {},
        'non-default lr': dict(lr=0.01),
        'nonzero weight_decay': dict(weight_decay=0.1),
        'maximize': dict(weight_decay=0.1, maximize=True),
        'amsgrad': dict(weight_decay=0.1, amsgrad=True),
        'L2 weight decay': dict(weight_decay=0.1, decoupled_weight_decay=False),
        'full FAME': dict(sq_betas=(0.3, 0.7)),
        'no TEMA (beta3 = beta4 = 0)': dict(beta3=0.0, beta4=0.0),
        'Tensor lr': dict(lr=torch.tensor(0.001)),
    }
    return [OptimizerInput(params=None, kwargs=kwargs, desc=desc)
            for desc, kwargs in configs.items()]


def fame_error_inputs(device, dtype):
    from torch.testing._internal.common_optimizers import (ErrorOptimizerInput, OptimizerInput,
                                                           get_error_inputs_for_all_optims)
    # A parameter listed twice in one group: torch warns that it will become an error; FAME
    # refuses it (it would be stepped twice).
    inputs = [e for e in get_error_inputs_for_all_optims(device, dtype)
              if e.error_type is not UserWarning]
    if torch.device(device).type == 'cpu':
        inputs += [
            ErrorOptimizerInput(OptimizerInput(params=None, kwargs=dict(lr=1e-2, betas=(1.0, 0.0)),
                                               desc='beta1 should be between 0 and 1'),
                                error_type=ValueError,
                                error_regex='Invalid beta parameter at index 0: 1.0'),
            ErrorOptimizerInput(OptimizerInput(params=None, kwargs=dict(lr=1e-2, weight_decay=-1),
                                               desc='weight_decay should > 0'),
                                error_type=ValueError,
                                error_regex='Invalid weight_decay value: -1'),
            ErrorOptimizerInput(OptimizerInput(params=None, kwargs=dict(lr=1e-2, eps=-1.0),
                                               desc='eps should >= 0'),
                                error_type=ValueError, error_regex='Invalid epsilon value: -1.0'),
        ]
    return inputs


def fame_info():
    from torch.testing._internal.common_optimizers import OptimizerInfo
    return OptimizerInfo(FAME, optim_inputs_func=fame_inputs,
                         optim_error_inputs_func=fame_error_inputs,
                         supported_impls=('foreach', 'fused'),
                         not_og_supported_flags=('foreach', 'fused', 'maximize'),
                         supports_fused_on=('cuda',))


def stand_in_siblings(path):
    """test_optim.py imports other suites' classes from ``test/optim/``; where the file was
    copied alone, stand empty ones in (their tests are not FAME's). They are torch ``TestCase``s,
    as the real ones are: torch's test machinery (``instantiate_device_type_tests``) copies a
    class's attributes, which a plain class's ``__dict__`` descriptor refuses."""
    import importlib.util
    import os.path as osp
    import types

    from torch.testing._internal.common_utils import TestCase
    sys.path.insert(0, osp.dirname(osp.abspath(path)))
    if importlib.util.find_spec('optim') is not None:
        return
    sys.modules['optim'] = types.ModuleType('optim')
    for module, name in (('test_lrscheduler', 'TestLRScheduler'),
                         ('test_optim', 'TestDifferentiableOptimizer'),
                         ('test_swa_utils', 'TestSWAUtils')):
        stub = sys.modules[f'optim.{module}'] = types.ModuleType(f'optim.{module}')
        setattr(stub, name, type(name, (TestCase,), {'__module__': stub.__name__}))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog=__doc__.split('\n', 2)[2])
    p.add_argument('test_file', metavar='PATH/test/test_optim.py',
                   help="test_optim.py of a PyTorch source tree of your torch release (alone, or "
                   "with its test/optim/ beside it)")
    p.add_argument('pytest_args', nargs=argparse.REMAINDER, metavar='PYTEST ARGS',
                   help="passed to pytest after the file (e.g. -x, -v, -k 'test_errors')"
                   ).required = False  # optional (argparse would name it in a usage error)
    return p.parse_args(argv)


def require_expecttest():
    """torch's test utilities import expecttest, which torch's wheel does not install."""
    try:
        import expecttest  # noqa: F401
    except ImportError:
        sys.exit("torch_optim_suite.py: torch's test suite needs the expecttest package, which "
                 'is not installed: pip install expecttest')


def main(argv=None):
    args = parse_args(argv)
    require_expecttest()
    from torch.testing._internal import common_optimizers
    common_optimizers.optim_db.append(fame_info())
    stand_in_siblings(args.test_file)
    sys.exit(pytest.main([args.test_file, '-k', 'FAME', '-q', '-p', 'no:cacheprovider',
                         *args.pytest_args]))


if __name__ == '__main__':
    main()
