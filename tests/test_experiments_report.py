"""mmfame.experiments.report: run records as one summary (rows), and the rows as markdown tables,
configs/README.md cells, OpenMMLab metafiles and plots; never a number for a seed that did not
finish."""
import os
import os.path as osp
import statistics

import pytest

from mmfame.experiments import report

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
RET = 'configs/coco/retinanet_r50_fpn_fame_8xb2-1x_coco.py'
MASK = 'configs/coco/mask-rcnn_r50_fpn_fame_8xb2-1x_coco.py'
SEGF = 'configs/ade20k/segformer_mit-b0_fame_8xb2-160k_ade20k-512x512.py'
PSP = 'configs/ade20k/pspnet_r50-d8_fame_4xb4-160k_ade20k-512x512.py'
DEMO = 'configs/demo/retinanet_r18_fpn_fame_1xb8-300i_demo-coco.py'
# What unfinished runs carry (a record should not, but a stale one might): never to be shown.
SENTINEL = {'coco/bbox_mAP': 0.9876, 'coco/segm_mAP': 0.9876, 'mIoU': 98.76}
SENTINEL_TEXT = ('98.8', '98.76', '0.9876')

# config, setting, seed, state, final metrics of a finished run
RUNS = [
    (RET, 'fame', 0, 'finished', {'coco/bbox_mAP': 0.365}),
    (RET, 'fame', 1, 'finished', {'coco/bbox_mAP': 0.369}),
    (RET, 'fame', 2, 'finished', {'coco/bbox_mAP': 0.371}),
    (RET, 'baseline', 0, 'finished', {'coco/bbox_mAP': 0.360}),
    (RET, 'baseline', 1, 'finished', {'coco/bbox_mAP': 0.366}),
    (RET, 'baseline', 2, 'running', None),
    (MASK, 'fame', 0, 'finished', {'coco/bbox_mAP': 0.381, 'coco/segm_mAP': 0.345}),
    (MASK, 'fame', 1, 'failed', None),
    (MASK, 'fame', 2, 'running', None),
    (SEGF, 'fame', 0, 'pending', None),
    (SEGF, 'fame', 1, 'pending', None),
    (SEGF, 'fame', 2, 'failed', None),
    (SEGF, 'baseline', 0, 'finished', {'mIoU': 37.52}),
    (PSP, 'fame', 0, 'running', None),
    (PSP, 'fame', 1, 'interrupted', None),
    (DEMO, 'fame', 0, 'finished', {'coco/bbox_mAP': 0.512}),
]


def record(config, setting, seed, state, metrics):
    """A run record as gather hands it over; unfinished runs carry the sentinel."""
    unit = 'iter' if 'ade20k' in config or 'demo' in config else 'epoch'
    key = 'mIoU' if 'ade20k' in config else 'coco/bbox_mAP'
    final = metrics[key] if metrics else SENTINEL[key]
    curve = {key: [[step, final * step / 3] for step in (1, 2, 3)]}
    return dict(config=config, setting=setting, seed=seed, state=state,
                metrics=dict(metrics) if metrics else dict(SENTINEL), curve=curve,
                step_unit=unit, work_dir=f'/runs/{osp.basename(config)}/{setting}/seed_{seed}')


RECORDS = [record(*r) for r in RUNS]


def finished(config, setting, key):
    return {seed: m[key] for c, s, seed, st, m in RUNS
            if (c, s, st) == (config, setting, 'finished') and key in m}


@pytest.fixture(scope='module')
def rows():
    return {(r['config'], r['setting']): r for r in report.summarize(RECORDS)}


# ------------------------------------------------------------------------------- matrix rows
ROW_COUNTS = {  # (config, setting): seeds, finished seeds, states
    (RET, 'fame'): ([0, 1, 2], [0, 1, 2], {'finished': 3}),
    (RET, 'baseline'): ([0, 1, 2], [0, 1], {'running': 1, 'finished': 2}),
    (MASK, 'fame'): ([0, 1, 2], [0], {'running': 1, 'finished': 1, 'failed': 1}),
    (SEGF, 'fame'): ([0, 1, 2], [], {'pending': 2, 'failed': 1}),
    (PSP, 'fame'): ([0, 1], [], {'running': 1, 'interrupted': 1}),
}


def test_rows_come_in_first_seen_order():
    got = [(r['config'], r['setting']) for r in report.summarize(RECORDS)]
    assert got == list(dict.fromkeys((c, s) for c, s, *_ in RUNS))


@pytest.mark.parametrize('key', ROW_COUNTS, ids=lambda k: f'{osp.basename(k[0])}-{k[1]}')
def test_row_counts_seeds_and_states(rows, key):
    seeds, done, states = ROW_COUNTS[key]
    row = rows[key]
    assert (row['seeds'], row['finished'], row['states']) == (seeds, done, states)


STATS = [  # config, setting, metric key
    (RET, 'fame', 'coco/bbox_mAP'),
    (RET, 'baseline', 'coco/bbox_mAP'),
    (MASK, 'fame', 'coco/bbox_mAP'),
    (MASK, 'fame', 'coco/segm_mAP'),
    (SEGF, 'baseline', 'mIoU'),
    (SEGF, 'fame', 'mIoU'),
]


@pytest.mark.parametrize('config,setting,key', STATS)
def test_mean_and_sample_std_over_finished_seeds(rows, config, setting, key):
    values = list(finished(config, setting, key).values())
    stat = rows[config, setting]['metrics'][key]
    assert stat['n'] == len(values)
    if not values:
        assert stat['mean'] is None and stat['std'] is None
        return
    assert stat['mean'] == pytest.approx(statistics.mean(values))
    if len(values) > 1:
        assert stat['std'] == pytest.approx(statistics.stdev(values))
    else:
        assert stat['std'] is None


DELTAS = [  # config, setting, metric key: paired with the baseline
    (RET, 'fame', 'coco/bbox_mAP'),
    (SEGF, 'fame', 'mIoU'),  # baseline finished, FAME not: no pairs
]


@pytest.mark.parametrize('config,setting,key', DELTAS)
def test_paired_difference_over_seeds_finished_in_both(rows, config, setting, key):
    ours, ref = finished(config, setting, key), finished(config, 'baseline', key)
    diffs = [v - ref[s] for s, v in ours.items() if s in ref]
    d = rows[config, setting]['delta'][key]
    assert d['n'] == len(diffs)
    if diffs:
        assert d['mean'] == pytest.approx(statistics.mean(diffs))
        assert d['std'] == pytest.approx(statistics.stdev(diffs))
    else:
        assert d['mean'] is None


def test_curves_average_every_seed_that_logged_them(rows):
    """A curve is drawn for unfinished seeds too (it says how many): the mean and std at each
    step over the seeds that logged it."""
    curve = rows[RET, 'baseline']['curves']['coco/bbox_mAP']
    assert (curve['steps'], curve['n'], curve['unfinished'], curve['unit']) == (
        [1, 2, 3], 3, 1, 'epoch')
    last = [r['curve']['coco/bbox_mAP'][-1][1] for r in RECORDS
            if (r['config'], r['setting']) == (RET, 'baseline')]
    assert curve['mean'][-1] == pytest.approx(statistics.mean(last))
    assert curve['std'][-1] == pytest.approx(statistics.stdev(last))


def test_final_loss_and_time_count_finished_seeds_only():
    records = [dict(record(RET, 'fame', seed, state, {'coco/bbox_mAP': 0.3}),
                    final_loss=loss, sec_per_iter=0.5 + seed)
               for seed, state, loss in ((0, 'finished', 1.0), (1, 'finished', 2.0),
                                         (2, 'running', 9.0))]
    row, = report.summarize(records)
    assert row['final_loss'] == dict(mean=1.5, std=pytest.approx(0.5 ** 0.5), n=2,
                                     values={0: 1.0, 1: 2.0})
    assert row['sec_per_iter']['values'] == {0: 0.5, 1: 1.5}


def test_no_delta_without_a_baseline_or_for_the_baseline(rows):
    assert rows[MASK, 'fame']['delta'] == {}
    assert rows[RET, 'baseline']['delta'] == {}
    against_fame = report.summarize(RECORDS, baseline='fame')
    assert [r['delta'] for r in against_fame if r['setting'] == 'fame'] == [{}] * 5


# --------------------------------------------------------------------------------- markdown
def _box(values, digits=1, scale=100):
    mean, std = statistics.mean(values) * scale, statistics.stdev(values) * scale
    return f'{mean:.{digits}f} ± {std:.{digits}f}'


RET_DIFFS = [0.365 - 0.360, 0.369 - 0.366]
MARKDOWN = {  # (config, setting): cells the row holds
    (RET, 'fame'): ['3/3', _box([0.365, 0.369, 0.371]),
                    f'+{statistics.mean(RET_DIFFS) * 100:.1f} ± '
                    f'{statistics.stdev(RET_DIFFS) * 100:.1f} (n=2)'],
    (RET, 'baseline'): ['2/3 (1 running)', _box([0.360, 0.366]), 'reference'],
    (MASK, 'fame'): ['1/3 (1 running, 1 failed)', '38.1', '34.5'],
    (SEGF, 'fame'): ['not finished (0/3: 2 pending, 1 failed)'],
    (SEGF, 'baseline'): ['1/1', '37.52'],
    (PSP, 'fame'): ['not finished (0/2: 1 running, 1 interrupted)'],
}


@pytest.fixture(scope='module')
def markdown(rows):
    return report.matrix_markdown(list(rows.values()))


def _table_rows(md):
    out = {}
    for line in md.splitlines():
        cells = [c.strip() for c in line.strip('|').split('|')]
        if line.startswith('| `'):
            out[cells[0].strip('`'), cells[1].strip('`')] = cells
    return out


def test_markdown_header_names_and_scales_metrics(markdown):
    head = markdown.splitlines()[0]
    for name in ('config', 'setting', 'seeds finished', 'box AP', 'mask AP', 'mIoU',
                 'Δ box AP vs baseline (paired)'):
        assert f'| {name} |' in head


@pytest.mark.parametrize('key', MARKDOWN, ids=lambda k: f'{osp.basename(k[0])}-{k[1]}')
def test_markdown_cells(markdown, key):
    row = _table_rows(markdown)[osp.splitext(osp.basename(key[0]))[0], key[1]]
    for cell in MARKDOWN[key]:
        assert cell in row


def test_markdown_unfinished_rows_hold_no_numbers(markdown):
    for (stem, setting), cells in _table_rows(markdown).items():
        if cells[2].startswith('not finished'):
            assert set(cells[3:]) == {'—'}, (stem, setting)
    assert not any(t in markdown for t in SENTINEL_TEXT)


# ---------------------------------------------------------------------------- the README
@pytest.fixture(scope='module')
def readme():
    """configs/README.md as shipped before any result: a fixture, as `gather` rewrites the live
    file when results arrive."""
    with open(osp.join(REPO, 'tests', 'fixtures', 'configs_README.md')) as f:
        return f.read()


README_CELLS = {  # config file name: its 'FAME metric' cell
    osp.basename(RET): f'box AP {_box([0.365, 0.369, 0.371])} (3 seeds; Δ vs upstream config '
                       f'+{statistics.mean(RET_DIFFS) * 100:.1f} ± '
                       f'{statistics.stdev(RET_DIFFS) * 100:.1f} over 2 pairs, our runs)',
    osp.basename(MASK): 'box AP 38.1, mask AP 34.5 (1 of 3 seeds, 1 running, 1 failed)',
    osp.basename(SEGF): 'not yet measured',
    osp.basename(PSP): 'running: 0/2 seeds finished',
}


def _fame_rows(text):
    """{config file name: line} of the README's config table rows."""
    return {line.split('](')[0][3:]: line for line in text.splitlines()
            if line.startswith('| [') and line.endswith('|')}


@pytest.mark.parametrize('name', README_CELLS)
def test_readme_cell(readme, rows, name):
    line = _fame_rows(report.update_readme(readme, list(rows.values())))[name]
    assert line.endswith(f'| {README_CELLS[name]} |')


def test_readme_changes_only_matching_rows_and_only_their_last_cell(readme, rows):
    assert osp.basename(DEMO) not in readme  # rows of configs not in the README are ignored
    new = report.update_readme(readme, list(rows.values()))
    old_lines, new_lines = readme.splitlines(keepends=True), new.splitlines(keepends=True)
    assert len(old_lines) == len(new_lines)
    changed = [(a, b) for a, b in zip(old_lines, new_lines) if a != b]
    assert {b.split('](')[0][3:] for _, b in changed} == {
        name for name, cell in README_CELLS.items() if cell != 'not yet measured'}
    for a, b in changed:
        assert a.rsplit('|', 2)[0] == b.rsplit('|', 2)[0]
    assert not any(t in new for t in SENTINEL_TEXT)


def test_readme_update_is_idempotent_and_reverts(readme, rows):
    once = report.update_readme(readme, list(rows.values()))
    assert report.update_readme(once, list(rows.values())) == once
    unfinished = [dict(r, finished=[], states={'pending': len(r['seeds'])},
                       metrics={k: dict(mean=None, std=None, n=0) for k in r['metrics']}, delta={})
                  for r in rows.values()]
    assert report.update_readme(once, unfinished) == readme  # every FAME cell was unmeasured


# ------------------------------------------------------------------------------ metafiles
@pytest.fixture(scope='module')
def metafiles(rows, tmp_path_factory):
    pytest.importorskip('mmengine')
    pytest.importorskip('mmdet', reason='the configs inherit mmdet:: bases')
    pytest.importorskip('mmseg', reason='the configs inherit mmseg:: bases')
    out = tmp_path_factory.mktemp('docs')
    written = report.write_metafiles(list(rows.values()), REPO, out_root=str(out))
    return str(out), written


def _load(path):
    import yaml
    with open(path) as f:
        return yaml.safe_load(f)


def test_metafiles_and_model_index(metafiles):
    out, written = metafiles
    metas = [f'configs/{f}/metafile.yml' for f in ('coco', 'ade20k', 'demo')]
    assert written == [osp.join(out, p) for p in metas + ['model-index.yml']]
    assert _load(osp.join(out, 'model-index.yml')) == {'Import': metas}
    for path in metas:
        doc = _load(osp.join(out, path))
        folder = path.split('/')[1]
        (collection, ) = doc['Collections']
        assert collection['Metadata'] == {'Training Techniques': ['FAME']}
        assert collection['Paper']['URL'] == 'https://arxiv.org/abs/2306.01423'
        shipped = sorted(n for n in os.listdir(osp.join(REPO, 'configs', folder))
                         if '_fame_' in n and n.endswith('.py'))
        assert [m['Config'] for m in doc['Models']] == [f'configs/{folder}/{n}' for n in shipped]
        for model in doc['Models']:
            assert osp.isfile(osp.join(REPO, model['Config']))
            assert model['Name'] == osp.splitext(osp.basename(model['Config']))[0]
            assert model['In Collection'] == collection['Name']


METAFILE_MODELS = {  # config: (metadata it holds, Results or None)
    RET: ({'Training Data': 'COCO', 'Training Resources': '8x GPUs', 'Epochs': 12},
          [{'Task': 'Object Detection', 'Dataset': 'COCO', 'Metrics': {'box AP': 36.8}}]),
    MASK: ({'Epochs': 12},
           [{'Task': 'Object Detection', 'Dataset': 'COCO', 'Metrics': {'box AP': 38.1}},
            {'Task': 'Instance Segmentation', 'Dataset': 'COCO', 'Metrics': {'mask AP': 34.5}}]),
    SEGF: ({'Training Data': 'ADE20K', 'Training Resources': '8x GPUs', 'Iterations': 160000},
           None),
    PSP: ({'Training Resources': '4x GPUs', 'Batch Size': 16}, None),
    'configs/coco/atss_r50_fpn_fame_8xb2-1x_coco.py': ({}, None),  # no runs at all
    DEMO: ({'Iterations': 300}, [{'Task': 'Object Detection',
                                  'Dataset': 'synthetic shapes demo data',
                                  'Metrics': {'box AP': 51.2}}]),
}


@pytest.mark.parametrize('config', METAFILE_MODELS)
def test_metafile_model(metafiles, config):
    meta, results = METAFILE_MODELS[config]
    doc = _load(osp.join(metafiles[0], osp.dirname(config), 'metafile.yml'))
    (model, ) = [m for m in doc['Models'] if m['Config'] == config]
    assert meta.items() <= model['Metadata'].items()
    assert model.get('Results') == results


def test_metafiles_hold_no_unfinished_numbers_and_are_deterministic(metafiles, rows, tmp_path):
    out, written = metafiles
    again = report.write_metafiles(list(rows.values()), REPO, out_root=str(tmp_path))
    for a, b in zip(written, again):
        with open(a, 'rb') as fa, open(b, 'rb') as fb:
            text = fa.read()
            assert text == fb.read()
        assert not any(t.encode() in text for t in SENTINEL_TEXT)


def test_a_later_gather_keeps_results_published_before(metafiles, rows, tmp_path):
    """Gathering an ADE20K-only matrix into the same tree keeps the COCO results."""
    import shutil
    out = str(tmp_path / 'docs')
    shutil.copytree(metafiles[0], out)
    ade_only = [r for r in rows.values() if '/ade20k/' in r['config']]
    report.write_metafiles(ade_only, REPO, out_root=out)
    doc = _load(osp.join(out, 'configs', 'coco', 'metafile.yml'))
    (model, ) = [m for m in doc['Models'] if m['Config'] == RET]
    assert model['Results'] == METAFILE_MODELS[RET][1]


def test_shipped_metafiles_list_every_shipped_config():
    index = _load(osp.join(REPO, 'model-index.yml'))
    assert index['Import'] == ['configs/coco/metafile.yml', 'configs/ade20k/metafile.yml']
    for path in index['Import']:
        doc = _load(osp.join(REPO, path))
        folder = osp.join(REPO, osp.dirname(path))
        shipped = sorted(n for n in os.listdir(folder) if '_fame_' in n and n.endswith('.py'))
        assert [osp.basename(m['Config']) for m in doc['Models']] == shipped
        for model in doc['Models']:  # nothing is published that no gather measured
            for result in model.get('Results', []):
                assert all(isinstance(v, (int, float)) for v in result['Metrics'].values())


def test_no_demo_metafile_without_demo_rows(tmp_path, monkeypatch):
    pytest.importorskip('yaml')
    monkeypatch.setattr(report, '_model_entry', lambda root, folder, path, row: {'Config': path})
    written = report.write_metafiles([], REPO, out_root=str(tmp_path))
    assert [osp.relpath(p, tmp_path) for p in written] == [
        'configs/coco/metafile.yml', 'configs/ade20k/metafile.yml', 'model-index.yml']


# ---------------------------------------------------------------------------------- plots
@pytest.mark.parametrize('records', [RECORDS, [dict(r, curve={}) for r in RECORDS[:2]]],
                         ids=['curves', 'no-curves'])
@pytest.mark.parametrize('curve,spread', [('metric', False), ('loss', True)])
def test_plot_writes_a_png(tmp_path, records, curve, spread):
    pytest.importorskip('matplotlib')
    out = str(tmp_path / 'curves.png')
    report.plot(report.summarize(records), out, curve, spread)
    with open(out, 'rb') as f:
        assert f.read(8) == b'\x89PNG\r\n\x1a\n'
    assert osp.getsize(out) > 1000
