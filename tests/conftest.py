"""Test-wide setup: eight simulated CPU devices, no hub access, and the real-data folder.

XLA reads the device count once, when JAX first initialises its backend, so the flags must be set
before any test module imports jax. They are forced, not defaulted: a cluster environment often
sets XLA_FLAGS or JAX_PLATFORMS, and the multi-device tests need exactly eight CPU devices. The
user's other XLA flags are kept. CPU collectives may wait long for the other simulated devices
(fungizsl.cpu_devices says why). The entry points the tests start keep glibc's malloc instead of
re-executing under tcmalloc (fungizsl/allocator.py): each re-exec repeats 2-4 s of imports, about a
minute over the suite's spawned runs, which CI's time limit cannot spare; tests/test_allocator.py
runs the re-exec itself.

Every compilation of the session, in pytest and in the processes it starts, goes through one
persistent JAX compilation cache in a fresh temporary folder (removed at exit): the suite compiles
the same tiny train steps in many spawned runs (a resumed run compiles exactly what the killed one
did), and the cache took tests/test_fungalzsl_train.py from 152 to 130 s. It starts empty, so
nothing from an earlier session or another checkout is ever reused.
"""

import atexit
import os
import shutil
import tempfile

from fungizsl.cpu_devices import with_host_device_count

os.environ["XLA_FLAGS"] = with_host_device_count(os.environ.get("XLA_FLAGS", ""), 8)
os.environ["JAX_PLATFORMS"] = "cpu"
os.environ["FUNGIZSL_ALLOCATOR"] = "system"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
_JIT_CACHE = tempfile.mkdtemp(prefix="fungizsl_tests_jit_cache_")
atexit.register(shutil.rmtree, _JIT_CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _JIT_CACHE
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pathlib

import pytest

SHARED_DATA = pathlib.Path(__file__).resolve().parents[2] / "shared" / "data"


def require_folder(folder: pathlib.Path, ci: bool) -> pathlib.Path:
    """`folder`, or a skip when it is absent; in CI (CI=true) an absent folder fails the test, so a
    moved data folder cannot turn its tests into silent skips."""
    if folder.is_dir():
        return folder
    message = f"real data folder {folder} is absent"
    if ci:
        pytest.fail(f"{message}, and CI=true: CI runs with ../shared beside the clone", pytrace=False)
    pytest.skip(f"{message} (only developer machines and CI have it)")


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    """The real data folder beside the project (../shared/data)."""
    return require_folder(SHARED_DATA, os.environ.get("CI", "").lower() == "true")
