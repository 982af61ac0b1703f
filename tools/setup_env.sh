#!/usr/bin/env bash
# Create or refresh the project's virtual environment at .venv/ with the full pinned stack.
# Idempotent: a second run only checks what is installed (pip's wheel cache keeps the mmcv build).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=.venv
STAMP=$VENV/.mmfame-setup
want=$(cat tools/setup_env.sh pyproject.toml | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && $VENV/bin/python -c 'import mmfame, mmcv.ops, mmdet, mmseg' 2>/dev/null; then
  echo "setup_env: .venv is up to date"
  exit 0
fi

[ -x $VENV/bin/python ] || $PY -m venv $VENV
# pip warns about local index folders this machine kind lists but lacks: keep only real errors.
pip() { $VENV/bin/python -m pip "$@" 2> >(grep -v "^WARNING: Location" >&2); }
pip install -q --upgrade pip
# Pin torch: an open range may pull a multi-GB CUDA build. torch pulls the newest setuptools, so the
# build tools come after it: mmcv's setup.py (and mmengine's mmdet:: lookup) import pkg_resources.
pip install -q 'torch==2.13.0'
pip install -q 'setuptools<82' wheel ninja numpy
if ! $VENV/bin/python -c 'import mmcv.ops' 2>/dev/null; then
  echo "setup_env: building mmcv 2.1.0 with ops (about 14 minutes on 2 cores, cached afterwards)"
  MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} pip install --no-build-isolation 'mmcv==2.1.0'
fi
pip install -q --no-build-isolation -e '.[openmmlab,test]'
$VENV/bin/python -c 'import mmfame, mmcv.ops, mmdet, mmseg; print("setup_env: ok, torch", __import__("torch").__version__)'
echo "$want" > "$STAMP"
