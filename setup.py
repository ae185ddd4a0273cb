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

TEST = [
    "pytest>=8,<10",
    # PyTorch is only the numerical reference for parity tests; never imported at run time.
    "torch==2.13.0",
]

setup(
    name="fungizsl",
    version="0.1.0",
    description="Zero-shot and few-shot fungal classification with vision-language models in JAX/Flax",
    python_requires=">=3.11,<3.14",
    packages=find_packages(include=["fungizsl", "fungizsl.*"]),
    install_requires=RUNTIME,
    extras_require={"test": TEST},
    entry_points={"console_scripts": ["fungizsl=fungizsl.cli:main"]},
)
