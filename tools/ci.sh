#!/usr/bin/env bash
# The whole test suite as CI runs it (.ci/run): the three tested stacks set up from their lock
# files (tools/setup_env.sh; a second run only checks them), then in each
#   default   every test: the quick tier and the end-to-end tier (-m slow)
#   newest    the quick tier and the end-to-end smoke (it has no OpenMMLab stack: the smoke
#             skips there, saying so)
#   torch2.1  the quick tier and the end-to-end smoke: a detector, a segmentor and mmyolo's
#             YOLOv5-n trained, tested and resumed through tools/ (-m smoke; mmyolo 0.6.0
#             imports only with this stack's mmcv 2.0.1)
# Each tier prints its 15 slowest tests. The quick tier alone, to check a change:
#   .venv/bin/python -m pytest tests -m "not slow"
set -euo pipefail
cd "$(dirname "$0")/.."
pytest=(-m pytest tests -q -p no:cacheprovider --durations=15)
bash tools/setup_env.sh default
.venv/bin/python "${pytest[@]}"
bash tools/setup_env.sh newest
.venv-newest/bin/python "${pytest[@]}" -m "not slow or smoke"
bash tools/setup_env.sh torch2.1
.venv-torch2.1/bin/python "${pytest[@]}" -m "not slow or smoke"
