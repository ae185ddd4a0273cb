"""A run's metric I/O: JSON summaries, TensorBoard scalars, console tables.

It sits below the evaluators and the trainers (it imports only :mod:`fungizsl.workdir`), so both
can write through it.

Metric dicts produced by the evaluators (FungalZSL zero-shot accuracy and Recall@K, Rani,
Arroyo, Durdevic 2025) may nest dicts and hold numpy or jax scalars and arrays.

* `write_json` converts them to plain JSON (numpy/jax -> Python, arrays -> lists, non-string
  keys -> strings, NaN/inf -> null, floats rounded to `digits` significant digits) and writes
  atomically.
* `write_scalars` flattens nested dicts into '/'-joined names and appends every scalar to a
  TensorBoard event file through tensorboardX (no TensorFlow needed); non-scalars are skipped.
  `read_scalars` reads event files back (a small TFRecord reader; tensorboard is not required).
* `TensorBoard` is the trainers' writer: process 0 only, and for a `gs://` logdir it writes
  locally and uploads at most every `upload_every` seconds (default 60) and at close.
* `format_table` / `print_table` render a flat, aligned two-column table for the console.
"""

import json
import math
import numbers
import os
import shutil
import struct
import tempfile
import time
from typing import Any, Iterable, Mapping

import numpy as np
from etils import epath
from tensorboardX import SummaryWriter
from tensorboardX.proto import event_pb2

from fungizsl import workdir


def _round(x: float, digits: int) -> float | None:
    if not math.isfinite(x):
        return None
    return float(f"{x:.{digits}g}") if digits else x


def to_jsonable(obj: Any, digits: int = 6) -> Any:
    """Recursively converts metrics to JSON-serialisable Python values."""
    if isinstance(obj, Mapping):
        return {str(k) if not isinstance(k, tuple) else "/".join(map(str, k)): to_jsonable(v, digits)
                for k, v in obj.items()}
    if isinstance(obj, (str, bool, type(None))):
        return obj
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, numbers.Integral):
        return int(obj)
    if isinstance(obj, numbers.Real):
        return _round(float(obj), digits)
    if isinstance(obj, (os.PathLike,)):
        return os.fspath(obj)
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v, digits) for v in obj]
    if hasattr(obj, "__array__"):  # numpy / jax arrays and scalars
        arr = _as_numeric_array(obj)
        if arr.dtype != object:
            return to_jsonable(arr.tolist(), digits)  # tolist: Python scalars, nested lists
    raise TypeError(f"cannot convert {type(obj).__name__} to JSON")


def write_json(path, metrics: Mapping[str, Any], digits: int = 6, indent: int = 2) -> str:
    """Writes `metrics` as JSON and returns the path. `path` may be local or a URI (`gs://...`);
    local files are written atomically (temp file + rename). `digits=0` keeps floats as they are."""
    text = json.dumps(to_jsonable(metrics, digits), indent=indent, sort_keys=False, allow_nan=False) + "\n"
    if not workdir.is_local(path):
        workdir.write_text(path, text)
        return os.fspath(path)
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".tmp_", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    workdir.WRITES.append(path)
    return path


def read_json(path) -> Any:
    with epath.Path(path).open() as f:
        return json.load(f)


def _as_numeric_array(value) -> np.ndarray:
    """np.asarray, with extension floats (ml_dtypes' bfloat16, kind 'V') widened to float32."""
    arr = np.asarray(value)
    if arr.dtype.kind == "V":
        try:
            arr = arr.astype(np.float32)
        except (TypeError, ValueError):
            pass
    return arr


def _scalar(value) -> float | None:
    """A finite-or-not Python float for a scalar (Python, numpy or jax 0-d/size-1), else None."""
    if isinstance(value, (str, bytes, Mapping)) or value is None:
        return None
    if isinstance(value, numbers.Real):
        return float(value)
    if hasattr(value, "__array__"):
        arr = _as_numeric_array(value)
        if arr.size == 1 and arr.dtype.kind in "biuf":
            return float(arr.reshape(()))
    return None


def flatten(metrics: Mapping[str, Any], prefix: str = "", sep: str = "/") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a/b": 1}; tuple keys are joined with `sep` too."""
    out = {}
    for key, value in metrics.items():
        key = sep.join(map(str, key)) if isinstance(key, tuple) else str(key)
        name = f"{prefix}{sep}{key}" if prefix else key
        if isinstance(value, Mapping):
            out.update(flatten(value, name, sep))
        else:
            out[name] = value
    return out


def scalars(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The flattened scalar entries of `metrics` as floats (arrays, strings, lists dropped)."""
    out = {}
    for name, value in flatten(metrics, prefix).items():
        number = _scalar(value)
        if number is not None:
            out[name] = number
    return out


def write_scalars(writer_or_logdir, metrics: Mapping[str, Any], step: int, prefix: str = "") -> int:
    """Appends the scalar entries of `metrics` at `step` to TensorBoard; returns how many.

    `writer_or_logdir` is a `tensorboardX.SummaryWriter` (left open, flushed) or a directory (a
    writer is opened, used and closed; each call adds an event file, which TensorBoard merges).
    """
    own = not hasattr(writer_or_logdir, "add_scalar")
    writer = SummaryWriter(os.fspath(writer_or_logdir)) if own else writer_or_logdir
    values = scalars(metrics, prefix)
    try:
        for name, value in values.items():
            writer.add_scalar(name, value, global_step=int(step))
        writer.flush()
    finally:
        if own:
            writer.close()
    return len(values)


def _records(path) -> Iterable[bytes]:
    """Payloads of a TFRecord file (length u64, crc u32, data, crc u32; CRCs not checked)."""
    with open(path, "rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                return
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            f.read(4)
            if len(data) < length:
                return
            yield data


def read_scalars(logdir) -> dict[str, list[tuple[int, float]]]:
    """Reads every `events.out.tfevents.*` file under `logdir`: {tag: [(step, value), ...]}."""
    out: dict[str, list[tuple[int, float]]] = {}
    for root, _, files in os.walk(os.fspath(logdir)):
        for name in sorted(files):
            if "tfevents" not in name:
                continue
            for record in _records(os.path.join(root, name)):
                event = event_pb2.Event.FromString(record)
                for value in event.summary.value:
                    if value.HasField("simple_value"):
                        out.setdefault(value.tag, []).append((int(event.step), float(value.simple_value)))
    return out


def format_table(metrics: Mapping[str, Any], title: str | None = None, digits: int = 4) -> str:
    """Aligned "name  value" lines for every flattened entry; arrays shown by shape."""
    rows = []
    for name, value in flatten(metrics).items():
        number = _scalar(value)
        if number is not None:
            is_int = isinstance(value, (numbers.Integral, np.integer)) and not isinstance(value, bool)
            text = str(int(number)) if is_int else f"{number:.{digits}f}"
        elif hasattr(value, "shape") and getattr(value, "ndim", 0) > 0:
            text = f"<array {tuple(value.shape)}>"
        elif isinstance(value, (list, tuple)):
            text = f"<{len(value)} items>"
        else:
            text = str(value)
        rows.append((name, text))
    width = max([len(n) for n, _ in rows] + [len("metric")])
    value_width = max([len(t) for _, t in rows] + [len("value")])
    rule = "-" * (width + value_width + 3)
    lines = ([title, rule] if title else []) + [f"{'metric':<{width}}   {'value':>{value_width}}", rule]
    lines += [f"{n:<{width}}   {t:>{value_width}}" for n, t in rows]
    return "\n".join(lines)


def print_table(metrics: Mapping[str, Any], title: str | None = None, digits: int = 4) -> None:
    print(format_table(metrics, title, digits), flush=True)


class TensorBoard:
    """A tensorboardX writer for ``logdir`` (process 0 only; ``None`` writer elsewhere).

    tensorboardX writes local files only: for a non-local ``logdir`` the events go to a local
    temporary folder, copied over by :meth:`flush`. Each copy re-uploads the whole events file, so
    :meth:`scalars` copies at most every ``upload_every`` seconds (``clock`` tells the time);
    :meth:`flush` and :meth:`close` always copy.
    """

    def __init__(self, logdir: epath.Path, upload_every: float = 60.0, clock=time.monotonic):
        self.logdir = epath.Path(logdir)
        self.local = os.fspath(self.logdir) if workdir.is_local(self.logdir) else tempfile.mkdtemp(prefix="fungizsl_tb_")
        self.writer = SummaryWriter(self.local)
        self.upload_every, self.clock = float(upload_every), clock
        self.last_upload = None
        if workdir.is_local(self.logdir):
            workdir.WRITES.append(str(self.logdir))

    def scalars(self, values: dict[str, float], step: int, prefix: str) -> None:
        write_scalars(self.writer, values, step, prefix=prefix)  # flushes the local events file
        if self.last_upload is None or self.clock() - self.last_upload >= self.upload_every:
            self._upload()

    def flush(self) -> None:
        self.writer.flush()
        self._upload()

    def _upload(self) -> None:
        if not workdir.is_local(self.logdir):
            workdir.upload_dir(self.local, self.logdir)
            self.last_upload = self.clock()

    def close(self) -> None:
        self.writer.close()
        if not workdir.is_local(self.logdir):
            workdir.upload_dir(self.local, self.logdir)
            shutil.rmtree(self.local, ignore_errors=True)
