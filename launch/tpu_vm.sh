#!/usr/bin/env bash
# Starts one fungizsl training run on every worker of a Cloud TPU VM slice (e.g. v4-32).
#
#   launch/tpu_vm.sh [--dry-run] [--name NAME] [--project P] [--env KEY=VALUE]... TPU_NAME ZONE -- \
#       --config=configs/fungalzsl.py:arch=l14_336,init=/ckpt/clip-l14-336 --workdir=gs://BUCKET/l14_336
#
# 1. packs this checkout (without .git, .venv*, workdir) and copies it to every worker into
#    ~/fungizsl-runs/<launch id>, a folder of its own per launch (the id is NAME, default
#    fungizsl-<UTC time>-<random>); 2. on every worker, launch/tpu_worker.sh setup brings
#    Python 3.11-3.13 (the system one, else uv's) and an environment ~/.fungizsl/venv-tpu with the
#    `tpu` extra, once per version of setup.py, retrying a failed install; no worker starts before
#    every worker is set up; 3. launch/tpu_worker.sh start runs `python -m fungizsl.main
#    --multihost ...` detached (setsid nohup) on every worker, each logging to its own file;
#    4. prints how to follow and stop the run. jax.distributed.initialize() finds the slice's
#    coordinator and process ids itself. Every worker must see the same workdir (a gs:// bucket)
#    and the same data and checkpoint folders. Starting the same command again resumes from the
#    workdir. --dry-run prints every command (local and remote) instead of running it.
set -euo pipefail

usage() {
  echo "usage: $0 [--dry-run] [--name NAME] [--project P] [--env KEY=VALUE]... TPU_NAME ZONE -- <fungizsl.main flags>" >&2
  exit 2
}

DRY_RUN=0 NAME="" PROJECT=() ENVS=()
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY_RUN=1; shift ;;
    --name) NAME=${2:?--name needs a value}; shift 2 ;;
    --project) PROJECT=(--project "${2:?--project needs a value}"); shift 2 ;;
    --env)
      [[ "${2:-}" =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "--env needs KEY=VALUE, got '${2:-}'" >&2; exit 2; }
      ENVS+=("$2"); shift 2 ;;
    -h | --help) usage ;;
    --) break ;;
    -*) echo "unknown option $1" >&2; usage ;;
    *) break ;;
  esac
done
if [ $# -lt 3 ] || [ "$3" != "--" ]; then usage; fi
TPU=$1 ZONE=$2
shift 3
if [ $# -eq 0 ]; then
  echo "no fungizsl.main flags after --: give at least --config=... and --workdir=..." >&2
  exit 2
fi

ID=${NAME:-fungizsl-$(date -u +%Y%m%d-%H%M%S)-$RANDOM}
[[ "$ID" =~ ^[A-Za-z0-9._-]+$ ]] || { echo "--name may hold only letters, digits, '.', '_' and '-'" >&2; exit 2; }
# shellcheck disable=SC2088  # the ~ is for the worker's shell to expand, not ours
REMOTE_DIR="~/fungizsl-runs/$ID"
REMOTE_TGZ="/tmp/fungizsl-src-$ID.tgz"
ROOT=$(cd "$(dirname "$0")/.." && pwd)
LOCAL_TMP=$(mktemp -d)
trap 'rm -rf "$LOCAL_TMP"' EXIT
TGZ="$LOCAL_TMP/fungizsl-src-$ID.tgz"

shell_quote() {  # one word as a shell would need it typed ('...' unless plainly safe)
  if [[ "$1" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

run() {
  if [ "$DRY_RUN" = 1 ]; then
    printf '+'
    for word in "$@"; do printf ' '; shell_quote "$word"; done
    printf '\n'
  else
    "$@"
  fi
}

GCLOUD=(gcloud compute tpus tpu-vm)
ON_ALL=(--zone "$ZONE" --worker=all "${PROJECT[@]}")
MAIN_FLAGS=$(printf ' %q' "$@")
ENV_PREFIX=""
if [ ${#ENVS[@]} -gt 0 ]; then
  ENV_PREFIX="env$(printf ' %q' "${ENVS[@]}") "
fi

echo "== launch $ID on $TPU ($ZONE): packing $ROOT"
run tar -C "$ROOT" --exclude=./.git --exclude='./.venv*' --exclude=./workdir --exclude='__pycache__' \
  -czf "$TGZ" .
echo "== copying the code to every worker ($REMOTE_DIR)"
run "${GCLOUD[@]}" scp "$TGZ" "$TPU:$REMOTE_TGZ" "${ON_ALL[@]}"
echo "== setting up every worker (first launch on a slice: several minutes)"
run "${GCLOUD[@]}" ssh "$TPU" "${ON_ALL[@]}" --command \
  "set -e; mkdir -p ~/fungizsl-runs; mkdir $REMOTE_DIR; tar -C $REMOTE_DIR -xzf $REMOTE_TGZ; rm -f $REMOTE_TGZ; cd $REMOTE_DIR; bash launch/tpu_worker.sh setup"
echo "== starting the run on every worker (detached)"
run "${GCLOUD[@]}" ssh "$TPU" "${ON_ALL[@]}" --command \
  "cd $REMOTE_DIR && ${ENV_PREFIX}bash launch/tpu_worker.sh start --$MAIN_FLAGS"

SSH="gcloud compute tpus tpu-vm ssh $TPU --zone $ZONE${PROJECT[*]:+ ${PROJECT[*]}}"
if [ "$DRY_RUN" = 1 ]; then
  echo "(dry run: nothing was copied or started)"
fi
cat <<MSG

Launch $ID is running detached on every worker of $TPU; code and logs in $REMOTE_DIR on each.
  follow worker 0:   $SSH --worker=0 --command 'tail -f $REMOTE_DIR/logs/*.log'
  status, all:       $SSH --worker=all --command 'cd $REMOTE_DIR && bash launch/tpu_worker.sh status'
  stop, all:         $SSH --worker=all --command 'cd $REMOTE_DIR && bash launch/tpu_worker.sh stop'
Running this launch command again (a new launch id) resumes from the same --workdir.
MSG
