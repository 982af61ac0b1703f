"""mmfame.experiments.upstream: each shipped config's mmdet::/mmseg:: base, that base's entry in the
installed package's metafile, and the cost table built from them (numbers the metafile has, None
with a reason for those it lacks)."""
import glob
import importlib.util
import math
import os.path as osp
import re

import pytest

pytest.importorskip('mmdet', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')
pytest.importorskip('mmseg', reason='the OpenMMLab stack (mmdet, mmseg, mmcv) is not installed')

import yaml  # noqa: E402

from mmfame.experiments import upstream  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
DATASETS = {'coco': 'mmdet', 'ade20k': 'mmseg'}  # configs/<dataset>/ -> upstream package
MEMORY_KEY = {'mmdet': 'Training Memory (GB)', 'mmseg': 'Memory (GB)'}
CONFIGS = sorted(osp.relpath(p, REPO) for d in DATASETS
                 for p in glob.glob(osp.join(REPO, 'configs', d, '*.py')))
RETINANET = 'configs/coco/retinanet_r50_fpn_fame_8xb2-1x_coco.py'
RETINANET_BASE = 'mmdet::retinanet/retinanet_r50_fpn_1x_coco.py'
# The schedule a name promises: {schedule} part -> (epochs, iterations)
SCHEDULES = {'1x': (12, None), '12e': (12, None), '300e': (300, None), '160k': (None, 160000)}
NAME_RE = re.compile(r'_(\d+)xb(\d+)-(?:amp-)?([0-9a-z]+)_')


def package_dir(package):
    return importlib.util.find_spec(package).submodule_search_locations[0]


def metafile_entry(base):
    """The base's metafile entry and its collection, read here without mmfame."""
    package, _, path = base.partition('::')
    for metafile in glob.glob(osp.join(package_dir(package), '.mim', 'configs',
                                       osp.dirname(path), 'metafile.y*ml')):
        with open(metafile) as f:
            data = yaml.safe_load(f)
        for model in data['Models']:
            if model['Config'] == f'configs/{path}':
                collection = [c for c in data.get('Collections', [])
                              if c['Name'] == model['In Collection']]
                return model, (collection[0] if collection else {})
    raise AssertionError(f'no metafile entry for {base}')


def named_base(path):
    """The `_base_ = '...'` string the file spells out."""
    with open(osp.join(REPO, path)) as f:
        return re.search(r"^_base_ = '([^']+)'$", f.read(), re.M).group(1)


@pytest.fixture(scope='module')
def rows():
    return {row['config']: row for row in upstream.cost_rows(CONFIGS)}


def test_configs_found():
    assert len(CONFIGS) >= 14 and RETINANET in CONFIGS, CONFIGS


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_upstream_base(path):
    base = upstream.upstream_base(osp.join(REPO, path))
    assert base == named_base(path)
    assert base.startswith(DATASETS[path.split('/')[1]] + '::'), base


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_upstream_model(path):
    base = named_base(path)
    model, collection = metafile_entry(base)
    found = upstream.upstream_model(base)
    assert found['Config'] == model['Config'] == 'configs/' + base.split('::')[1]
    assert found['Name'] == model['Name'] and found['Results'] == model['Results']
    # the collection's metadata under the model's own
    assert found['Metadata'] == {**collection.get('Metadata', {}), **model['Metadata']}


@pytest.mark.parametrize('path', CONFIGS, ids=osp.basename)
def test_cost_row(rows, path):
    row = rows[path]
    base = named_base(path)
    model, collection = metafile_entry(base)
    metadata = {**collection.get('Metadata', {}), **model['Metadata']}
    gpus, batch, schedule = NAME_RE.search(osp.basename(path)).groups()
    assert row['base'] == base
    assert (row['gpus'], row['batch']) == (int(gpus), int(batch))
    assert (row['epochs'], row['iters']) == SCHEDULES[schedule]
    assert row['memory_gb'] == metadata.get(MEMORY_KEY[base.split('::')[0]])
    assert row['hardware'] == metadata.get('Training Resources')
    if row['epochs'] is None:
        assert row['total_iters'] == row['iters']
    else:  # COCO: epochs x iterations over train2017 at the total batch
        assert row['total_iters'] == row['epochs'] * math.ceil(118287 / (int(gpus) * int(batch)))
    # No installed metafile gives a training time: no GPU-hours, and the row says why.
    assert not any('training time' in k.lower() for k in metadata), metadata
    assert row['s_per_iter'] is None and row['gpu_hours'] is None
    assert row['missing']['gpu_hours'] == 'no training time in upstream metafile'
    assert ('memory_gb' in row['missing']) == (row['memory_gb'] is None)


def test_retinanet_memory(rows):
    model, _ = metafile_entry(RETINANET_BASE)
    assert rows[RETINANET]['memory_gb'] == model['Metadata']['Training Memory (GB)'] is not None


def test_gpu_hours_from_a_training_time(monkeypatch):
    entry = dict(upstream.upstream_model(RETINANET_BASE))
    entry['Metadata'] = {**entry['Metadata'], 'training time (s/iter)': 0.5}
    monkeypatch.setattr(upstream, 'upstream_model', lambda base: entry)
    row, = upstream.cost_rows([RETINANET])
    assert row['s_per_iter'] == 0.5 and 'gpu_hours' not in row['missing']
    assert row['gpu_hours'] == pytest.approx(0.5 * 12 * math.ceil(118287 / 16) * 8 / 3600)


def write(path, text):
    path.write_text(text)
    return str(path)


def test_local_base_resolves(tmp_path):
    write(tmp_path / 'upper.py', f"_base_ = ['./other.py', '{RETINANET_BASE}']\n")
    write(tmp_path / 'other.py', 'x = 1\n')  # no _base_: the next base of the list counts
    config = write(tmp_path / 'retinanet_lower_fame_2xb4-1x_coco.py', "_base_ = './upper.py'\n")
    assert upstream.upstream_base(config) == RETINANET_BASE
    row, = upstream.cost_rows([config])
    model, _ = metafile_entry(RETINANET_BASE)
    assert row['config'] == config and row['base'] == RETINANET_BASE
    assert (row['gpus'], row['batch'], row['epochs']) == (2, 4, 12)
    assert row['total_iters'] == 12 * math.ceil(118287 / 8)
    assert row['memory_gb'] == model['Metadata']['Training Memory (GB)']


@pytest.mark.parametrize('base', [
    'mmdet::retinanet/retinanet_r50_fpn_7x_coco.py',  # no such entry in the metafile
    'mmdet::no_such_algo/no_such_algo_r50_1x_coco.py',  # no such folder
    'mmseg::retinanet/retinanet_r50_fpn_1x_coco.py',  # the other package
    'no_such_package::retinanet/retinanet_r50_fpn_1x_coco.py',
])
def test_unknown_base(base):
    assert upstream.upstream_model(base) is None


def test_no_upstream_base(tmp_path):
    assert upstream.upstream_base(write(tmp_path / 'plain.py', 'x = 1\n')) is None
    local = write(tmp_path / 'local.py', "_base_ = './plain.py'\n")
    assert upstream.upstream_base(local) is None


def test_cost_markdown(rows):
    text = upstream.cost_markdown(list(rows.values()))
    lines = text.splitlines()
    assert lines[0].startswith('| config | upstream base | GPUs x batch | schedule |')
    body = [line for line in lines[2:] if line.startswith('|')]
    assert len(body) == len(rows)
    retinanet = next(line for line in body if osp.basename(RETINANET) in line)
    memory = rows[RETINANET]['memory_gb']
    assert (f'| `{RETINANET_BASE}` | 8 x 2 | 12 epochs (88,716 iters) | {memory:g} | — '
            '| — (no training time in upstream metafile) |' in retinanet), retinanet
    note = lines[-1]
    assert 'metafile' in note and 'V100' in note and 'no training time' in note, note
    assert '8 bytes/param more' in note and '16 B/param' in note, note


def test_readme_table_is_current():
    """configs/README.md's cost section is what `tools/reproduce.py cost --write` writes now."""
    from mmfame.experiments.configs import select_configs
    with open(osp.join(REPO, 'configs', 'README.md')) as f:
        readme = f.read()
    block = readme.split('<!-- cost-table:start -->')[1].split('<!-- cost-table:end -->')[0]
    table = upstream.cost_markdown(upstream.cost_rows(select_configs(['coco', 'ade20k'])))
    assert block.strip() == table.strip()
