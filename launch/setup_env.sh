# Makes the Python environment for one kind of job, installs the project into it once per version
# of setup.py, activates it and keeps every hub offline. Sourced by the launch scripts, or run:
#   bash launch/setup_env.sh cuda12        (e.g. on a SLURM login node, before sbatch)
#
# FUNGIZSL_SETUP (or the first argument when run) picks what is installed:
#   main    the package and MiniLM, no test stack (./launch/local.sh)       -> .venv
#   test    main + the test extra: pytest, PyTorch (./launch/test.sh)       -> .venv
#   cuda12 | cuda13 | tpu   main + JAX for that accelerator                 -> .venv-<mode>
# Each mode leaves a stamp in the environment holding a checksum of setup.py and
# launch/requirements-no-deps.txt; the install runs again only when they change, a failed install
# is retried (FUNGIZSL_INSTALL_TRIES, default 3) and leaves no stamp. A current `test` stamp also
# satisfies `main` (test installs everything main does), so switching between ./launch/test.sh and
# ./launch/local.sh installs nothing.
#
# In main and test mode, as root with apt-get, it also installs tcmalloc (libtcmalloc-minimal4)
# when missing: `python -m fungizsl.main` and `python -m fungizsl.bench` run under it
# (fungizsl/allocator.py says why).
#
# Other settings: FUNGIZSL_VENV (where the environment lives), FUNGIZSL_PYTHON (interpreter to
# build it with; default the first Python 3.11-3.13 with venv among python3.11, python3.12,
# python3.13, python3; failing that `uv python install 3.11` when uv is on PATH or
# FUNGIZSL_INSTALL_UV=1 lets us install uv), FUNGIZSL_TORCH_INDEX (test mode: the index torch comes
# from, e.g. https://download.pytorch.org/whl/cpu on a machine where PyPI's torch is a CUDA build),
# FUNGIZSL_DRY_RUN=1 (print the commands instead of running them).

_fz_run() {
  if [ "${FUNGIZSL_DRY_RUN:-0}" = 1 ]; then
    printf '+'; printf ' %q' "$@"; printf '\n'
  else
    "$@"
  fi
}

_fz_retry() {  # a failed install step is tried again (networks and package indexes flake)
  local try=1 tries=${FUNGIZSL_INSTALL_TRIES:-3}
  until _fz_run "$@"; do
    if [ "$try" -ge "$tries" ]; then
      echo "setup_env: failed $tries times: $*" >&2
      return 1
    fi
    echo "setup_env: attempt $try of $tries failed; retrying in ${FUNGIZSL_RETRY_SLEEP:-15}s: $*" >&2
    sleep "${FUNGIZSL_RETRY_SLEEP:-15}"
    try=$((try + 1))
  done
}

_fz_find_python() {  # the first interpreter in 3.11-3.13 that can make a venv with pip
  local candidate
  for candidate in ${FUNGIZSL_PYTHON:-} python3.11 python3.12 python3.13 python3; do
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys, venv, ensurepip; sys.exit(not (3, 11) <= sys.version_info[:2] < (3, 14))' \
        >/dev/null 2>&1; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

_fz_make_venv() {
  local venv=$1 python
  if python=$(_fz_find_python); then
    echo "setup_env: creating $venv with $python" >&2
    _fz_run "$python" -m venv "$venv"
    return
  fi
  if ! command -v uv >/dev/null 2>&1; then
    if [ "${FUNGIZSL_INSTALL_UV:-0}" != 1 ]; then
      echo "setup_env: no Python 3.11-3.13 with venv found (tried ${FUNGIZSL_PYTHON:-} python3.11" \
           "python3.12 python3.13 python3). Install one, set FUNGIZSL_PYTHON=/path/to/python3.x," \
           "or put uv on PATH (it brings its own Python)." >&2
      return 1
    fi
    echo "setup_env: no Python 3.11-3.13 here; installing uv to bring one" >&2
    _fz_retry python3 -m pip install --user --quiet uv \
      || _fz_retry sh -c 'curl -LsSf https://astral.sh/uv/install.sh | sh' || return 1
    export PATH="$HOME/.local/bin:$PATH"
  fi
  echo "setup_env: creating $venv with uv's Python 3.11" >&2
  _fz_retry uv python install 3.11 && _fz_run uv venv --seed --python 3.11 "$venv"
}

_fz_tcmalloc() {  # fungizsl/allocator.py: entry points run under tcmalloc (XLA:CPU steps 1.2-1.3x faster)
  # Where to look is allocator.find_tcmalloc's one list, asked through the environment's Python.
  "$1/bin/python" -c 'import sys; from fungizsl import allocator; sys.exit(allocator.find_tcmalloc() is None)' \
    >/dev/null 2>&1 && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
    return 0  # not ours to install; the entry points say so in one line and fall back to glibc
  fi
  echo "setup_env: installing tcmalloc (libtcmalloc-minimal4) with apt-get" >&2
  _fz_run apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1 \
    || { _fz_run apt-get update -qq >/dev/null 2>&1 && _fz_run apt-get install -y -qq libtcmalloc-minimal4 >/dev/null 2>&1; } \
    || echo "setup_env: apt-get install libtcmalloc-minimal4 failed; going on with glibc's malloc" >&2
}

_fz_fingerprint() {
  cat setup.py launch/requirements-no-deps.txt | cksum | cut -d' ' -f1
}

_fz_setup() {
  local mode=${FUNGIZSL_SETUP:-main} venv extra fingerprint
  case "$mode" in
    main) extra="" ;;
    test | cuda12 | cuda13 | tpu) extra="[$mode]" ;;
    *) echo "setup_env: FUNGIZSL_SETUP=$mode: use main, test, cuda12, cuda13 or tpu" >&2; return 2 ;;
  esac
  case "$mode" in main | test) venv=${FUNGIZSL_VENV:-.venv} ;; *) venv=${FUNGIZSL_VENV:-.venv-$mode} ;; esac
  fingerprint="$mode $(_fz_fingerprint)" || return 1

  if [ -f "$venv/.fungizsl-$mode" ] && [ "$(cat "$venv/.fungizsl-$mode")" = "$fingerprint" ]; then
    :
  elif [ "$mode" = main ] && [ -f "$venv/.fungizsl-test" ] \
      && [ "$(cat "$venv/.fungizsl-test")" = "test ${fingerprint#main }" ]; then
    :
  else
    echo "setup_env: installing fungizsl ($mode) into $venv (first run: a few minutes)..." >&2
    if [ ! -x "$venv/bin/python" ]; then
      _fz_make_venv "$venv" || return 1
    fi
    local python="$venv/bin/python"
    _fz_retry "$python" -m pip install --quiet --upgrade pip || return 1
    if [ "$mode" = test ] && [ -n "${FUNGIZSL_TORCH_INDEX:-}" ]; then
      _fz_retry "$python" -m pip install --quiet "torch==2.13.0" --index-url "$FUNGIZSL_TORCH_INDEX" || return 1
    fi
    _fz_retry "$python" -m pip install --quiet -e ".$extra" || return 1
    _fz_retry "$python" -m pip install --quiet --no-deps -r launch/requirements-no-deps.txt || return 1
    if [ "${FUNGIZSL_DRY_RUN:-0}" = 1 ]; then
      echo "+ echo '$fingerprint' > $venv/.fungizsl-$mode"
    else
      echo "$fingerprint" >"$venv/.fungizsl-$mode"
    fi
  fi

  case "$mode" in main | test) _fz_tcmalloc "$venv" ;; esac  # CPU jobs; accelerator hosts bring their own

  if [ "${FUNGIZSL_DRY_RUN:-0}" != 1 ]; then
    # shellcheck disable=SC1091
    source "$venv/bin/activate" || return 1
  fi
  # Nothing may be fetched from a hub at run time. transformers is used for tokenizers only, so its
  # advice that PyTorch is missing (as it is, on purpose, outside the test environment) is noise.
  export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_NO_ADVISORY_WARNINGS=1
  export TF_CPP_MIN_LOG_LEVEL=3
  export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # configs/ is imported by path
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then  # run, not sourced
  set -uo pipefail
  cd "$(dirname "$0")/.." || exit 1
  FUNGIZSL_SETUP=${1:-${FUNGIZSL_SETUP:-main}} _fz_setup || exit 1
else
  _fz_setup || return 1
fi
