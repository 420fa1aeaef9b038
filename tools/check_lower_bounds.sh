#!/usr/bin/env bash
# Are setup.cfg's lower bounds true? Install exactly them (tools/lower_bounds.txt) into a fresh
# virtual environment and run the tests that exercise every core dependency (numpy, scipy, pandas,
# Optuna, PyYAML, tqdm, matplotlib, Pillow, mlxtend, torch), without the slow ones.
#   bash tools/check_lower_bounds.sh            # venv in .venv-lower (kept for reruns)
set -euo pipefail
cd "$(dirname "$0")/.."
export RAY_AUTH_MODE=disabled RAY_USAGE_STATS_ENABLED=0 OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
venv=${LOWER_BOUNDS_VENV:-.venv-lower}
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/pip" install -q -c constraints.txt -r tools/lower_bounds.txt "pytest>=7" "pytest-timeout>=2" "hypothesis>=6"
"$venv/bin/pip" install -q --no-deps -e .
"$venv/bin/python" -m pip list 2>/dev/null | grep -iE "^(torch|numpy|scipy|pandas|optuna|pyyaml|tqdm|matplotlib|pillow|mlxtend) "
PYTHONPATH=$PWD "$venv/bin/python" -m pytest -m "not slow" -p no:cacheprovider \
    tests/test_lower_bounds.py tests/test_data.py tests/test_bounds.py tests/test_remap.py tests/test_train.py \
    tests/test_search.py tests/test_cli_train.py
