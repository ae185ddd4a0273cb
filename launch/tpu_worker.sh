#!/usr/bin/env bash
# What launch/tpu_vm.sh runs on each TPU VM worker, from the launch's own copy of the code:
#   bash launch/tpu_worker.sh setup                   Python + the `tpu` extra, once (stamp, retried)
#   bash launch/tpu_worker.sh start -- <main flags>   python -m fungizsl.main --multihost, detached
#   bash launch/tpu_worker.sh status | stop           is this launch's process alive / stop it
# The environment lives in FUNGIZSL_VENV (default ~/.fungizsl/venv-tpu), shared by the launches on
# this worker and rebuilt only when setup.py or launch/requirements-no-deps.txt change. Each worker
# logs to logs/<hostname>.log in the launch folder and keeps its process group id in run.pid.
set -euo pipefail
cd "$(dirname "$0")/.."
export FUNGIZSL_VENV=${FUNGIZSL_VENV:-$HOME/.fungizsl/venv-tpu}
LOG="logs/$(hostname).log"

running() { [ -f run.pid ] && kill -0 "$(cat run.pid)" 2>/dev/null; }

case "${1:-}" in
  setup)
    mkdir -p "$(dirname "$FUNGIZSL_VENV")"
    # TPU VM images may ship a Python older than 3.11: let setup_env.sh fetch uv to bring one.
    FUNGIZSL_INSTALL_UV=1 bash launch/setup_env.sh tpu
    echo "worker $(hostname): environment ready in $FUNGIZSL_VENV"
    ;;
  start)
    shift
    [ "${1:-}" = "--" ] && shift
    if [ ! -x "$FUNGIZSL_VENV/bin/python" ] || [ ! -f "$FUNGIZSL_VENV/.fungizsl-tpu" ]; then
      echo "worker $(hostname): no environment in $FUNGIZSL_VENV; run 'bash launch/tpu_worker.sh setup' first" >&2
      exit 1
    fi
    if running; then
      echo "worker $(hostname): this launch is already running (pid $(cat run.pid))" >&2
      exit 1
    fi
    mkdir -p logs
    export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
    export TF_CPP_MIN_LOG_LEVEL=3
    export PYTHONPATH="$PWD" FUNGIZSL_MULTIHOST=1 PYTHONUNBUFFERED=1
    # setsid: its own session and process group, so the run outlives the ssh session and `stop`
    # can signal the whole group; in a non-interactive shell setsid execs without forking, so $!
    # is the Python process and its group id.
    setsid nohup "$FUNGIZSL_VENV/bin/python" -m fungizsl.main --multihost "$@" >"$LOG" 2>&1 </dev/null &
    echo $! >run.pid
    echo "worker $(hostname): started pid $(cat run.pid), log $PWD/$LOG"
    ;;
  status)
    if running; then echo "worker $(hostname): running (pid $(cat run.pid))"; else echo "worker $(hostname): not running"; fi
    if [ -f "$LOG" ]; then tail -n 3 "$LOG"; fi
    ;;
  stop)
    if running; then
      kill -TERM -- "-$(cat run.pid)"
      echo "worker $(hostname): sent SIGTERM to process group $(cat run.pid)"
    else
      echo "worker $(hostname): not running"
    fi
    ;;
  *)
    echo "usage: $0 setup | start -- <fungizsl.main flags> | status | stop" >&2
    exit 2
    ;;
esac
