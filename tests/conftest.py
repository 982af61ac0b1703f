import os
import os.path as osp
import subprocess

import pytest
import torch

import e2e

# Without a GPU the fused Triton kernel is tested in Triton's interpreter on CPU tensors. The
# switch is read when the kernel is defined, so it must be set before mmfame is imported.
if not torch.cuda.is_available():
    os.environ.setdefault('TRITON_INTERPRET', '1')


@pytest.fixture(scope='session', autouse=True)
def cpu_blocks_of_test_size():
    """The CPU foreach chain's cache blocks scaled to the test tensors (cases.make_params)."""
    import cases  # imports mmfame: only after TRITON_INTERPRET is set above
    from mmfame.optim import fame
    shipped, fame.CPU_BLOCK_NUMEL = fame.CPU_BLOCK_NUMEL, cases.TEST_CPU_BLOCK_NUMEL
    yield
    fame.CPU_BLOCK_NUMEL = shipped


@pytest.fixture(scope='session')
def demo_data(tmp_path_factory):
    from mmfame.datasets.demo import make_demo
    root = tmp_path_factory.mktemp('demo_data')
    return make_demo(str(root), num_train=8, num_val=2, img_size=(64, 64), seed=0)


@pytest.fixture(scope='session')
def slurm_cluster(tmp_path_factory):
    """A private two-node Slurm (tests/slurm/start.sh), stopped by pid files at teardown."""
    mode = e2e.slurm_mode()
    if mode not in ('install', 'installed'):
        pytest.skip(mode)
    state = str(tmp_path_factory.mktemp('slurm'))
    ctld, *slurmds = e2e.free_ports(3)
    env = e2e.tool_env(MMFAME_SLURMCTLD_PORT=ctld, MMFAME_SLURMD_PORTS=' '.join(map(str, slurmds)),
                       MMFAME_SLURM_NO_INSTALL=int(mode == 'installed'))
    try:
        proc = subprocess.run(['bash', osp.join(e2e.SLURM_DIR, 'start.sh'), state], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              timeout=900)
    except subprocess.TimeoutExpired:
        subprocess.run(['bash', osp.join(e2e.SLURM_DIR, 'stop.sh'), state])
        pytest.fail('tests/slurm/start.sh timed out')
    if proc.returncode == 2 and mode == 'installed':  # e.g. munge missing: install nothing
        pytest.skip((proc.stdout.strip().splitlines() or ['Slurm cannot run here'])[-1])
    if proc.returncode != 0:
        subprocess.run(['bash', osp.join(e2e.SLURM_DIR, 'stop.sh'), state])
        pytest.fail(f'tests/slurm/start.sh failed:\n{proc.stdout[-4000:]}')
    try:
        yield dict(SLURM_CONF=osp.join(state, 'slurm.conf'), partition='mmfame', state=state)
    finally:
        subprocess.run(['bash', osp.join(e2e.SLURM_DIR, 'stop.sh'), state], timeout=120)


@pytest.fixture(scope='session')
def ddp_run(demo_data, tmp_path_factory):
    """tools/dist_train.sh on 2 gloo ranks (DDP), 2N iterations: the run the Slurm layouts and
    the sharded runs must equal."""
    tmp = tmp_path_factory.mktemp('ddp')
    cfg = e2e.rank_config(tmp / 'det_ddp.py')
    work = str(tmp / 'work')
    e2e.dist_train(cfg, demo_data, work)
    return dict(cfg=cfg, work_dir=work)


@pytest.fixture(scope='module')
def one_rank_group(tmp_path_factory):
    """A 1-rank process group (ZeRO and FSDP need one to be built): gloo, and NCCL for CUDA
    tensors where there is a GPU."""
    import torch.distributed as dist
    if dist.is_initialized():
        yield
        return
    store = str(tmp_path_factory.mktemp('pg') / 'store')
    backend = 'cpu:gloo,cuda:nccl' if torch.cuda.is_available() else 'gloo'
    dist.init_process_group(backend, init_method=f'file://{store}', rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


def pytest_collection_modifyitems(items):
    """Tests parametrized on device='cuda' are CUDA tests too: `pytest tests -m cuda` runs every
    CUDA test (tools/cuda_check.sh)."""
    for item in items:
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        if any(isinstance(v, str) and v == 'cuda' for v in params.values()):
            item.add_marker(pytest.mark.cuda)
