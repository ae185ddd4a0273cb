#!/usr/bin/env bash
# Runs one fungizsl training command on every worker of a Cloud TPU VM slice (e.g. v4-32).
#
#   launch/tpu_vm.sh TPU_NAME ZONE -- --config=configs/fungalzsl.py:arch=l14_336,init=/ckpt/clip-l14-336 \
#       --workdir=gs://BUCKET/fungalzsl/l14_336
#
# What it does on each worker, in parallel (gcloud --worker=all): copies this checkout to
# ~/fungizsl, creates .venv there once with jax[tpu] and the project, then starts
# `python -m fungizsl.main --multihost ...`. jax.distributed.initialize() finds the slice's
# coordinator and process ids itself on TPU VMs. Every worker must see the same workdir (use a
# gs:// bucket) and the same data/checkpoint folders (GCS or a mounted filestore).
set -euo pipefail
if [ $# -lt 3 ] || [ "$3" != "--" ]; then
  echo "usage: $0 TPU_NAME ZONE -- <fungizsl.main flags>" >&2
  exit 2
fi
TPU=$1 ZONE=$2
shift 3
ARGS=$(printf '%q ' "$@")
ROOT=$(cd "$(dirname "$0")/.." && pwd)

tar -C "$ROOT" --exclude=.venv --exclude=workdir --exclude=.git -czf /tmp/fungizsl-src.tgz .
gcloud compute tpus tpu-vm scp /tmp/fungizsl-src.tgz "$TPU":/tmp/ --zone "$ZONE" --worker=all
gcloud compute tpus tpu-vm ssh "$TPU" --zone "$ZONE" --worker=all --command "
  set -e
  mkdir -p ~/fungizsl && tar -C ~/fungizsl -xzf /tmp/fungizsl-src.tgz && cd ~/fungizsl
  if [ ! -x .venv/bin/python ]; then
    python3.11 -m venv .venv && .venv/bin/pip install -q -U pip && .venv/bin/pip install -q 'jax[tpu]' -e .
  fi
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONPATH=\$PWD FUNGIZSL_MULTIHOST=1
  .venv/bin/python -m fungizsl.main --multihost $ARGS
"
