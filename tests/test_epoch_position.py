"""A stopped epoch resumed with the same or another layout trains each of its samples once
(mmfame/runtime/epoch_position.py), checked against mmengine's own DefaultSampler on every rank."""
import collections
import math

import pytest
import torch
from mmengine.dataset import DefaultSampler
from torch.utils.data import BatchSampler, DataLoader, SequentialSampler

from mmfame.runtime.epoch_position import describe_layout, resumed_loader, trained_samples


class Images(torch.utils.data.Dataset):
    """n samples; get_data_info gives an aspect ratio (mmdet's AspectRatioBatchSampler)."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return i

    def get_data_info(self, i):
        return dict(width=2 if i % 3 else 1, height=1)


def rank_loader(dataset, rank, world_size, batch_size, seed=0, epoch=1, batches=BatchSampler,
                sampler_cls=DefaultSampler):
    """The train DataLoader rank ``rank`` of ``world_size`` builds (mmengine's Runner)."""
    if sampler_cls is DefaultSampler:
        sampler = DefaultSampler(dataset, shuffle=True, seed=seed)
        sampler.rank, sampler.world_size = rank, world_size  # as get_dist_info would give
        sampler.num_samples = math.ceil(len(dataset) / world_size)
        sampler.total_size = sampler.num_samples * world_size
        sampler.set_epoch(epoch)
    else:
        sampler = sampler_cls(dataset)
    return DataLoader(dataset, batch_sampler=batches(sampler, batch_size, False),
                      collate_fn=lambda b: b)


def layouts(dataset, world_size, batch_size, **kw):
    return [rank_loader(dataset, r, world_size, batch_size, **kw) for r in range(world_size)]


def stop(loaders, batches, epoch=1):
    """Train ``batches`` batches on every rank; (what they trained, the recorded position)."""
    trained = [i for lo in loaders for b in list(lo)[:batches] for i in b]
    position = dict(layout=describe_layout(loaders[0], len(loaders)), epoch=epoch,
                    batches=batches, before=None)
    return trained, position


def resume(position, loaders):
    """Each new rank's rest of the epoch: (what they train, the position, the log line)."""
    out = [resumed_loader(position, lo, len(loaders), r) for r, lo in enumerate(loaders)]
    assert len({len(lo) for lo, _, _ in out}) == 1, 'ranks must train as many batches'
    return [i for lo, _, _ in out for b in lo for i in b], out[0][1], out[0][2]


def aspect_ratio_batch_sampler():
    return pytest.importorskip('mmdet.datasets.samplers').AspectRatioBatchSampler


# id: (samples, (ranks, batch) stopped, batches trained, (ranks, batch) resumed, batch sampler)
CASES = {
    '2x2 -> 1x3': (20, (2, 2), 3, (1, 3), BatchSampler),
    '1x3 -> 2x2': (20, (1, 3), 2, (2, 2), BatchSampler),
    '2x2 -> 3x1, padded': (21, (2, 2), 2, (3, 1), BatchSampler),
    '2x2 -> 4x2 aspect ratio': (23, (2, 2), 3, (4, 2), 'aspect'),
}


@pytest.mark.parametrize('case', CASES)
def test_a_new_layout_trains_what_the_stopped_epoch_had_not(case):
    n, (w0, b0), k, (w1, b1), batches = CASES[case]
    batches = aspect_ratio_batch_sampler() if batches == 'aspect' else batches
    data = Images(n)
    before, position = stop(layouts(data, w0, b0, batches=batches), k)
    after, _, said = resume(position, layouts(data, w1, b1, batches=batches))
    assert set(before).isdisjoint(after)
    assert set(before) | set(after) == set(range(n))
    counts = collections.Counter(after)
    assert sum(counts.values()) - len(counts) < w1, 'repeats only to pad the last round'
    assert f'the stopped run trained {len(set(before))} of its {n} samples' in said
    assert f'this run trains the other {n - len(set(before))}' in said


def test_the_same_layout_skips_the_trained_batches_in_order():
    data = Images(20)
    loaders = layouts(data, 2, 2)
    full = [list(lo) for lo in loaders]
    _, position = stop(loaders, 3)
    out = [resumed_loader(position, lo, 2, r) for r, lo in enumerate(loaders)]
    assert [list(lo) for lo, _, _ in out] == [f[3:] for f in full]
    assert out[0][2] == 'Resuming epoch 2 after its first 3 batches, which the stopped run ' \
        'trained on.'


def test_a_second_stop_inside_a_redealt_epoch_resumes_as_exactly():
    """2x2 stops, 1x3 trains a bit and stops, 3x1 finishes: every sample once."""
    data = Images(30)
    first, position = stop(layouts(data, 2, 2), 2)
    loaders = [resumed_loader(position, lo, 1, 0)[0] for lo in layouts(data, 1, 3)]
    second_position = resumed_loader(position, layouts(data, 1, 3)[0], 1, 0)[1]
    second = [i for b in list(loaders[0])[:2] for i in b]
    assert set(trained_samples(dict(second_position, batches=2), data, BatchSampler)) == \
        set(first) | set(second)
    third, _, _ = resume(dict(second_position, batches=2), layouts(data, 3, 1))
    assert set(first) | set(second) | set(third) == set(range(30))
    assert not (set(first) | set(second)) & set(third)
    # the same layout again continues its own remainder
    again = resumed_loader(dict(second_position, batches=2), layouts(data, 1, 3)[0], 1, 0)
    assert [i for b in again[0] for i in b] == [i for b in list(loaders[0])[2:] for i in b]


def test_another_seed_is_redealt_from_the_recorded_order():
    data = Images(20)
    before, position = stop(layouts(data, 2, 2, seed=0), 2)
    after, _, _ = resume(position, layouts(data, 2, 2, seed=7))
    assert set(before) | set(after) == set(range(20)) and set(before).isdisjoint(after)


@pytest.mark.parametrize('change', ['world size', 'dataset'])
def test_what_cannot_be_redealt_is_refused_naming_both_layouts(change):
    data = Images(20)
    _, position = stop(layouts(data, 2, 2, sampler_cls=SequentialSampler), 2)
    if change == 'world size':
        new, why = layouts(data, 1, 2, sampler_cls=SequentialSampler), 'SequentialSampler'
    else:
        new, why = layouts(Images(24), 2, 2, sampler_cls=SequentialSampler), 'another length'
    with pytest.raises(RuntimeError) as e:
        resumed_loader(position, new[0], len(new), 0)
    text = str(e.value)
    assert why in text and '2 ranks x batch 2' in text, text
    assert 'train_dataloader.batch_size=2' in text and 'epoch_1.pth' in text, text
