"""Reading and writing a run's workdir, local or in the cloud, from one or many hosts.

A workdir may be a local folder or a URI such as ``gs://bucket/run``; every path here is an
``etils.epath.Path`` (``os.path``/``open``/``os.makedirs`` do not understand ``gs://``). Libraries
that can only write local files (the ``tokenizers`` trainer, tensorboardX) write into a local
temporary folder which is then copied over with :func:`upload_dir` (the TensorBoard writer of
:mod:`fungizsl.metrics_io` does this); readers that need local files
get a local copy with :func:`local_dir`.

Several hosts, one writer: shared files (tokenizer, JSON, plots, TensorBoard, exports) are written
by process 0 (:func:`is_main`), and :func:`barrier` makes the others wait before they read them.
Every write through this module is recorded in :data:`WRITES`; :func:`write_audit` saves that
record per process (``audit/writes_process_<i>.json``) so a test can show that each file was
written once, by the process that should write it.

:func:`check_writable` runs before a run does any work (``fungizsl.main`` calls it): every
process creates the workdir and writes, reads back and removes a probe file of its own, because
every process writes there (Orbax saves each process's shards of the state) and reads there (a
resume); a folder that cannot be created or written stops the run with a one-line
:class:`~fungizsl.errors.ConfigError`.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

import jax
from etils import epath
from jax.experimental import multihost_utils

from fungizsl.errors import ConfigError

#: Workdir paths this process wrote, in order (see :func:`write_audit`).
WRITES: list[str] = []


def as_path(path: str | os.PathLike) -> epath.Path:
    """An ``epath.Path``; a relative local path is made absolute (Orbax needs absolute paths)."""
    path = epath.Path(path)
    return path if path.is_absolute() else path.resolve()


def is_local(path: epath.Path) -> bool:
    return "://" not in str(path)


def is_main() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (no-op with one process)."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def check_writable(workdir: str | os.PathLike, what: str = "--workdir") -> epath.Path:
    """Creates ``workdir`` (if needed) and writes, reads back and removes a probe file there, on
    this process; any failure (read-only, a file in the way, an unreachable bucket) is a
    :class:`ConfigError` naming the folder. The probe is not recorded in :data:`WRITES`."""
    text = os.fspath(workdir)
    try:
        path = as_path(workdir)
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".fungizsl_write_probe_{jax.process_index()}_{os.getpid()}"
        probe.write_bytes(b"probe")
        readable = probe.read_bytes() == b"probe"
        probe.unlink()
    except Exception as error:  # noqa: BLE001 - OSError locally, the filesystem's own errors on gs://
        reason = " ".join(f"{type(error).__name__}: {error}".split())
        raise ConfigError(f"{what}={text} cannot be created or written ({reason}); choose a folder "
                          f"every process can create and write") from None
    if not readable:
        raise ConfigError(f"{what}={text} does not read back what was written; choose another folder")
    return path


def write_bytes(path: str | os.PathLike, data: bytes) -> epath.Path:
    path = epath.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    WRITES.append(str(path))
    return path


def write_text(path: str | os.PathLike, text: str) -> epath.Path:
    return write_bytes(path, text.encode("utf-8"))


def upload_dir(local: str | os.PathLike, dest: str | os.PathLike) -> epath.Path:
    """Copies the files of local folder ``local`` (recursively) to ``dest``."""
    local, dest = os.fspath(local), epath.Path(dest)
    for root, _, files in os.walk(local):
        for name in files:
            relative = os.path.relpath(os.path.join(root, name), local)
            with open(os.path.join(root, name), "rb") as f:
                write_bytes(dest / relative, f.read())
    return dest


def local_dir(path: str | os.PathLike, exclude: tuple[str, ...] = ()) -> str:
    """A local folder holding the files of ``path``: the folder itself when it is local, else a
    fresh temporary copy (its top-level files, less those whose names end with one of
    ``exclude``; enough for tokenizers and exported weights). Files are streamed, not read whole,
    and the copy is removed when the process exits."""
    path = epath.Path(path)
    if is_local(path):
        return os.fspath(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{path} is not a folder")
    local = tempfile.mkdtemp(prefix="fungizsl_")
    atexit.register(shutil.rmtree, local, ignore_errors=True)
    for item in path.iterdir():
        if item.is_file() and not item.name.endswith(exclude):
            with item.open("rb") as src, open(os.path.join(local, item.name), "wb") as dst:
                shutil.copyfileobj(src, dst, length=16 << 20)
    return local


def write_audit(workdir: epath.Path) -> None:
    """Saves this process's :data:`WRITES` as ``audit/writes_process_<i>.json`` (each process its own)."""
    path = epath.Path(workdir) / "audit" / f"writes_process_{jax.process_index()}.json"
    writes = list(WRITES)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(writes, indent=1) + "\n")
