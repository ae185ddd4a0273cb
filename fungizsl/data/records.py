"""Reading one record of a source, and the argument checks the input pipeline shares.

A record is a dict; its image sits under an image key (encoded PNG/JPEG bytes, a uint8 array or a
path) and its label under ``label`` (growth stages) or ``category_id`` (FungiCLEF). Errors name the
record, its file name when it has one, and the source.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from PIL import Image

from fungizsl.data import augment as aug

LABEL_KEYS = ("label", "category_id")


def describe_record(record: Mapping[str, Any], index: int, source_name: str) -> str:
    """"record 17 (filename 'x.jpg') of <source>", for error messages; checks the record is a dict."""
    where = f"record {index}"
    if not isinstance(record, Mapping):
        raise TypeError(f"{where} of {source_name} is a {type(record).__name__}; records must be dicts")
    filename = record.get("filename")
    if isinstance(filename, bytes):
        filename = filename.decode("utf-8", "replace")
    if filename:
        where += f" (filename {filename!r})"
    return f"{where} of {source_name}"


def record_label(record: Mapping[str, Any], label_key: str | None, where: str) -> int:
    keys = (label_key,) if label_key else LABEL_KEYS
    for key in keys:
        if key in record:
            return int(record[key])
    raise ValueError(f"{where} has no label field {' or '.join(map(repr, keys))}; its fields are "
                   f"{sorted(record)}")


def record_image(record: Mapping[str, Any], image_key: str, where: str, draft_size: int | None) -> Image.Image:
    if image_key not in record:
        raise ValueError(f"{where} has no image field {image_key!r}; its fields are {sorted(record)}")
    return aug.load_image(record[image_key], where=where, draft_size=draft_size)


def check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def op_seed(seed: int, operation: str) -> int:
    """A 32-bit seed for one random operation of the pipeline, stable across processes and runs."""
    return int(np.random.SeedSequence([seed, zlib.crc32(operation.encode())]).generate_state(1)[0])


def process_slot(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    process_count = check_int("process_count", process_count, minimum=1)
    process_index = check_int("process_index", process_index, minimum=0)
    if process_index >= process_count:
        raise ValueError(f"process_index={process_index} must be smaller than process_count={process_count}")
    return process_index, process_count


def local_batch_size(global_batch_size, process_count: int) -> int:
    global_batch_size = check_int("global_batch_size", global_batch_size, minimum=1)
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                         f"process_count={process_count}")
    return global_batch_size // process_count


def check_source(source) -> int:
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ValueError(f"source must support len() and [index], got {type(source).__name__}")
    if len(source) == 0:
        raise ValueError(f"source {source!r} is empty")
    return len(source)


def check_common(image_size, crop_fraction=1.0) -> None:
    check_int("image_size", image_size, minimum=1)
    if not isinstance(crop_fraction, (int, float)) or not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction!r}")
