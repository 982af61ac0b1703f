"""mmfame.optim.groups from plain PyTorch: merging groups of equal settings changes nothing FAME
computes, keeps their first-appearance order, and refuses a parameter in two groups."""
import pytest
import torch

from mmfame import FAME
from mmfame.optim import merge_param_groups

# id: (per-parameter settings of 4 parameters, defaults, settings of the merged groups)
CASES = {
    'equal settings merge': ([{}, {}, {}, {}], {}, [{}]),
    'no decay on two, in first-appearance order': (
        [{'weight_decay': 0.}, {}, {'weight_decay': 0.}, {}], {}, [{'weight_decay': 0.}, {}]),
    'a setting equal to the default merges with none': (
        [{'lr': 1e-3}, {}, {'betas': [0.9, 0.999]}, {'betas': (0.9, 0.999)}], {'lr': 1e-3},
        [{'lr': 1e-3}, {'betas': [0.9, 0.999]}]),
}


@pytest.mark.parametrize('case', CASES)
def test_merged_groups_step_as_the_unmerged(case):
    settings, defaults, expected = CASES[case]
    torch.manual_seed(0)
    params = [torch.randn(3, requires_grad=True) for _ in settings]
    twins = [p.detach().clone().requires_grad_() for p in params]
    merged = merge_param_groups([dict(s, params=[p]) for s, p in zip(settings, params)], defaults)
    assert [{k: v for k, v in g.items() if k != 'params'} for g in merged] == expected
    assert sum(len(g['params']) for g in merged) == len(params)
    args = dict(lr=1e-3, weight_decay=0.05)
    optimizers = [FAME(merged, **args),
                  FAME([dict(s, params=[p]) for s, p in zip(settings, twins)], **args)]
    for _ in range(3):
        for p, q in zip(params, twins):
            p.grad = q.grad = torch.randn(3)
        for optimizer in optimizers:
            optimizer.step()
    for p, q in zip(params, twins):
        assert torch.equal(p, q)


def test_a_parameter_in_two_groups_is_refused():
    p = torch.zeros(2, requires_grad=True)
    with pytest.raises(ValueError, match='more than one parameter group'):
        merge_param_groups([dict(params=[p]), dict(params=[p], lr=1.)])
