#!/usr/bin/env bash
# The project's test command: sets up everything a fresh machine needs, then runs the suite.
#   ./launch/test.sh              whole suite
#   ./launch/test.sh -k parity    extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
FUNGIZSL_SETUP="test"
source launch/setup_env.sh  # .venv with the test extra (pytest, PyTorch CPU) and MiniLM
exec python -m pytest -ra "$@" tests
