"""The Grain input pipeline: records -> shuffled, sharded, augmented, captioned numpy batches.

It feeds both systems of this package:

* FungalZSL training (CLIP fine-tuned on synthetic growth-stage images paired with captions):
  :func:`make_train_iterator` yields ``{"image", "label", "index", "input_ids", "caption_id"}``,
  the text being a caption of the example's class drawn afresh for every example;
* evaluation (:func:`make_eval_iterator`): one deterministic pass, the last batch padded and a
  ``valid`` mask marking the real examples;
* FungiCLEF 2025 few-shot evaluation (:func:`make_observation_iterator`): all images of one
  observation (1 to 30 photos) travel together, padded to ``max_images`` with an ``image_mask``, so
  Top-K can be computed per observation.

Any random-access source works (``__len__`` and ``__getitem__`` returning a dict record): the TFDS
array_record sources of :mod:`fungizsl.data.builders`, :class:`InMemorySource`, or
:class:`RenderedSource`, which renders synthetic images on access. A record holds its image under
``image_key`` (encoded PNG/JPEG bytes or a uint8 array) and its label under ``label_key``
("label" for growth stages, "category_id" for FungiCLEF; found automatically by default).

Training pipeline, all ``grain.MapDataset`` (lazy, random access) until the batch::

    source -> seed -> shuffle -> repeat -> decode -> augment -> caption -> shard per process -> batch
           -> to_iter_dataset -> mp_prefetch(worker_count)

Shuffle, augmentation and caption draws are keyed by the *global* stream position (Grain's
``random_map`` seeds each element's generator from the operation's seed, derived from ``seed``, and
the element's index), and the per-process shard is a strided slice
``[process_index::process_count]`` of that stream taken after those maps. Being lazy, the slice
still only decodes its own records, but an example looks the same whichever process reads it, and
the union of the processes' batch ``s`` is global batch ``s`` of a single-process run.

Batching happens on the ``MapDataset``, before ``to_iter_dataset``. Grain's ``mp_prefetch`` slices
the ``MapDataset`` under ``to_iter_dataset`` (here: the batches) so that worker ``w`` of ``W``
computes batches ``w, w + W, ...``, and interleaves the workers round robin; since no transform here
drops elements, the stream of batches is identical, order included, for every ``worker_count``.
Batches from workers arrive as numpy arrays in shared memory; ``close()`` the iterator when done.

Iterator state: ``iterator.get_state()`` / ``set_state()`` resume at exactly the next batch; with
Orbax, save ``ocp.args.Composite(data=grain.checkpoint.CheckpointSave(iterator), ...)`` and restore
with ``grain.checkpoint.CheckpointRestore`` (see :func:`checkpoint_save_args`). A saved state
restores into an iterator built with the same arguments, ``worker_count`` included.

Workers are spawned processes that re-import this module: every transform here is a picklable
top-level class, and scripts must keep their work under ``if __name__ == "__main__":``. Grain reads
absl flags when it starts workers; outside an absl app, :func:`iterate` marks the flags as parsed
(with their defaults) first.

Example::

    source = RenderedSource(n_per_stage=1000, render_config=RenderConfig(image_size=256))
    it = make_train_iterator(source, global_batch_size=256, seed=0, image_size=224,
                             augment="microscopy", captions_by_class=get_caption_source("templates"),
                             tokenizer=tokenizer_folder, worker_count=8)
    batch = to_global_batch(next(it), mesh)
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import zlib
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from fungizsl.data import augment as aug

__all__ = [
    "InMemorySource",
    "RenderedSource",
    "encode_image",
    "CaptionTable",
    "build_caption_table",
    "ObservationIndex",
    "build_observation_index",
    "make_train_dataset",
    "make_train_iterator",
    "make_eval_dataset",
    "make_eval_iterator",
    "make_observation_dataset",
    "make_observation_iterator",
    "iterate",
    "to_global_batch",
    "checkpoint_save_args",
    "checkpoint_restore_args",
    "ITERATOR_ITEM",
]

#: Name of the data-iterator item in an Orbax Composite checkpoint.
ITERATOR_ITEM = "data"
_LABEL_KEYS = ("label", "category_id")


# ----------------------------------------------------------------------------------------------
# Sources
# ----------------------------------------------------------------------------------------------


class InMemorySource:
    """Records already in memory (a list of dicts): tests, small data sets, pre-encoded benchmarks."""

    def __init__(self, records: Sequence[Mapping[str, Any]], class_names: Sequence[str] | None = None):
        self._records = list(records)
        self.class_names = None if class_names is None else tuple(class_names)

    def __len__(self) -> int:
        return len(self._records)

    def __getitem__(self, index: int) -> Mapping[str, Any]:
        return self._records[index]

    def __repr__(self) -> str:
        return f"InMemorySource({len(self)} records)"


class RenderedSource:
    """Synthetic growth-stage images rendered on access (:mod:`fungizsl.data.synthetic`).

    Record ``i`` is image ``i // C`` of stage ``stages[i % C]`` (C stages, ``n_per_stage`` each), so
    every prefix of the source is balanced. Records are ``{"image", "label", "stage",
    "render_index"}``; ``image`` is a uint8 [H, W, 3] array, or PNG/JPEG bytes with ``encoding``. A
    record is a pure function of (stages, index, seed, render_config), in any process.
    """

    def __init__(self, stages: Sequence[str] | None = None, n_per_stage: int = 100, seed: int = 0,
                 render_config=None, *, encoding: str | None = None):
        from fungizsl.data import synthetic

        config = render_config or synthetic.RenderConfig()
        stages = tuple(config.stages if stages is None else stages)
        if not stages:
            raise ValueError("RenderedSource: stages must not be empty")
        for stage in stages:
            synthetic.check_stage(stage)
        _check_int("n_per_stage", n_per_stage, minimum=1)
        _check_int("seed", seed, minimum=0)
        if encoding not in (None, "png", "jpeg"):
            raise ValueError(f"RenderedSource: encoding must be None, 'png' or 'jpeg', got {encoding!r}")
        self.stages = stages
        self.n_per_stage = n_per_stage
        self.seed = seed
        self.render_config = config
        self.encoding = encoding

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.stages

    def __len__(self) -> int:
        return len(self.stages) * self.n_per_stage

    def __getitem__(self, index: int) -> dict[str, Any]:
        from fungizsl.data.synthetic import render_image

        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"RenderedSource index {index} out of range [0, {len(self)})")
        label, render_index = index % len(self.stages), index // len(self.stages)
        stage = self.stages[label]
        image = render_image(stage, render_index, self.seed, self.render_config)
        if self.encoding is not None:
            image = encode_image(image, self.encoding)
        return {"image": image, "label": label, "stage": stage, "render_index": render_index}

    def __repr__(self) -> str:
        return (f"RenderedSource(stages={self.stages}, n_per_stage={self.n_per_stage}, seed={self.seed}, "
                f"preset={self.render_config.preset!r}, size={self.render_config.image_size})")


def encode_image(image: np.ndarray, fmt: str = "png", quality: int = 90) -> bytes:
    """uint8 [H, W, 3] -> PNG or JPEG bytes."""
    buffer = io.BytesIO()
    if fmt == "png":
        Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    elif fmt == "jpeg":
        Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    else:
        raise ValueError(f"image format must be 'png' or 'jpeg', got {fmt!r}")
    return buffer.getvalue()


class _IndexedRecords:
    """Grain source over ``source`` whose elements carry their record index.

    With ``length`` larger than the source, indices past its end are padding elements (``record``
    None, ``valid`` False): evaluation uses them to fill its last batch.
    """

    def __init__(self, source, length: int | None = None, with_valid: bool = False):
        self.source = source
        self.size = len(source)
        self.length = self.size if length is None else length
        self.with_valid = with_valid

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if index < self.size:
            element = {"record": self.source[index], "index": index}
        else:
            element = {"record": None, "index": -1}
        if self.with_valid:
            element["valid"] = index < self.size
        return element

    def __repr__(self) -> str:
        return f"_IndexedRecords({self.source!r})"


# ----------------------------------------------------------------------------------------------
# Transforms (top-level classes: worker processes unpickle them)
# ----------------------------------------------------------------------------------------------


def _describe_record(record: Mapping[str, Any], index: int, source_name: str) -> str:
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


def _record_label(record: Mapping[str, Any], label_key: str | None, where: str) -> int:
    keys = (label_key,) if label_key else _LABEL_KEYS
    for key in keys:
        if key in record:
            return int(record[key])
    raise ValueError(f"{where} has no label field {' or '.join(map(repr, keys))}; its fields are "
                   f"{sorted(record)}")


def _record_image(record: Mapping[str, Any], image_key: str, where: str, draft_size: int | None) -> Image.Image:
    if image_key not in record:
        raise ValueError(f"{where} has no image field {image_key!r}; its fields are {sorted(record)}")
    return aug.load_image(record[image_key], where=where, draft_size=draft_size)


class DecodeImage(grain.transforms.Map):
    """``{"record", "index"[, "valid"]}`` -> ``{"image": RGB PIL image or None, "label", "index"[, "valid"]}``."""

    def __init__(self, image_key: str = "image", label_key: str | None = None, source_name: str = "source",
                 draft_size: int | None = None):
        self.image_key = image_key
        self.label_key = label_key
        self.source_name = source_name
        self.draft_size = draft_size

    def map(self, element):
        record, index = element["record"], element["index"]
        out = {k: v for k, v in element.items() if k != "record"}
        if record is None:  # padding
            out.update(image=None, label=np.int32(-1), index=np.int32(-1))
            return out
        where = _describe_record(record, index, self.source_name)
        out["image"] = _record_image(record, self.image_key, where, self.draft_size)
        out["label"] = np.int32(_record_label(record, self.label_key, where))
        out["index"] = np.int32(index)
        return out


class RandomAugment(grain.transforms.RandomMap):
    """Training transform (:func:`fungizsl.data.augment.augment_image`) with the element's generator."""

    def __init__(self, config: aug.AugmentConfig, image_size: int, normalization: aug.Normalization):
        self.config = config
        self.image_size = image_size
        self.normalization = normalization

    def random_map(self, element, rng: np.random.Generator):
        element = dict(element)
        element["image"] = aug.augment_image(element["image"], rng, self.config, self.image_size,
                                             self.normalization)
        return element


class EvalResize(grain.transforms.Map):
    """Deterministic resize + center crop + normalisation; padding elements become zeros."""

    def __init__(self, image_size: int, normalization: aug.Normalization, crop_fraction: float = 1.0,
                 interpolation: str = "bicubic"):
        self.image_size = image_size
        self.normalization = normalization
        self.crop_fraction = crop_fraction
        self.interpolation = interpolation

    def map(self, element):
        element = dict(element)
        if element["image"] is None:
            element["image"] = np.zeros((self.image_size, self.image_size, 3), np.float32)
        else:
            element["image"] = aug.eval_image(element["image"], self.image_size, self.normalization,
                                              self.crop_fraction, self.interpolation)
        return element


# ----------------------------------------------------------------------------------------------
# Captions
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class CaptionTable:
    """Every caption of every class, tokenised once (in the parent process).

    ``tokens[name]`` is int32 [n_captions, length] for each tokenizer output (``input_ids``, and
    ``attention_mask``/``token_type_ids`` for BERT); class ``c`` owns rows ``offsets[c]`` to
    ``offsets[c] + counts[c] - 1``, and ``texts[row]`` is the caption of a row. ``pad_tokens`` is the
    tokenised empty text, used for padding elements.
    """

    class_names: tuple[str, ...]
    texts: tuple[str, ...]
    offsets: np.ndarray
    counts: np.ndarray
    tokens: dict[str, np.ndarray]
    pad_tokens: dict[str, np.ndarray]

    def rows_of(self, label: int) -> range:
        return range(int(self.offsets[label]), int(self.offsets[label] + self.counts[label]))


def build_caption_table(captions_by_class, class_names: Sequence[str], tokenizer,
                        context_length: int | None = None) -> CaptionTable:
    """Tokenise ``captions_by_class`` (dict class -> texts, or a caption source with ``by_class()``)
    for the classes ``class_names`` (label i = class_names[i]) with ``tokenizer``: a tokenizer object
    from :mod:`fungizsl.tokenizers` (any callable texts -> dict of int arrays) or a folder for
    :func:`fungizsl.tokenizers.load_tokenizer`."""
    if hasattr(captions_by_class, "by_class"):
        captions_by_class = captions_by_class.by_class()
    if not isinstance(captions_by_class, Mapping):
        raise ValueError(f"captions_by_class must map class names to lists of texts, got "
                         f"{type(captions_by_class).__name__}")
    class_names = tuple(class_names)
    if not class_names:
        raise ValueError("class_names must not be empty")
    missing = [c for c in class_names if not captions_by_class.get(c)]
    if missing:
        raise ValueError(f"captions_by_class has no captions for class(es) {', '.join(missing)} of class_names; "
                         f"it has {', '.join(sorted(captions_by_class)) or 'none'}")
    if isinstance(tokenizer, (str, os.PathLike)):
        from fungizsl.tokenizers import load_tokenizer

        tokenizer = load_tokenizer(tokenizer, length=context_length)
    elif context_length is not None:
        raise ValueError("context_length applies when tokenizer is a folder; a tokenizer object has its own")
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be a tokenizer object or a folder, got {type(tokenizer).__name__}")
    texts, counts = [], []
    for name in class_names:
        class_texts = list(captions_by_class[name])
        for i, text in enumerate(class_texts):
            if not isinstance(text, str):
                raise ValueError(f"caption {i} of class {name!r} is a {type(text).__name__}, not a string")
        texts.extend(class_texts)
        counts.append(len(class_texts))
    chunks = [tokenizer(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    tokens = {k: np.concatenate([np.asarray(c[k], np.int32) for c in chunks]) for k in chunks[0]}
    pad_tokens = {k: np.asarray(v[0], np.int32) for k, v in tokenizer([""]).items()}
    counts = np.asarray(counts, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return CaptionTable(class_names, tuple(texts), offsets, counts, tokens, pad_tokens)


class SampleCaption(grain.transforms.RandomMap):
    """Adds a caption of the element's class: its token arrays and ``caption_id`` (row of the table)."""

    def __init__(self, table: CaptionTable):
        self.table = table

    def random_map(self, element, rng: np.random.Generator):
        element = dict(element)
        label = int(element["label"])
        table = self.table
        if element["index"] < 0:  # padding element of an evaluation pass
            element.update(table.pad_tokens)
            element["caption_id"] = np.int32(-1)
            return element
        if not 0 <= label < len(table.class_names):
            raise ValueError(f"record {int(element['index'])} has label {label}, outside the "
                             f"{len(table.class_names)} classes of class_names {list(table.class_names)}")
        row = int(table.offsets[label] + rng.integers(table.counts[label]))
        for key, values in table.tokens.items():
            element[key] = values[row]
        element["caption_id"] = np.int32(row)
        return element


# ----------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be at least {minimum}, got {value}")
    return int(value)


def _op_seed(seed: int, operation: str) -> int:
    """A 32-bit seed for one random operation of the pipeline, stable across processes and runs."""
    return int(np.random.SeedSequence([seed, zlib.crc32(operation.encode())]).generate_state(1)[0])


def _process_slot(process_index, process_count) -> tuple[int, int]:
    if process_index is None or process_count is None:
        import jax

        process_index = jax.process_index() if process_index is None else process_index
        process_count = jax.process_count() if process_count is None else process_count
    process_count = _check_int("process_count", process_count, minimum=1)
    process_index = _check_int("process_index", process_index, minimum=0)
    if process_index >= process_count:
        raise ValueError(f"process_index={process_index} must be smaller than process_count={process_count}")
    return process_index, process_count


def _local_batch_size(global_batch_size, process_count: int) -> int:
    global_batch_size = _check_int("global_batch_size", global_batch_size, minimum=1)
    if global_batch_size % process_count:
        raise ValueError(f"global_batch_size={global_batch_size} is not divisible by "
                         f"process_count={process_count}")
    return global_batch_size // process_count


def _check_source(source) -> int:
    if not (hasattr(source, "__len__") and hasattr(source, "__getitem__")):
        raise ValueError(f"source must support len() and [index], got {type(source).__name__}")
    if len(source) == 0:
        raise ValueError(f"source {source!r} is empty")
    return len(source)


def _check_common(image_size, crop_fraction=1.0) -> None:
    _check_int("image_size", image_size, minimum=1)
    if not isinstance(crop_fraction, (int, float)) or not 0.0 < crop_fraction <= 1.0:
        raise ValueError(f"crop_fraction must lie in (0, 1], got {crop_fraction!r}")


def _caption_table(source, captions_by_class, class_names, tokenizer, context_length):
    if captions_by_class is None:
        if tokenizer is not None:
            raise ValueError("tokenizer was given without captions_by_class; give both or neither")
        return None
    if tokenizer is None:
        raise ValueError("captions_by_class needs a tokenizer (a tokenizer object or a tokenizer folder)")
    class_names = class_names if class_names is not None else getattr(source, "class_names", None)
    if class_names is None:
        raise ValueError("class_names (label i -> class name) is required with captions_by_class when the "
                         "source does not define class_names")
    return build_caption_table(captions_by_class, class_names, tokenizer, context_length)


# ----------------------------------------------------------------------------------------------
# Training and evaluation datasets
# ----------------------------------------------------------------------------------------------


def make_train_dataset(source, *, global_batch_size: int, seed: int, image_size: int = 224,
                       augment="natural", normalization="clip", captions_by_class=None,
                       class_names: Sequence[str] | None = None, tokenizer=None,
                       context_length: int | None = None, num_epochs: int | None = None,
                       shuffle: bool = True, image_key: str = "image", label_key: str | None = None,
                       process_index: int | None = None, process_count: int | None = None) -> grain.MapDataset:
    """The batched training ``grain.MapDataset`` of one process (``ds[step]`` is batch ``step``).

    Batches are ``{"image": float32 [b, S, S, 3], "label": int32 [b], "index": int32 [b]}`` plus,
    with captions, the tokenizer's arrays (``"input_ids"`` int32 [b, L], ...) and ``"caption_id"``
    (int32 [b], row of the caption table), where ``b = global_batch_size / process_count``.

    ``augment``: preset name (``"natural"``, ``"microscopy"``, ``"none"``), an
    :class:`~fungizsl.data.augment.AugmentConfig` or a mapping of its fields. ``normalization``:
    ``"clip"``, ``"imagenet"``, ``"unit"`` or ``(mean, std)``. ``captions_by_class``: dict class ->
    texts (or a caption source); needs ``tokenizer`` (object or folder) and ``class_names`` (unless
    the source has them). ``num_epochs=None`` repeats forever; a finite count keeps only whole
    global batches. ``process_index``/``process_count`` default to JAX's.
    """
    num_records = _check_source(source)
    process_index, process_count = _process_slot(process_index, process_count)
    local_batch = _local_batch_size(global_batch_size, process_count)
    seed = _check_int("seed", seed, minimum=0)
    _check_common(image_size)
    if num_epochs is not None:
        num_epochs = _check_int("num_epochs", num_epochs, minimum=1)
    config = aug.get_augment(augment)
    norm = aug.get_normalization(normalization)
    table = _caption_table(source, captions_by_class, class_names, tokenizer, context_length)

    # Our random operations get explicit seeds derived from (seed, operation name), so they do not
    # move when the pipeline gains or loses a node (e.g. the whole-batch cut of finite epochs);
    # .seed() still seeds anything a caller adds downstream.
    ds = grain.MapDataset.source(_IndexedRecords(source)).seed(seed)
    if shuffle:
        ds = ds.shuffle(seed=_op_seed(seed, "shuffle"))
    ds = ds.repeat(num_epochs)
    if num_epochs is not None:
        whole = len(ds) // global_batch_size * global_batch_size
        if whole == 0:
            raise ValueError(f"num_epochs={num_epochs} over {num_records} records gives no complete global "
                             f"batch of global_batch_size={global_batch_size}")
        ds = ds[:whole]
    ds = ds.map(DecodeImage(image_key, label_key, repr(source)))
    if config is None:
        ds = ds.map(EvalResize(image_size, norm))
    else:
        ds = ds.random_map(RandomAugment(config, image_size, norm), seed=_op_seed(seed, "augment"))
    if table is not None:
        ds = ds.random_map(SampleCaption(table), seed=_op_seed(seed, "caption"))
    ds = ds[process_index::process_count]
    return ds.batch(local_batch, drop_remainder=True)


def make_eval_dataset(source, *, global_batch_size: int, image_size: int = 224, normalization="clip",
                      crop_fraction: float = 1.0, captions_by_class=None,
                      class_names: Sequence[str] | None = None, tokenizer=None,
                      context_length: int | None = None, seed: int = 0, image_key: str = "image",
                      label_key: str | None = None, process_index: int | None = None,
                      process_count: int | None = None) -> grain.MapDataset:
    """One deterministic pass over ``source`` in record order, batched for one process.

    Every process gets ``ceil(len(source) / global_batch_size)`` batches of ``b`` examples; the tail
    is padded with zero images (label and index -1) and ``"valid"`` (bool [b]) marks real examples.
    With captions, each example gets a caption of its class drawn from ``seed`` and its index.
    """
    num_records = _check_source(source)
    process_index, process_count = _process_slot(process_index, process_count)
    local_batch = _local_batch_size(global_batch_size, process_count)
    seed = _check_int("seed", seed, minimum=0)
    _check_common(image_size, crop_fraction)
    norm = aug.get_normalization(normalization)
    table = _caption_table(source, captions_by_class, class_names, tokenizer, context_length)

    padded = math.ceil(num_records / global_batch_size) * global_batch_size
    ds = grain.MapDataset.source(_IndexedRecords(source, length=padded, with_valid=True)).seed(seed)
    draft = math.ceil(image_size / crop_fraction)
    ds = ds.map(DecodeImage(image_key, label_key, repr(source), draft_size=draft))
    ds = ds.map(EvalResize(image_size, norm, crop_fraction))
    if table is not None:
        ds = ds.random_map(SampleCaption(table), seed=_op_seed(seed, "caption"))
    ds = ds[process_index::process_count]
    return ds.batch(local_batch, drop_remainder=True)


# ----------------------------------------------------------------------------------------------
# FungiCLEF observations
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ObservationIndex:
    """Observation -> record indices, in order of first appearance in the source."""

    observation_ids: np.ndarray  # int64 [n_observations]
    labels: np.ndarray  # int32 [n_observations]; -1 when unlabelled (the FungiCLEF test split)
    record_indices: tuple[np.ndarray, ...]  # int64 arrays, one per observation

    def __len__(self) -> int:
        return len(self.observation_ids)

    @property
    def max_images(self) -> int:
        return max(len(r) for r in self.record_indices)


def build_observation_index(source, *, observation_key: str = "observation_id", label_key: str | None = None,
                            observation_ids: Sequence[int] | None = None,
                            labels: Sequence[int] | None = None) -> ObservationIndex:
    """Group the records of ``source`` by ``observation_key``, reading every record once.

    Pass ``observation_ids`` (and ``labels``), aligned with the source, to skip that scan. All images
    of an observation must share one label.
    """
    num_records = _check_source(source)
    if observation_ids is None:
        records = (source[i] for i in range(num_records))
        observation_ids, scanned = [], []
        for i, record in enumerate(records):
            where = _describe_record(record, i, repr(source))
            if observation_key not in record:
                raise ValueError(f"{where} has no observation field {observation_key!r}; its fields are "
                               f"{sorted(record)}")
            observation_ids.append(int(record[observation_key]))
            scanned.append(_record_label(record, label_key, where))
        labels = scanned if labels is None else labels
    if len(observation_ids) != num_records:
        raise ValueError(f"observation_ids has {len(observation_ids)} entries for {num_records} records")
    if labels is None:
        labels = [-1] * num_records
    if len(labels) != num_records:
        raise ValueError(f"labels has {len(labels)} entries for {num_records} records")
    groups: dict[int, list[int]] = {}
    for i, obs in enumerate(observation_ids):
        groups.setdefault(int(obs), []).append(i)
    obs_labels = []
    for obs, members in groups.items():
        found = {int(labels[i]) for i in members}
        if len(found) > 1:
            raise ValueError(f"observation {obs} mixes labels {sorted(found)} over records {members}")
        obs_labels.append(found.pop())
    return ObservationIndex(np.asarray(list(groups), np.int64), np.asarray(obs_labels, np.int32),
                            tuple(np.asarray(m, np.int64) for m in groups.values()))


class LoadObservation(grain.transforms.Map):
    """Observation position -> its images (eval transform), stacked and padded to ``max_images``."""

    def __init__(self, source, index: ObservationIndex, max_images: int, image_size: int,
                 normalization: aug.Normalization, crop_fraction: float, image_key: str):
        self.source = source
        self.index = index
        self.max_images = max_images
        self.image_size = image_size
        self.normalization = normalization
        self.crop_fraction = crop_fraction
        self.image_key = image_key
        self.source_name = repr(source)

    def map(self, position):
        position = int(position)
        size, m = self.image_size, self.max_images
        images = np.zeros((m, size, size, 3), np.float32)
        mask = np.zeros((m,), bool)
        indices = np.full((m,), -1, np.int32)
        if position >= len(self.index):  # padding observation
            return {"image": images, "image_mask": mask, "index": indices, "label": np.int32(-1),
                    "observation_id": np.int64(-1), "valid": np.bool_(False)}
        members = self.index.record_indices[position]
        draft = math.ceil(size / self.crop_fraction)
        for slot, record_index in enumerate(members):
            record = self.source[int(record_index)]
            where = _describe_record(record, int(record_index), self.source_name)
            image = _record_image(record, self.image_key, where, draft)
            images[slot] = aug.eval_image(image, size, self.normalization, self.crop_fraction)
        mask[: len(members)] = True
        indices[: len(members)] = members
        return {"image": images, "image_mask": mask, "index": indices,
                "label": np.int32(self.index.labels[position]),
                "observation_id": np.int64(self.index.observation_ids[position]), "valid": np.bool_(True)}


def make_observation_dataset(source, *, global_batch_size: int | None = None, image_size: int = 224,
                             max_images: int | None = None, normalization="clip", crop_fraction: float = 1.0,
                             observation_index: ObservationIndex | None = None,
                             observation_key: str = "observation_id", label_key: str | None = None,
                             image_key: str = "image", process_index: int | None = None,
                             process_count: int | None = None) -> grain.MapDataset:
    """Batches of whole observations for one process, one deterministic pass.

    ``{"image": float32 [n, M, S, S, 3], "image_mask": bool [n, M], "index": int32 [n, M] (record
    indices, -1 for padding), "label": int32 [n], "observation_id": int64 [n], "valid": bool [n]}``
    with ``n = global_batch_size / process_count`` observations (default: one per process) and
    ``M = max_images`` (default: the largest observation). Every process gets the same number of
    batches; padding observations have ``valid`` False.
    """
    _check_source(source)
    process_index, process_count = _process_slot(process_index, process_count)
    global_batch_size = process_count if global_batch_size is None else global_batch_size
    local_batch = _local_batch_size(global_batch_size, process_count)
    _check_common(image_size, crop_fraction)
    norm = aug.get_normalization(normalization)
    index = observation_index or build_observation_index(source, observation_key=observation_key,
                                                         label_key=label_key)
    if max_images is None:
        max_images = index.max_images
    max_images = _check_int("max_images", max_images, minimum=1)
    if index.max_images > max_images:
        biggest = int(np.argmax([len(r) for r in index.record_indices]))
        raise ValueError(f"observation {int(index.observation_ids[biggest])} has "
                         f"{len(index.record_indices[biggest])} images, more than max_images={max_images}")
    padded = math.ceil(len(index) / global_batch_size) * global_batch_size
    ds = grain.MapDataset.range(padded)
    ds = ds.map(LoadObservation(source, index, max_images, image_size, norm, crop_fraction, image_key))
    ds = ds[process_index::process_count]
    return ds.batch(local_batch, drop_remainder=True)


# ----------------------------------------------------------------------------------------------
# Iterators
# ----------------------------------------------------------------------------------------------


def iterate(dataset: grain.MapDataset, *, worker_count: int = 0, worker_buffer_size: int = 1,
            read_threads: int = 2, prefetch_batches: int = 2) -> grain.DatasetIterator:
    """A checkpointable iterator over a batched ``MapDataset``.

    ``read_threads`` threads per process (each worker has its own) compute up to ``prefetch_batches``
    batches ahead; ``worker_count > 0`` spreads the batches over that many spawned processes (Grain
    ``mp_prefetch``), each buffering ``worker_buffer_size`` finished batches.
    """
    worker_count = _check_int("worker_count", worker_count, minimum=0)
    worker_buffer_size = _check_int("worker_buffer_size", worker_buffer_size, minimum=1)
    read_threads = _check_int("read_threads", read_threads, minimum=0)
    prefetch_batches = _check_int("prefetch_batches", prefetch_batches, minimum=0)
    ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))
    if worker_count:
        _ensure_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                         per_worker_buffer_size=worker_buffer_size))
    return iter(ds)


def _ensure_flags_parsed() -> None:
    """Grain's worker start reads absl flags. An absl app has parsed them by now; a plain script or a
    test has not, and would fail with UnparsedFlagAccessError, so fall back to the flag defaults."""
    from absl import flags

    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()


_ITER_ARGS = ("worker_count", "worker_buffer_size", "read_threads", "prefetch_batches")


def _split_iter_args(kwargs: dict) -> dict:
    return {k: kwargs.pop(k) for k in _ITER_ARGS if k in kwargs}


def make_train_iterator(source, **kwargs) -> grain.DatasetIterator:
    """Iterator over :func:`make_train_dataset` (same arguments) plus the :func:`iterate` options
    ``worker_count``, ``worker_buffer_size``, ``read_threads`` and ``prefetch_batches``."""
    iter_args = _split_iter_args(kwargs)
    return iterate(make_train_dataset(source, **kwargs), **iter_args)


def make_eval_iterator(source, **kwargs) -> grain.DatasetIterator:
    """Iterator over :func:`make_eval_dataset` (same arguments) plus the :func:`iterate` options."""
    iter_args = _split_iter_args(kwargs)
    return iterate(make_eval_dataset(source, **kwargs), **iter_args)


def make_observation_iterator(source, **kwargs) -> grain.DatasetIterator:
    """Iterator over :func:`make_observation_dataset` (same arguments) plus the :func:`iterate` options."""
    iter_args = _split_iter_args(kwargs)
    return iterate(make_observation_dataset(source, **kwargs), **iter_args)


# ----------------------------------------------------------------------------------------------
# Devices and checkpoints
# ----------------------------------------------------------------------------------------------


def to_global_batch(batch: Mapping[str, np.ndarray], mesh):
    """Place this process's batch on ``mesh`` as global arrays split over the batch axes
    (:func:`fungizsl.train.sharding.shard_batch`); every leaf must share the leading dimension."""
    from fungizsl.train.sharding import shard_batch

    sizes = {key: np.shape(value)[0] if np.ndim(value) else None for key, value in batch.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"every batch field needs the same leading (batch) dimension, got {sizes}")
    return shard_batch(dict(batch), mesh)


def checkpoint_save_args(iterator: grain.DatasetIterator, **items):
    """``ocp.args.Composite`` saving ``iterator`` under :data:`ITERATOR_ITEM` next to ``items``
    (e.g. ``state=ocp.args.StandardSave(train_state)``)."""
    import orbax.checkpoint as ocp

    return ocp.args.Composite(**{ITERATOR_ITEM: grain.checkpoint.CheckpointSave(iterator)}, **items)


def checkpoint_restore_args(iterator: grain.DatasetIterator, **items):
    """The restoring counterpart of :func:`checkpoint_save_args`; restores ``iterator`` in place."""
    import orbax.checkpoint as ocp

    return ocp.args.Composite(**{ITERATOR_ITEM: grain.checkpoint.CheckpointRestore(iterator)}, **items)
