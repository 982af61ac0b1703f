"""tools/analysis_tools/lag_demo.py, compare_optimizers.py and benchmark_optimizer.py's sweep:
estimators, the ablation cascade optimizer (mmfame.experiments.ablation), the child configs of
the named settings, the summary tables and the fused kernel's launch configurations; the command
line of torch_optim_suite.py."""
import importlib
import importlib.util
import json
import math
import os
import os.path as osp
import subprocess
import sys

import numpy as np
import pytest
import torch
from cases import DEVICES, make_params, usable

from mmfame.optim import _triton_fame

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
ANALYSIS = osp.join(REPO, 'tools', 'analysis_tools')
if ANALYSIS not in sys.path:
    sys.path.insert(0, ANALYSIS)

co = importlib.import_module('compare_optimizers')
ablation = importlib.import_module('mmfame.experiments.ablation')
ex = importlib.import_module('mmfame.experiments.configs')
runs = importlib.import_module('mmfame.experiments.runs')
lag = importlib.import_module('lag_demo')
benchmark_optimizer = importlib.import_module('benchmark_optimizer')
suite = importlib.import_module('torch_optim_suite')

DET_CFG = osp.join(REPO, 'configs', 'demo', 'retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py')
SEG_CFG = osp.join(REPO, 'configs', 'demo',
                   'segformer_mit-b0_fame_1xb8-300i_demo-ade20k-128x128.py')


# ------------------------------------------------------------------------------- lag_demo
def _fitted_lags(g, trend, names, window):
    return {n: lag.fit_lag(trend, lag.cascade_estimate(g, lag.ESTIMATORS[n][0]), window)
            for n in names}


def test_lag_on_linear_drift_matches_closed_form_and_orders_estimators():
    T = 400
    t = np.arange(T, dtype=np.float64)
    slope = 0.1

    def trend(tt):
        return slope * np.asarray(tt, dtype=np.float64)[..., None] * np.ones(4)

    window = np.arange(T // 2, T)
    names = ['ema', 'dema', 'tema', 'qema', 'dema-eq', 'tema-eq', 'tema-0.5']
    clean = _fitted_lags(trend(t), trend, names, window)
    # Noise-free: the fitted delay is the closed-form steady-state lag sum_k c_k L_k.
    expected = dict(ema=9.0, dema=9.0 - 0.3 / 0.7, tema=9.0 - 2 * 0.3 / 0.7 + 0.7 / 0.3,
                    qema=12.380952, **{'dema-eq': 0.0, 'tema-eq': 0.0, 'tema-0.5': 8.0})
    for n in names:
        assert lag.analytic_ramp_lag(lag.ESTIMATORS[n][0]) == pytest.approx(expected[n], abs=1e-5)
        assert clean[n] == pytest.approx(expected[n], abs=0.011), n
    # With noise the measured order is the same. Equal decays (classic DEMA/TEMA) cancel the lag;
    # FAME's cascade (0.3 after 0.9) shortens it a little for DEMA, but TEMA with FAME's default
    # (0.3, 0.7) lags MORE than the plain EMA on a ramp: its third EMA (decay 0.7) adds more delay
    # (+0.7/0.3) than 3*m1 - 3*m2 removes (-2*0.3/0.7).
    rng = np.random.default_rng(0)
    g = trend(t) + 0.5 * rng.standard_normal((T, 4))
    noisy = _fitted_lags(g, trend, names, window)
    assert abs(noisy['tema-eq']) < 0.5 and abs(noisy['dema-eq']) < 0.5
    assert max(noisy['tema-eq'], noisy['dema-eq']) < noisy['dema'] < noisy['ema'] < noisy['tema']
    assert noisy['tema'] < noisy['qema']
    assert noisy['tema-0.5'] < noisy['dema']  # with beta3 = beta4 = 0.5 TEMA does lag less
    for n in names:
        assert noisy[n] == pytest.approx(clean[n], abs=0.3), n


def test_tema_lags_less_than_dema_less_than_ema_on_an_accelerating_trend():
    # Where TEMA < DEMA < EMA does hold: equal decays, quadratic trend (TEMA cancels the first and
    # second moments of its weights, DEMA only the first).
    T = 400
    t = np.arange(T, dtype=np.float64)

    def trend(tt):
        return 1e-3 * np.asarray(tt, dtype=np.float64)[..., None] ** 2

    lags = _fitted_lags(trend(t), trend, ['ema', 'dema-eq', 'tema-eq'], np.arange(200, T))
    assert abs(lags['tema-eq']) < 0.02
    assert lags['tema-eq'] < lags['dema-eq'] < lags['ema']
    assert lags['dema-eq'] > 0.05 and lags['ema'] > 8


def test_step_response_and_noise_gain():
    T, t0 = 200, 100
    g = (np.arange(T) >= t0).astype(np.float64)[:, None]
    est = lag.cascade_estimate(g, (0.9, ))[:, 0]
    t90, overshoot = lag.step_metrics(est, t0, 1.0)
    assert t90 == math.ceil(math.log(0.1) / math.log(0.9))  # 1 - 0.9**n >= 0.9: n = 22
    assert overshoot == 0.0
    t90_eq, over_eq = lag.step_metrics(lag.cascade_estimate(g, (0.9, 0.9, 0.9))[:, 0], t0, 1.0)
    assert t90_eq < 10 and over_eq > 5  # fast but overshoots
    # White noise: EMA's output std is sqrt((1-b)/(1+b)) of the input's.
    w = lag.impulse_response((0.9, ), 400)
    assert math.sqrt(np.sum(w**2)) == pytest.approx(math.sqrt(0.1 / 1.9), rel=1e-6)
    assert np.sum(lag.impulse_response((0.9, 0.3, 0.7), 400)) == pytest.approx(1.0, abs=1e-6)


def test_estimator_table_on_short_streams():
    streams, info = lag.make_streams(T=200, dim=4, sigma=0.1, seed=1)
    rows = lag.estimator_table(streams, info, {k: lag.ESTIMATORS[k] for k in ('ema', 'tema')})
    assert rows['ema']['step/t90'] == 22 and rows['tema']['step/t90'] > 22
    assert rows['tema']['linear drift/lag'] > rows['ema']['linear drift/lag']
    assert rows['tema']['rotating quadratic/lag'] > rows['ema']['rotating quadratic/lag']
    assert all(v > 0 for r in rows.values() for k, v in r.items() if k.endswith('/rmse'))


def test_tracking_is_paired_and_deterministic():
    a, _ = lag.track('adam', 'circle', 0.01, steps=200, runs=3, burn_in=100)
    b, _ = lag.track('adam', 'circle', 0.01, steps=200, runs=3, burn_in=100)
    f, _ = lag.track('fame', 'circle', 0.01, steps=200, runs=3, burn_in=100)
    np.testing.assert_array_equal(a, b)
    assert a.shape == (3, ) and not np.allclose(a, f)


# ------------------------------------------------------------- the tool-private optimizer
def _run(opt_factory, steps=15, seed=0):
    torch.manual_seed(seed)
    p = torch.nn.Parameter(torch.randn(7, 5, dtype=torch.float64))
    opt = opt_factory([p])
    gen = torch.Generator().manual_seed(seed + 1)
    for _ in range(steps):
        p.grad = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        opt.step()
    return p.detach().clone()


@pytest.mark.parametrize('decoupled', [True, False])
def test_qema_with_zero_higher_decays_is_adam(decoupled):
    # 4*m1 - 6*m2 + 4*m3 - m4 with m2 = m3 = m4 = m1 is m1: Adam / AdamW.
    assert ablation.cascade_coeffs(4) == [4, -6, 4, -1]
    q = _run(lambda ps: ablation.CascadeAdam(ps, lr=1e-2, decays=(0.0, 0.0, 0.0), weight_decay=0.1,
                                       decoupled_weight_decay=decoupled))
    ref_cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    ref = _run(lambda ps: ref_cls(ps, lr=1e-2, weight_decay=0.1))
    torch.testing.assert_close(q, ref, rtol=1e-12, atol=1e-12)


def test_cascade_with_fame_decays_is_fame_and_dema_is_its_formula():
    from mmfame import FAME
    t = _run(lambda ps: ablation.CascadeAdam(ps, lr=1e-2, decays=(0.3, 0.7), weight_decay=0.05))
    f = _run(lambda ps: FAME(ps, lr=1e-2, weight_decay=0.05, foreach=False))
    torch.testing.assert_close(t, f, rtol=1e-12, atol=1e-12)
    # DEMA by hand, two steps: first moment 2*m1 - m2, m2 = EMA_0.3(m1).
    p0 = torch.tensor([1.0, -2.0], dtype=torch.float64)
    g1, g2 = torch.tensor([0.5, 1.0], dtype=torch.float64), torch.tensor([-1.0, 3.0],
                                                                          dtype=torch.float64)
    p = torch.nn.Parameter(p0.clone())
    opt = ablation.CascadeAdam([p], lr=0.1, decays=(0.3, ), eps=0.0)
    x = p0.clone()
    m1 = m2 = v = torch.zeros(2, dtype=torch.float64)
    for step, g in enumerate((g1, g2), 1):
        p.grad = g.clone()
        opt.step()
        m1 = 0.9 * m1 + 0.1 * g
        m2 = 0.3 * m2 + 0.7 * m1
        v = 0.999 * v + 0.001 * g * g
        x = x - 0.1 / (1 - 0.9**step) * (2 * m1 - m2) / (v.sqrt() / math.sqrt(1 - 0.999**step))
        torch.testing.assert_close(p.detach(), x, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError):
        ablation.CascadeAdam([p], decays=(0.3, ), coeffs=(1.0, ))


def test_private_optimizer_registered_under_private_name_only():
    """Only importing register_ablation (a child config's custom_imports) registers it."""
    code = ('import mmfame.experiments.configs, mmfame.experiments.ablation\n'
            'from mmengine.registry import OPTIMIZERS\n'
            f'print(OPTIMIZERS.module_dict.get({ablation.PRIVATE_NAME!r}))\n')
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.split()[-1] == 'None', out.stdout + out.stderr
    from mmengine.registry import OPTIMIZERS

    import mmfame
    importlib.import_module('mmfame.experiments.register_ablation')
    assert OPTIMIZERS.get(ablation.PRIVATE_NAME) is ablation.CascadeAdam
    assert ablation.PRIVATE_NAME.startswith('_')
    assert 'CascadeAdam' not in mmfame.__all__ and not hasattr(mmfame, 'CascadeAdam')
    for public in ('DEMA', 'QEMA', 'CascadeAdam'):
        assert OPTIMIZERS.get(public) is None


# ------------------------------------------------------------------------ child configs
SETTINGS = ['fame', 'fame-full', 'fame-authors', 'adamw', 'adam', 'sgd', 'ema', 'dema', 'tema', 'qema',
            'sgd:lr=0.02:weight_decay=0.0005']


@pytest.fixture(scope='module')
def seg_children(tmp_path_factory):
    pytest.importorskip('mmseg')
    from mmengine.config import Config
    base = Config.fromfile(SEG_CFG, import_custom_modules=False)
    out = tmp_path_factory.mktemp('children')
    children = {}
    for spec in SETTINGS:
        opt = ex.optimizer_cfg(spec, dict(base.optim_wrapper.optimizer), sgd_lr=0.01)
        path = out / f'{ex.run_name(spec)}.py'
        path.write_text(ex.child_config_text(SEG_CFG, base, optimizer=opt, iters=60,
                                             checkpoint_interval=0, data_root='/data/x'))
        children[spec] = Config.fromfile(str(path), import_custom_modules=False)
    return base, children


def test_child_configs_replace_only_the_optimizer(seg_children):
    base, children = seg_children
    ow = base.optim_wrapper
    lr, wd = ow.optimizer.lr, ow.optimizer.weight_decay
    expected = {
        'fame': dict(type='FAME', lr=lr, betas=(0.9, 0.999), weight_decay=wd),
        'tema': dict(type='FAME', lr=lr, betas=(0.9, 0.999), weight_decay=wd),
        'fame-full': dict(type='FAME', lr=lr, betas=(0.9, 0.999), weight_decay=wd,
                          sq_betas=(0.3, 0.7)),
        'fame-authors': dict(type='FAME', lr=lr, betas=(0.9, 0.999), eps=1e-5, weight_decay=wd,
                             beta3=0.3, beta4=0.7, decoupled_weight_decay=False),
        'adamw': dict(type='AdamW', lr=lr, betas=(0.9, 0.999), weight_decay=wd),
        'adam': dict(type='Adam', lr=lr, betas=(0.9, 0.999), weight_decay=wd),
        'ema': dict(type='FAME', lr=lr, betas=(0.9, 0.999), weight_decay=wd, beta3=0.0,
                    beta4=0.0),
        'dema': dict(type=ablation.PRIVATE_NAME, lr=lr, betas=(0.9, 0.999), weight_decay=wd,
                     decays=(0.3, )),
        'qema': dict(type=ablation.PRIVATE_NAME, lr=lr, betas=(0.9, 0.999), weight_decay=wd,
                     decays=(0.3, 0.7, 0.7)),
        # _delete_ drops the base's betas: SGD would reject them
        'sgd': dict(type='SGD', lr=0.01, momentum=0.9, weight_decay=1e-4),
        'sgd:lr=0.02:weight_decay=0.0005': dict(type='SGD', lr=0.02, momentum=0.9,
                                               weight_decay=0.0005),
    }
    for spec, cfg in children.items():
        opt = cfg.optim_wrapper.optimizer.to_dict()
        opt = {k: tuple(v) if isinstance(v, list) else v for k, v in opt.items()}
        assert opt == expected[spec], spec
        # everything else of optim_wrapper is the base's
        assert cfg.optim_wrapper.clip_grad == ow.clip_grad
        assert cfg.optim_wrapper.paramwise_cfg == ow.paramwise_cfg
        assert cfg.model == base.model
        assert cfg.train_cfg.max_iters == 60 and cfg.train_cfg.val_interval == 60
        sched = cfg.param_scheduler
        assert [(s['begin'], s['end']) for s in sched] == [(0, 6), (6, 60)]
        assert cfg.param_scheduler[1]['eta_min_ratio'] == base.param_scheduler[1]['eta_min_ratio']
        assert cfg.default_hooks.checkpoint.interval == -1
        assert not cfg.default_hooks.checkpoint.save_last
        assert cfg.train_dataloader.dataset.data_root == '/data/x/'
        assert cfg.train_dataloader.dataset.pipeline == base.train_dataloader.dataset.pipeline
        private = opt['type'] == ablation.PRIVATE_NAME
        assert cfg.custom_imports.imports == (['mmfame']
                                              + ['mmfame.experiments.register_ablation'] * private)
    assert ex.run_name('tema') == ex.run_name('fame') == 'fame'


def test_child_optimizers_build_through_mmengine(seg_children):
    from mmengine.optim import build_optim_wrapper

    import mmfame  # noqa: F401  (registers FAME)
    _, children = seg_children
    model = torch.nn.Sequential()
    model.add_module('backbone', torch.nn.Linear(4, 4))
    model.add_module('head', torch.nn.Linear(4, 2))
    types = dict(sgd=torch.optim.SGD, adam=torch.optim.Adam, adamw=torch.optim.AdamW,
                 fame=mmfame.FAME, dema=ablation.CascadeAdam, qema=ablation.CascadeAdam)
    for spec, cls in types.items():
        wrapper = build_optim_wrapper(model, children[spec].optim_wrapper)
        assert type(wrapper.optimizer) is cls, spec
        if spec == 'sgd':
            assert wrapper.optimizer.param_groups[0]['momentum'] == 0.9
        if spec == 'qema':
            assert wrapper.optimizer.param_groups[0]['coeffs'] == (4.0, -6.0, 4.0, -1.0)
        model(torch.randn(3, 4)).sum().backward()
        wrapper.step()
        wrapper.zero_grad()


def test_detection_child_keeps_its_decay_rules():
    pytest.importorskip('mmdet')
    from mmengine.config import Config
    base = Config.fromfile(DET_CFG, import_custom_modules=False)
    opt = ex.optimizer_cfg('sgd', dict(base.optim_wrapper.optimizer), sgd_lr=0.005)
    text = ex.child_config_text(DET_CFG, base, optimizer=opt, iters=30, data_root='/d/coco')
    path = osp.join(os.environ.get('TMPDIR', '/tmp'), f'_co_det_child_{os.getpid()}.py')
    with open(path, 'w') as f:
        f.write(text)
    try:
        cfg = Config.fromfile(path, import_custom_modules=False)
    finally:
        os.remove(path)
    assert cfg.optim_wrapper.optimizer.to_dict() == dict(type='SGD', lr=0.005, momentum=0.9,
                                                         weight_decay=1e-4)
    assert cfg.optim_wrapper.paramwise_cfg == base.optim_wrapper.paramwise_cfg
    assert cfg.val_evaluator.ann_file == '/d/coco/annotations/instances_val2017.json'
    assert [(s['begin'], s['end']) for s in cfg.param_scheduler] == [(0, 3), (3, 30)]


def test_setting_parsing_and_errors():
    assert ex.parse_setting('fame:beta3=0.5:beta4=0.5') == ('fame', dict(beta3=0.5, beta4=0.5))
    with pytest.raises(ValueError, match='unknown setting'):
        ex.parse_setting('lion')
    with pytest.raises(ValueError, match='key=value'):
        ex.parse_setting('sgd:0.1')
    opt = ex.optimizer_cfg('adamw', dict(type='FAME', lr=1e-3, weight_decay=0.05), lr=3e-4)
    assert opt == dict(_delete_=True, type='AdamW', lr=3e-4, weight_decay=0.05)


# ------------------------------------------------------------------------------ summaries
def _fake_run(work_dir, spec, seed, losses, metrics, metric_step=0, config=DET_CFG):
    """A finished run in the engine's layout: logged scalars and done.json."""
    run = runs.run_dir(work_dir, runs.Run(osp.relpath(config, REPO), spec, seed))
    d = osp.join(run, '20250101_000000', 'vis_data')
    os.makedirs(d)
    with open(osp.join(d, 'scalars.json'), 'w') as f:
        for it, loss in losses:
            f.write(json.dumps(dict(lr=1e-3, loss=loss, time=0.25 + seed * 0.01, iter=it,
                                    step=it)) + '\n')
        f.write(json.dumps(dict(**metrics, time=0.1, step=metric_step)) + '\n')
    with open(osp.join(run, 'done.json'), 'w') as f:
        json.dump(dict(returncode=0, seconds=1.0), f)


def test_summary_from_scalars_has_mean_std_and_paired_differences(tmp_path):
    work = str(tmp_path / 'runs')
    miou = {'adamw': [10.0, 12.0, 14.0], 'fame': [11.0, 15.0, 13.0]}
    for spec in miou:
        for seed in range(3):
            losses = [(it, 2.0 - it / 100) for it in range(10, 100, 10)]
            losses.append((100, 0.5 + 0.1 * seed + (0.2 if spec == 'fame' else 0.0)))
            _fake_run(work, spec, seed, losses, {'mIoU': miou[spec][seed], 'mAcc': 50.0 + seed})
    matrix = runs.Matrix([osp.relpath(DET_CFG, REPO)], ['fame', 'adamw', 'tema'], [0, 1, 2])
    records, metrics = co.collect(work, matrix)
    assert metrics == ['mIoU', 'mAcc']
    by_run = {(r['setting'], r['seed']): r for r in records}
    assert by_run['tema', 1]['metrics'] == by_run['fame', 1]['metrics']  # alias shares runs
    out = str(tmp_path / 'results' / 'seg')
    rows = co.main(['--config', DET_CFG, '--optimizers', 'fame', 'adamw', 'tema', '--seeds',
                    '0', '1', '2', '--work-dir', work, '--out', out, '--summary-only',
                    '--title', 't'])
    rows = {row['setting']: row for row in rows}
    assert rows['adamw']['metrics']['mIoU']['mean'] == pytest.approx(12.0)
    assert rows['adamw']['metrics']['mIoU']['std'] == pytest.approx(2.0)  # sample std, ddof=1
    assert rows['fame']['final_loss']['mean'] == pytest.approx(0.8)
    assert rows['fame']['final_loss']['std'] == pytest.approx(0.1)
    assert rows['fame']['delta']['mIoU']['mean'] == pytest.approx(1.0)  # diffs 1, 3, -1
    assert rows['fame']['delta']['mIoU']['std'] == pytest.approx(2.0)
    assert rows['fame']['delta']['mIoU']['wins'] == 2
    md = open(out + '.md').read()
    main_table = md.split('Per seed')[0]
    lines = {line.split('|')[1].strip(): line for line in main_table.splitlines()
             if line.startswith('| `')}
    assert '| 3 | 12 ± 2 |' in lines['`adamw`']
    assert '| 3 | 13 ± 2 | 51 ± 1 | 0.8 ± 0.1 |' in lines['`fame`']
    assert '1 ± 2 (2/3 seeds higher)' in lines['`fame`']
    assert 'reference' in lines['`adamw`']
    assert '11 / 0.7' in md  # per-seed table: fame seed 0
    assert osp.getsize(out + '.png') > 10000
    with open(out + '.json') as f:
        saved = {row['setting']: row for row in json.load(f)['rows']}
    assert saved['adamw']['metrics']['mIoU']['values']['2'] == 14.0


def test_summary_only_cli_and_missing_runs(tmp_path, capsys):
    work = str(tmp_path / 'runs')
    for seed, mAP in enumerate((0.2, 0.3)):
        _fake_run(work, 'sgd', seed, [(10, 1.0), (20, 0.8)],
                  {'coco/bbox_mAP': mAP, 'coco/bbox_mAP_50': 2 * mAP})
    out = str(tmp_path / 'det')
    rows = co.main(['--config', DET_CFG, '--optimizers', 'sgd', 'adamw', '--seeds', '0', '1',
                    '--work-dir', work, '--out', out, '--summary-only'])
    assert 'adamw/seed_0' in capsys.readouterr().out  # reported missing, not invented
    assert [row['setting'] for row in rows] == ['sgd']
    assert list(rows[0]['metrics']) == ['coco/bbox_mAP', 'coco/bbox_mAP_50']
    assert rows[0]['metrics']['coco/bbox_mAP']['mean'] == pytest.approx(0.25)
    assert '| `sgd` |' in open(out + '.md').read()


@pytest.mark.parametrize('device', DEVICES)
def test_the_fused_launch_configuration_changes_no_result(device):
    """The kernel's launch configuration is an argument (the benchmark sweeps it): blocks, chunk
    counts and warps other than the default give the same bits."""
    usable('fused', device)
    results, grids = [], []
    for launch in (_triton_fame.LAUNCH, _triton_fame.Launch(block=64, iters=3, num_warps=1)):
        params = make_params(device, torch.float32)
        for p in params:
            p.grad = torch.randn(p.shape, generator=torch.Generator().manual_seed(1)).to(p)
        opt = benchmark_optimizer.LaunchedFusedFAME(params, launch)
        for _ in range(2):
            opt.step()
        results.append(params)
        grids.append([tables.grid for plan in opt.plans.values() for tables in plan.tables])
    assert grids[0] != grids[1]  # the smaller chunks took more programs
    assert all(torch.equal(a, b) for a, b in zip(*results))


def test_settings_are_defined_once():
    """docs/results.md's settings table is the registry's; FAME's decays come from FAME."""
    from mmfame.optim.fame import DEFAULTS
    with open(osp.join(REPO, 'docs', 'results.md')) as f:
        text = f.read()
    table = text.split('<!-- settings-table:start -->\n')[1].split('<!-- settings-table:end -->')[0]
    assert table == ex.settings_table()
    decays = (DEFAULTS['beta3'], DEFAULTS['beta4'])
    assert ex.optimizer_cfg('fame-full', {})['sq_betas'] == decays
    assert ex.optimizer_cfg('qema', {})['decays'] == (*decays, decays[1])
    assert set(ex.DOC_SETTINGS) == set(ex.SETTINGS)


@pytest.mark.slow
def test_preemption_trials_print_what_a_signal_storm_costs():
    """One trial per setting: merged copies save and exit 75; with grace 0 a copy arriving
    mid-iteration (the iteration is longer than the gap) stops the run unsaved."""
    proc = subprocess.run([sys.executable, osp.join(ANALYSIS, 'preemption_trials.py'),
                           '--trials', '1', '--grace', '30', '0', '--iter-s', '1.0',
                           '--delay-s', '0.01'], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {line.split('|')[1].strip(): line.split('|')[3:5] for line in proc.stdout.splitlines()
            if line.startswith('| ') and line[2].isdigit()}
    assert [c.strip() for c in rows['30']] == ['1', '0.0'], proc.stdout
    assert rows['0'][0].strip() == '0', proc.stdout


# ------------------------------------------------------------------------------- torch_optim_suite
SUITE = osp.join(ANALYSIS, 'torch_optim_suite.py')
# torch's test_optim.py copied alone, in small: its test/optim/ siblings' classes imported (absent
# here: the tool stands them in) and handed to torch's instantiation, which takes TestCases, and
# one generic test over optim_db (FAME's case the only one selected).
LONE_TEST_OPTIM = """
from optim.test_lrscheduler import TestLRScheduler  # noqa: F401
from optim.test_optim import TestDifferentiableOptimizer
from optim.test_swa_utils import TestSWAUtils  # noqa: F401

import torch
from torch.testing._internal.common_device_type import instantiate_device_type_tests
from torch.testing._internal.common_optimizers import optim_db, optims
from torch.testing._internal.common_utils import TestCase


class TestOptimRenewed(TestCase):
    @optims(optim_db, dtypes=[torch.float32])
    def test_step(self, device, dtype, optim_info):
        for optim_input in optim_info.optim_inputs_func(device=device):
            p = torch.nn.Parameter(torch.ones(3, device=device, dtype=dtype))
            p.grad = torch.ones_like(p)
            optim_info.optim_cls([p], **optim_input.kwargs).step()


instantiate_device_type_tests(TestOptimRenewed, globals())
instantiate_device_type_tests(TestDifferentiableOptimizer, globals())
"""


def _with_expecttest(tmp_path):
    """The environment with expecttest importable: the installed one, else a stand-in of what
    torch's test utilities take from it (its TestCase, ACCEPT)."""
    env = dict(os.environ)
    if importlib.util.find_spec('expecttest') is None:
        site = tmp_path / 'site'
        site.mkdir()
        (site / 'expecttest.py').write_text(
            'import unittest\nACCEPT = False\n\n\nclass TestCase(unittest.TestCase):\n    pass\n')
        env['PYTHONPATH'] = os.pathsep.join(
            p for p in (str(site), env.get('PYTHONPATH')) if p)
    return env


def _torch_takes_the_suites_optimizer_info():
    """torch's optimizer test tables know the OptimizerInfo arguments that the tool passes."""
    spec = importlib.util.find_spec('torch.testing._internal.common_optimizers')
    if spec is None:
        return False
    with open(spec.origin) as f:
        return 'supports_fused_on' in f.read()


@pytest.mark.slow
@pytest.mark.skipif(not _torch_takes_the_suites_optimizer_info(),
                    reason="this torch's optimizer test tables predate the tool's OptimizerInfo")
def test_torch_optim_suite_runs_a_lone_test_optim(tmp_path):
    """A lone test_optim.py collects (the stand-ins are TestCases) and runs FAME's case."""
    test_file = tmp_path / 'test' / 'test_optim.py'
    test_file.parent.mkdir()
    test_file.write_text(LONE_TEST_OPTIM)
    proc = subprocess.run([sys.executable, SUITE, str(test_file), '-rp'], cwd=tmp_path,
                          env=_with_expecttest(tmp_path), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    passed = [line.split('::', 1)[1] for line in proc.stdout.splitlines()
              if line.startswith('PASSED ')]
    assert 'TestOptimRenewedCPU::test_step_FAME_cpu_float32' in passed, proc.stdout[-3000:]


def test_torch_optim_suite_without_expecttest_names_the_fix(tmp_path):
    """Without expecttest (torch's test utilities import it): one line naming the fix."""
    code = ("import runpy, sys\n"
            "sys.modules['expecttest'] = None  # import expecttest: ModuleNotFoundError\n"
            f"sys.argv = [{SUITE!r}, 'test_optim.py']\n"
            f"runpy.run_path({SUITE!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, '-c', code], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "torch_optim_suite.py: torch's test suite needs the expecttest package, which is not "
        'installed: pip install expecttest']


@pytest.mark.parametrize('argv, code, says', [
    (['--help'], 0, [suite.__doc__.split('\n')[0], 'PATH/test/test_optim.py', 'PYTEST ARGS',
                     'pip install expecttest']),
    (['-h'], 0, ['PATH/test/test_optim.py', 'PYTEST ARGS']),
    ([], 2, ['error: the following arguments are required: PATH/test/test_optim.py\n']),
])
def test_torch_optim_suite_help_and_usage(argv, code, says, capsys):
    with pytest.raises(SystemExit) as exit_:
        suite.main(argv)
    assert exit_.value.code == code
    out = capsys.readouterr()
    for text in says:
        assert text in (out.out if code == 0 else out.err)


@pytest.mark.parametrize('argv, pytest_args', [
    (['t/test_optim.py'], []),
    (['t/test_optim.py', '-x', '-k', 'test_errors'], ['-x', '-k', 'test_errors']),
    (['t/test_optim.py', '--help'], ['--help']),  # after the file: pytest's
])
def test_torch_optim_suite_passes_what_follows_the_file_to_pytest(argv, pytest_args):
    args = suite.parse_args(argv)
    assert (args.test_file, args.pytest_args) == ('t/test_optim.py', pytest_args)
