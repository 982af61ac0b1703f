"""Where a stopped epoch was, counted in samples, and how to go on from there with any layout.

A checkpoint saved inside an epoch records its position: how many batches each rank had trained
and the layout they were counted in (world size, batch size per rank, the sampler's seed, shuffle
and round-up, the batch sampler, the dataset's length). A resume with the same layout skips those
batches by index: the rest of the epoch, in the order the stopped run would have trained it. With
another world size, batch size or sampler seed (mmengine's ``DefaultSampler``), the batches the
stopped ranks trained are replayed from the record and the epoch's other samples, in the epoch's
shuffled order, are dealt to the new ranks as ``DefaultSampler`` deals an epoch (padded to a
multiple of the world size where it rounds up), so every sample is trained once in the epoch.
A position counted in a re-dealt remainder keeps the one before it (``before``), so a second
stop in the same epoch resumes as exactly. Anything else is refused, naming both layouts.
"""
import itertools
import math
from typing import List, Optional, Set

import torch
from torch.utils.data import DataLoader, Sampler

__all__ = ['describe_layout', 'layout_text', 'resumed_loader', 'trained_samples']

DEFAULT_SAMPLER = 'mmengine.dataset.sampler.DefaultSampler'


SHAPE = ('world_size', 'batch_size', 'drop_last', 'batch_sampler', 'dataset_len')
ORDER = ('sampler', 'seed', 'shuffle', 'round_up')


def _name(cls) -> str:
    return f'{cls.__module__}.{cls.__qualname__}'


def describe_layout(loader: DataLoader, world_size: int) -> dict:
    """The layout ``loader``'s batches are counted in on ``world_size`` ranks."""
    batches = loader.batch_sampler
    sampler = getattr(batches, 'sampler', None)
    return dict(world_size=world_size, batch_size=getattr(batches, 'batch_size', None),
                drop_last=bool(getattr(batches, 'drop_last', False)),
                batch_sampler=_name(type(batches)), sampler=_name(type(sampler)),
                seed=getattr(sampler, 'seed', None), shuffle=getattr(sampler, 'shuffle', None),
                round_up=getattr(sampler, 'round_up', None), dataset_len=len(loader.dataset))


def layout_text(layout: dict) -> str:
    ranks = layout['world_size']
    return (f"{ranks} rank{'s' * (ranks != 1)} x batch {layout['batch_size']} "
            f"({layout['sampler'].rsplit('.', 1)[-1]} seed {layout['seed']}, "
            f"{layout['batch_sampler'].rsplit('.', 1)[-1]}, {layout['dataset_len']} samples)")


class _Indices(Sampler):
    """A fixed list of dataset indices (batch samplers such as mmdet's AspectRatioBatchSampler
    read ``sampler.dataset``)."""

    def __init__(self, indices: List[int], dataset):
        self.indices, self.dataset = indices, dataset

    def __iter__(self):
        return iter(self.indices)

    def __len__(self):
        return len(self.indices)


class _SkipBatches:
    """The batches of ``batch_sampler`` from the ``skip``-th on; ``first`` is called as the first
    one is drawn (after the DataLoader drew its base seed from torch's random state)."""

    def __init__(self, batch_sampler, skip: int, first=None):
        self.batch_sampler, self.skip, self.first = batch_sampler, skip, first
        self.sampler = getattr(batch_sampler, 'sampler', None)

    def __iter__(self):
        if self.first is not None:
            self.first()
        yield from itertools.islice(iter(self.batch_sampler), self.skip, None)

    def __len__(self):
        return max(0, len(self.batch_sampler) - self.skip)


def _loader_with(loader: DataLoader, batch_sampler) -> DataLoader:
    """``loader`` with another batch sampler (its dataset, workers and collate kept)."""
    workers = loader.num_workers
    return DataLoader(
        loader.dataset, batch_sampler=batch_sampler, num_workers=workers,
        collate_fn=loader.collate_fn, pin_memory=loader.pin_memory, timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        multiprocessing_context=loader.multiprocessing_context if workers else None,
        generator=loader.generator, persistent_workers=False,
        **({'prefetch_factor': loader.prefetch_factor} if workers else {}))


def _root(position: dict) -> dict:
    while position.get('before'):
        position = position['before']
    return position


def _deal(order: List[int], world_size: int, rank: int, round_up: bool) -> List[int]:
    """Rank ``rank``'s share of ``order``, as mmengine's DefaultSampler deals an epoch."""
    if round_up and order:
        total = math.ceil(len(order) / world_size) * world_size
        order = (order * (total // len(order) + 1))[:total]
    return order[rank::world_size]


def _segment_order(position: dict, dataset, cls) -> List[int]:
    """The samples ``position``'s layout dealt: the epoch's order less what earlier layouts
    trained."""
    root = _root(position)['layout']
    if root['shuffle']:
        g = torch.Generator()
        g.manual_seed(root['seed'] + position['epoch'])
        order = torch.randperm(root['dataset_len'], generator=g).tolist()
    else:
        order = list(range(root['dataset_len']))
    if position.get('before'):
        seen = trained_samples(position['before'], dataset, cls)
        order = [i for i in order if i not in seen]
    return order


def _rank_batches(layout: dict, order: List[int], rank: int, dataset, cls):
    """Rank ``rank``'s batch sampler over its share of ``order`` in ``layout``."""
    share = _deal(order, layout['world_size'], rank, bool(layout['round_up']))
    return cls(_Indices(share, dataset), layout['batch_size'], layout['drop_last'])


def trained_samples(position: dict, dataset, cls) -> Set[int]:
    """The dataset indices that every rank had trained in ``position``'s epoch, replayed with
    batch sampler class ``cls`` (a DefaultSampler order)."""
    seen = trained_samples(position['before'], dataset, cls) if position.get('before') else set()
    order = _segment_order(position, dataset, cls)
    for rank in range(position['layout']['world_size']):
        batches = _rank_batches(position['layout'], order, rank, dataset, cls)
        seen.update(itertools.chain.from_iterable(
            itertools.islice(iter(batches), position['batches'])))
    return seen


def _same(a: dict, b: dict, keys) -> bool:
    return all(a.get(k) == b.get(k) for k in keys)


def _why_not_redealt(position: dict, layout: dict, batch_sampler_cls) -> Optional[str]:
    root = _root(position)['layout']
    if layout['dataset_len'] != root['dataset_len']:
        return 'the dataset has another length'
    for lay in (root, layout):
        if lay['sampler'] != DEFAULT_SAMPLER or lay['seed'] is None:
            return f"only mmengine's DefaultSampler is re-dealt, not {lay['sampler']}"
    if _name(batch_sampler_cls) != position['layout']['batch_sampler']:
        return (f"the batch sampler changed ({position['layout']['batch_sampler']} -> "
                f'{_name(batch_sampler_cls)})')
    try:
        batch_sampler_cls(_Indices([], None), 1, False)
    except Exception as e:  # noqa: BLE001 (any batch sampler)
        return f'{_name(batch_sampler_cls)} cannot be built over a list of indices ({e})'
    return None


def resumed_loader(position: dict, loader: DataLoader, world_size: int, rank: int, first=None):
    """(loader for the rest of ``position``'s epoch on this rank, the position its batches
    continue counting (``batches`` = how many of them are done), what it does, in words).
    ``first`` is called as the loader draws its first batch.

    Raises RuntimeError, naming both layouts and the choices, where it cannot be done exactly.
    """
    layout = describe_layout(loader, world_size)
    cls = type(loader.batch_sampler)
    done, epoch = position['batches'], position['epoch']
    if not position.get('before') and _same(layout, position['layout'], SHAPE + ORDER):
        return (_loader_with(loader, _SkipBatches(loader.batch_sampler, done, first)),
                dict(position),
                f'Resuming epoch {epoch + 1} after its first {done} batches, which the stopped '
                'run trained on.')
    why = _why_not_redealt(position, layout, cls)
    if why is not None:
        raise RuntimeError(
            f'--resume: the checkpoint stopped inside epoch {epoch + 1} after {done} batches of '
            f"{layout_text(position['layout'])}; this run has {layout_text(layout)}, and the rest "
            f'of that epoch cannot be dealt to it: {why}. Resume with the stopped layout '
            f"({position['layout']['world_size']} processes, train_dataloader.batch_size="
            f"{position['layout']['batch_size']}), or resume from the checkpoint of the epoch's "
            f'start (--resume WORK_DIR/epoch_{epoch}.pth) to train that epoch again whole.')
    if position.get('before') and _same(layout, position['layout'], SHAPE):
        segment = dict(position)  # the same remainder, dealt the same way: skip what is done
    else:
        segment = dict(layout=layout, epoch=epoch, batches=0, before=position)
        done = 0
    order = _segment_order(segment, loader.dataset, cls)
    batches = _rank_batches(layout, order, rank, loader.dataset, cls)
    total = len(order)
    seen = len(trained_samples(segment['before'], loader.dataset, cls))
    return (_loader_with(loader, _SkipBatches(batches, done, first)), segment,
            f'Resuming epoch {epoch + 1} with another layout: the stopped run trained {seen} of '
            f"its {layout['dataset_len']} samples on {layout_text(segment['before']['layout'])}; "
            f'this run trains the other {total} on {layout_text(layout)}, '
            f'{len(batches) - done} batches per rank.')
