#!/usr/bin/env bash
# Create or refresh the virtual environment of one of the project's tested stacks, installed from
# its lock file (every package pinned to the versions the test suite passed with).
#
#   bash tools/setup_env.sh [STACK]           STACK: default (.venv, torch 2.13, mmcv 2.1.0,
#                                             Python 3.11), torch2.1 (.venv-torch2.1, torch 2.1.2,
#                                             mmcv 2.0.1, mmyolo 0.6.0, numpy 1.26, Python 3.9) or
#                                             newest (.venv-newest, the newest torch and numpy, no
#                                             OpenMMLab stack)
#   bash tools/setup_env.sh --relock [STACK]  re-resolve tools/locks/STACK.in and pyproject.toml's
#                                             extras in a new environment, run the test suite in
#                                             it and, if it passes, rewrite tools/locks/STACK.txt
#
# Idempotent: a second run only checks what is installed. mmcv has no wheels for these stacks on
# PyPI: it is built from source with its CPU ops (about 5 minutes on 2 cores) once per mmcv and
# torch version into a wheel cache (MMFAME_WHEELS, default ~/.cache/mmfame/wheels). pip's own
# cache cannot be used: it would hand the wheel built against one torch to another torch.
set -euo pipefail
cd "$(dirname "$0")/.."

relock=0
if [ "${1:-}" = --relock ]; then relock=1; shift; fi
STACK=${1:-default}

python39() {  # the oldest supported Python: on PATH, or from pyenv
  for py in python3.9 "${PYENV_ROOT:-$HOME/.pyenv}"/versions/3.9*/bin/python3.9; do
    if command -v "$py" >/dev/null && "$py" -c '' 2>/dev/null; then echo "$py"; return; fi
  done
  echo "setup_env: no Python 3.9 found; building the torch2.1 stack with python3" >&2
  echo python3
}

openmmlab=1
MMCV=2.1.0
mmyolo=0
case $STACK in
  default) VENV=.venv; PY=${PYTHON:-python3} ;;
  # mmyolo 0.6.0 asserts mmcv < 2.1.0 at import; mmdet 3.3 and mmseg 1.2 take mmcv 2.0.1 too.
  torch2.1) VENV=.venv-torch2.1; PY=${PYTHON:-$(python39)}; MMCV=2.0.1; mmyolo=1 ;;
  # A machine-wide pip configuration may cap torch below the newest release: bypass it.
  newest) VENV=.venv-newest; PY=${PYTHON:-python3}; openmmlab=0; export PIP_CONFIG_FILE=/dev/null ;;
  *) echo "setup_env: unknown stack '$STACK' (use default, torch2.1 or newest)" >&2; exit 2 ;;
esac
imports=mmfame
[ $openmmlab = 1 ] && imports="mmfame, mmcv.ops, mmdet, mmseg"
[ $mmyolo = 1 ] && imports="$imports, mmyolo, albumentations"
REQS=tools/locks/$STACK.in
LOCK=tools/locks/$STACK.txt
STAMP=$VENV/.mmfame-setup
fingerprint() {  # of everything that decides what the environment holds
  cat tools/setup_env.sh pyproject.toml "$REQS" $([ -f "$LOCK" ] && echo "$LOCK") \
    | sha256sum | cut -d' ' -f1
}
want=$(fingerprint)

if [ $relock = 0 ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && $VENV/bin/python -c "import $imports" 2>/dev/null; then
  echo "setup_env: $VENV ($STACK) is up to date"
  exit 0
fi

if [ $relock = 1 ]; then
  rm -rf "$VENV"
  pins=()
else
  pins=(-c "$LOCK")
fi
[ -x $VENV/bin/python ] || "$PY" -m venv $VENV
# pip warns about local index folders a machine-wide pip config lists but lacks, and about openmim's
# opendatalab (left out on purpose, below): keep only real errors.
pip() {
  $VENV/bin/python -m pip "$@" 2> >(grep -v -e "^WARNING: Location" -e "requires opendatalab" \
    -e "^ERROR: pip's dependency resolver does not currently" >&2)
}
pip install -q "${pins[@]}" --upgrade pip
# torch and the build tools first: mmcv's setup.py imports torch, and it and mmengine's `mmdet::`
# config lookup import pkg_resources (gone in setuptools 82).
pip install -q "${pins[@]}" -r "$REQS"

if [ $openmmlab = 1 ]; then
  torch_version=$($VENV/bin/python -c 'import torch; print(torch.__version__)')
  py_tag=$($VENV/bin/python -c 'import sys; print("cp%d%d" % sys.version_info[:2])')
  wheels=${MMFAME_WHEELS:-$HOME/.cache/mmfame/wheels}/torch-$torch_version-$py_tag
  if ! ls "$wheels"/mmcv-$MMCV-*.whl >/dev/null 2>&1; then
    echo "setup_env: building mmcv $MMCV with ops against torch $torch_version" \
         "(about 5 minutes on 2 cores, cached in $wheels)"
    tmp=$(mktemp -d)
    pip download -q --no-deps --no-build-isolation --no-binary :all: -d "$tmp" "mmcv==$MMCV"
    tar -xzf "$tmp"/mmcv-$MMCV.tar.gz -C "$tmp"
    # mmcv 2.0's setup.py asks for C++14; torch 2.1's headers need C++17 (mmcv 2.1 asks for it).
    sed -i 's/-std=c++14/-std=c++17/' "$tmp"/mmcv-$MMCV/setup.py
    # Python's own compile flags without their -g: debug info doubles the compile time of every
    # torch-header-heavy source (the flags replace or extend Python's, by setuptools version).
    flags="$($VENV/bin/python -c 'import sysconfig; print(sysconfig.get_config_var("CFLAGS"))') -g0"
    CFLAGS=$flags CXXFLAGS=$flags MMCV_WITH_OPS=1 MAX_JOBS=${MAX_JOBS:-2} pip wheel -q \
      --no-build-isolation --no-deps --no-cache-dir -w "$tmp" "$tmp"/mmcv-$MMCV
    mkdir -p "$wheels" && mv "$tmp"/mmcv-$MMCV-*.whl "$wheels"/ && rm -rf "$tmp"
  fi
  pip install -q "${pins[@]}" "$wheels"/mmcv-$MMCV-*.whl
  pip install -q "${pins[@]}" --no-build-isolation -e '.[openmmlab,test]'
  # openmim (`mim train/test`, tested) without its dataset downloader opendatalab, whose openxlab
  # would downgrade setuptools to 60.2.
  pip install -q "${pins[@]}" --no-deps 'openmim==0.3.9'
  pip install -q "${pins[@]}" click colorama model-index pandas requests rich tabulate
  if [ $mmyolo = 1 ]; then
    # mmyolo and the albumentations its YOLOv5 pipeline needs, as mmyolo's docs install it:
    # albumentations and qudida built here, so that they take mmcv's opencv-python instead of
    # adding opencv-python-headless, whose cv2 would replace it.
    pip install -q "${pins[@]}" 'mmyolo==0.6.0'
    pip install -q "${pins[@]}" --no-build-isolation --no-binary qudida,albumentations \
      'albumentations==1.3.1'
  fi
else
  pip install -q "${pins[@]}" --no-build-isolation -e '.[mmengine,test]'
fi
$VENV/bin/python -c "import $imports, numpy, sys, torch
stack = [mmcv, mmdet, mmseg] if $openmmlab else []
stack += [mmyolo, albumentations] if $mmyolo else []
print('setup_env: ok: Python', sys.version.split()[0], 'torch', torch.__version__, 'numpy',
      numpy.__version__, *(f'{m.__name__} {m.__version__}' for m in stack))"

if [ $relock = 1 ]; then
  $VENV/bin/python -m pytest tests -q -p no:cacheprovider
  { echo "# tools/setup_env.sh --relock $STACK on $(date -u +%Y-%m-%d): every package of $VENV"
    pip list --format=freeze --exclude-editable; } > "$LOCK"  # name==version, also for mmcv
  echo "setup_env: wrote $LOCK"
  want=$(fingerprint)
fi
echo "$want" > "$STAMP"
