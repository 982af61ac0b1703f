#!/usr/bin/env bash
# CUDA acceptance: every CUDA test (pytest -m cuda: the fused kernel against the float64
# reference, GradScaler/AMP, a device-side tensor lr, compiled steps on CUDA, ZeRO on CUDA
# tensors on one rank, peak memory, a 2**31+-element parameter) and the benchmark table, on one
# GPU, in about 8 minutes. It uses the machine's own CUDA build of torch and needs no registry:
#
#   bash tools/cuda_check.sh --fetch DIR        # where PyPI is reachable: pytest's wheels (Python 3.12)
#   WHEELS=DIR bash tools/cuda_check.sh [OUT]   # on the GPU machine; logs and tables in OUT
#
# pytest is unpacked from WHEELS (pure-Python wheels, into .cuda-check-site) only where the
# machine's Python lacks it; mmfame runs from this checkout. The test modules that need mmengine
# run where it is installed. Exit status: the tests' (3: no CUDA device here).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = --fetch ]; then
    dest=${2:?usage: bash tools/cuda_check.sh --fetch DIR}
    "$PYTHON" -m pip download --only-binary=:all: --python-version "${PY_VERSION:-3.12}" \
        --dest "$dest" pytest
    exit 0
fi

out=${1:-cuda_check}
mkdir -p "$out"
if ! "$PYTHON" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())'; then
    echo "cuda_check: $PYTHON's torch sees no CUDA device: run this on a GPU machine" >&2
    exit 3
fi
if ! "$PYTHON" -c 'import pytest' 2>/dev/null; then
    # Pure-Python wheels are zip files of what they install: unpacked onto PYTHONPATH they
    # import, with no pip, venv or registry on the GPU machine.
    wheels=${WHEELS:?cuda_check: pytest is missing: set WHEELS=DIR (bash tools/cuda_check.sh --fetch DIR)}
    site=$PWD/.cuda-check-site
    "$PYTHON" -c 'import glob, os, sys, zipfile
for wheel in glob.glob(os.path.join(sys.argv[1], "*-none-any.whl")):
    zipfile.ZipFile(wheel).extractall(sys.argv[2])' "$wheels" "$site"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
    "$PYTHON" -c 'import pytest'
fi
files=(tests/test_fame.py tests/test_fame_state.py)
if "$PYTHON" -c 'import mmengine' 2>/dev/null; then
    files+=(tests/test_fame_integrity.py tests/test_mmengine_integration.py)
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
start=$SECONDS
set +e
timeout 330 "$PYTHON" -m pytest "${files[@]}" -m cuda -q -rs -p no:cacheprovider 2>&1 |
    tee "$out/tests.log"
rc=${PIPESTATUS[0]}
timeout 150 "$PYTHON" tools/analysis_tools/benchmark_optimizer.py --device cuda --steps 30 \
    --markdown "$out/benchmark.md" 2>&1 | tee "$out/benchmark.log"
echo "cuda_check: tests exit $rc, benchmark exit ${PIPESTATUS[0]}, $((SECONDS - start)) s" |
    tee -a "$out/tests.log"
exit "$rc"
