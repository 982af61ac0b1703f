"""Time FAME's implementations against torch AdamW on the same parameters, in the same run.

Prints, per parameter set and implementation: ms/step (median), effective GB/s (FAME counted at its
single-pass 44 B/param, AdamW at 28 B/param, fp32), % of that roofline at the copy bandwidth
measured in this run, ratios against fused AdamW, and peak extra memory during a step (CUDA).

    python tools/analysis_tools/benchmark_optimizer.py                      # CPU
    python tools/analysis_tools/benchmark_optimizer.py --device cuda --sets resnet50 large small
    python tools/analysis_tools/benchmark_optimizer.py --sets resnet50 --compile   # + compiled
"""
import argparse
import contextlib
import gc
import statistics
import time

import torch

from mmfame import FAME
from mmfame.optim import fame as fame_module
from mmfame.optim._core import STATE_BYTES

# Single-pass traffic in fp32: p and g read, p written, and the state read and written once
# (FAME: 44 B/param, full FAME 60, AdamW 28).
BYTES_PER_PARAM = {name: 4 * 3 + 2 * state for name, state in STATE_BYTES.items()}


def resnet50_shapes():
    """The 161 parameter tensors of torchvision's ResNet-50 (25,557,032 params)."""
    shapes = [(64, 3, 7, 7), (64,), (64,)]
    inplanes = 64
    for width, blocks in zip((64, 128, 256, 512), (3, 4, 6, 3)):
        for b in range(blocks):
            shapes += [(width, inplanes, 1, 1), (width,), (width,), (width, width, 3, 3),
                       (width,), (width,), (width * 4, width, 1, 1), (width * 4,), (width * 4,)]
            if b == 0:
                shapes += [(width * 4, inplanes, 1, 1), (width * 4,), (width * 4,)]
            inplanes = width * 4
    return shapes + [(1000, 2048), (1000,)]


def param_sets(device):
    large_numel = (1 << 30) if device == 'cuda' else (1 << 26)  # ~1.07 B on GPU, 67 M on CPU
    return {
        'resnet50': resnet50_shapes(),
        'large': [(large_numel // 8,)] * 8,
        'small': [(1000 + 7 * i % 3000,) for i in range(2000)],
    }


def impls(device, compiled=False):
    fame_impls = {'for-loop': dict(foreach=False), 'foreach': dict(foreach=True),
                  'default': dict()}
    if device == 'cpu':  # what the foreach chain's cache blocking (CPU_BLOCK_NUMEL) buys
        fame_impls['foreach, unblocked'] = dict(foreach=True)
    adamw_impls = {'for-loop': dict(foreach=False), 'foreach': dict(foreach=True),
                   'fused': dict(fused=True)}
    if device == 'cuda':
        fame_impls['fused'] = dict(fused=True)
    for name, kw in fame_impls.items():
        yield 'FAME', name, lambda ps, kw=kw: FAME(ps, lr=1e-3, weight_decay=0.01, **kw)
    yield 'FAME-full', 'default', lambda ps: FAME(ps, lr=1e-3, weight_decay=0.01,
                                                  sq_betas=(0.3, 0.7))
    for name, kw in adamw_impls.items():
        yield 'AdamW', name, lambda ps, kw=kw: torch.optim.AdamW(ps, lr=1e-3,
                                                                  weight_decay=0.01, **kw)
    if compiled:  # torch.compile(opt.step): the default of each (foreach), fused by inductor
        yield 'FAME', 'compiled', lambda ps: FAME(ps, lr=1e-3, weight_decay=0.01)
        yield 'AdamW', 'compiled', lambda ps: torch.optim.AdamW(ps, lr=1e-3, weight_decay=0.01)


def sync(device):
    if device == 'cuda':
        torch.cuda.synchronize()


def copy_bandwidth(device, numel):
    """GB/s of a large copy, counting bytes read plus bytes written."""
    src = torch.randn(numel, device=device)
    dst = torch.empty_like(src)
    times = []
    for _ in range(12):
        sync(device)
        t0 = time.perf_counter()
        dst.copy_(src)
        sync(device)
        times.append(time.perf_counter() - t0)
    return 2 * src.numel() * 4 / statistics.median(times[2:]) / 1e9


@contextlib.contextmanager
def cpu_blocks(impl):
    """The foreach chain's CPU slices as shipped, or none (one slice per tensor) for
    'foreach, unblocked'."""
    default = fame_module.CPU_BLOCK_NUMEL
    if impl.endswith('unblocked'):
        fame_module.CPU_BLOCK_NUMEL = 1 << 62
    try:
        yield
    finally:
        fame_module.CPU_BLOCK_NUMEL = default


def bench(make_opt, shapes, device, steps, warmup, compiled=False):
    gen = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, device=device, generator=gen).requires_grad_() for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=gen)
    opt = make_opt(params)
    step = opt.step
    if compiled:
        torch._dynamo.reset()
        step = torch.compile(opt.step)
    t0 = time.perf_counter()
    for _ in range(warmup):
        step()
    sync(device)
    if compiled:
        print(f'  {type(opt).__name__} compiled: {time.perf_counter() - t0:.1f} s to compile and '
              f'run {warmup} warm-up steps', flush=True)
    peak = None
    if device == 'cuda':
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step()
        sync(device)
        peak = (torch.cuda.max_memory_allocated() - base) / sum(p.numel() * 4 for p in params)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    del opt, params, step
    gc.collect()
    if device == 'cuda':
        torch.cuda.empty_cache()
    return statistics.median(times) * 1e3, peak


class LaunchedFusedFAME:
    """FAME's fused kernel launcher stepping ``params`` (state made here, as FAME's) with a given
    launch configuration: what the sweep times."""

    def __init__(self, params, launch):
        from mmfame.optim import _triton_fame
        zeros = [[torch.zeros_like(p) for p in params] for _ in range(4)]
        steps = [torch.zeros((), device=p.device) for p in params]
        self.lists = [params, [p.grad for p in params], *zeros, [], [], [], steps]
        self.launch, self.plans, self.kernel = launch, {}, _triton_fame.fused_fame

    def step(self):
        self.kernel(*self.lists, grad_scale=None, found_inf=None, has_complex=False,
                    amsgrad=False, beta1=0.9, beta2=0.999, beta3=0.3, beta4=0.7, lr=1e-3,
                    weight_decay=0.01, eps=1e-8, decoupled_weight_decay=True, maximize=False,
                    sq_betas=None, plans=self.plans, launch=self.launch)


def sweep(shapes, device, steps):
    """Fused FAME ms/step for launch configurations (block, iters, num_warps)."""
    from mmfame.optim._triton_fame import Launch
    for launch in [Launch(512, 4, 4), Launch(1024, 2, 4), Launch(1024, 4, 4), Launch(1024, 8, 4),
                   Launch(2048, 2, 8), Launch(2048, 4, 8), Launch(4096, 2, 8),
                   Launch(4096, 4, 16)]:
        ms, _ = bench(lambda ps: LaunchedFusedFAME(ps, launch), shapes, device, steps, warmup=3)
        print(f'  sweep BLOCK={launch.block} ITERS={launch.iters} '
              f'num_warps={launch.num_warps}: {ms:.3f} ms', flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--device', default='cuda' if torch.cuda.is_available() else 'cpu')
    parser.add_argument('--sets', nargs='+', default=['resnet50', 'large', 'small'])
    parser.add_argument('--steps', type=int, default=None,
                        help='timed steps (default: 50 on CUDA, 10 on CPU)')
    parser.add_argument('--markdown', help='also write the table to this file')
    parser.add_argument('--compile', action='store_true',
                        help='also time torch.compile(opt.step) of FAME and AdamW')
    parser.add_argument('--sweep', action='store_true',
                        help='also time fused FAME launch configurations on each set (CUDA)')
    args = parser.parse_args()
    device = args.device
    steps = args.steps or (50 if device == 'cuda' else 10)
    bw = copy_bandwidth(device, (1 << 28) if device == 'cuda' else (1 << 25))
    name = torch.cuda.get_device_name() if device == 'cuda' else (
        f'CPU, {torch.get_num_threads()} threads')
    header = (f'device: {name}; torch {torch.__version__}; copy bandwidth {bw:.0f} GB/s '
              f'(read+write)')
    print(header)
    rows = []
    for set_name in args.sets:
        shapes = param_sets(device)[set_name]
        numel = sum(torch.Size(s).numel() for s in shapes)
        results = {}
        for algo, impl, make in impls(device, args.compile):
            if set_name == 'small' and impl == 'for-loop' and device == 'cuda':
                continue  # thousands of launches per step: not informative
            try:
                with cpu_blocks(impl):
                    results[algo, impl] = bench(make, shapes, device, steps, warmup=3,
                                                compiled=impl == 'compiled')
            except Exception as e:  # report and go on: one broken path must not hide the rest
                print(f'{set_name} {algo} {impl} FAILED: {e!r}', flush=True)
        if args.sweep and device == 'cuda':
            sweep(shapes, device, steps)
        if ('FAME', 'foreach, unblocked') in results and ('FAME', 'foreach') in results:
            print(f'{set_name}: foreach cache blocking speed-up (unblocked / blocked ms): '
                  f"{results['FAME', 'foreach, unblocked'][0] / results['FAME', 'foreach'][0]:.2f}x",
                  flush=True)
        ref = results.get(('AdamW', 'fused'), (None,))[0]
        for (algo, impl), (ms, peak) in results.items():
            gbs = BYTES_PER_PARAM[algo] * numel / (ms / 1e3) / 1e9
            rows.append((f'{set_name} ({len(shapes)} tensors, {numel / 1e6:.1f} M)', algo, impl,
                         f'{ms:.3f}', f'{gbs:.0f}', f'{100 * gbs / bw:.0f}%',
                         f'{ms / ref:.2f}x' if ref else '-',
                         f'{peak:.2f}x' if peak is not None else '-'))
            print(' | '.join(rows[-1]), flush=True)
    table = ['| set | optimizer | impl | ms/step | eff. GB/s | % of roofline | vs fused AdamW '
             '| peak extra mem (x params) |', '|' + '---|' * 8]
    table += ['| ' + ' | '.join(r) + ' |' for r in rows]
    print('\n' + header + '\n\n' + '\n'.join(table))
    if args.markdown:
        with open(args.markdown, 'w') as f:
            f.write(header + '\n\n' + '\n'.join(table) + '\n')


if __name__ == '__main__':
    main()
