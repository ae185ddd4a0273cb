#!/usr/bin/env bash
# The project's test command: sets up everything a fresh machine needs, then runs the suite.
#   ./launch/test.sh              whole suite
#   ./launch/test.sh -k parity    extra arguments go to pytest
# Besides the Python environment it brings up the real engines some tests talk to, and leaves
# them running for the next call (both starts are idempotent; `stop` ends them):
#   launch/slurm_local.sh   a SLURM controller and two nodes on localhost (apt-get, needs root)
#   launch/gcs_local.sh     a GCS emulator on localhost, spoken to by gcsfs and google-cloud-storage
# An engine that cannot start here makes its tests skip, except under CI=true, where they fail.
set -euo pipefail
cd "$(dirname "$0")/.."
FUNGIZSL_SETUP="test"
source launch/setup_env.sh  # .venv with the test extra (pytest, PyTorch CPU, GCS emulator) and MiniLM

engine() {  # engine NAME SCRIPT: start it; outside CI a failure only warns (its tests then skip)
  if ! bash "$2" start; then
    if [ "${CI:-}" = true ]; then
      echo "test.sh: could not start $1 ($2 start failed) and CI=true" >&2
      exit 1
    fi
    echo "test.sh: could not start $1; its tests will skip" >&2
  fi
}
engine "the local SLURM cluster" launch/slurm_local.sh
engine "the GCS emulator" launch/gcs_local.sh >/dev/null  # stdout: its export lines, taken below
eval "$(bash launch/gcs_local.sh env)"
exec python -m pytest -ra "$@" tests
