"""The batched training and evaluation ``grain.MapDataset`` of one process.

See :mod:`fungizsl.data.pipeline` for the whole flow, the seeding and the per-process slicing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import grain

from fungizsl.data import augment as aug
from fungizsl.data.caption_table import SampleCaption, caption_table_for
from fungizsl.data.records import (check_common, check_int, check_source, local_batch_size, op_seed,
                                   process_slot)
from fungizsl.data.sources import IndexedRecords
from fungizsl.data.transforms import DecodeImage, EvalResize, RandomAugment


def make_train_dataset(source, *, global_batch_size: int, seed: int, image_size: int = 224,
                       augment="natural", normalization="clip", captions_by_class=None,
                       class_names: Sequence[str] | None = None, tokenizer=None,
                       context_length: int | None = None, caption_seed: int | None = None,
                       num_epochs: int | None = None,
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
    the source has them). ``caption_seed`` (default ``seed``) keys the caption draws apart from the
    shuffle and augmentation, so a trainer can keep them with its data seed. ``num_epochs=None``
    repeats forever; a finite count keeps only whole global batches. ``process_index``/``process_count`` default to JAX's.
    """
    num_records = check_source(source)
    process_index, process_count = process_slot(process_index, process_count)
    local_batch = local_batch_size(global_batch_size, process_count)
    seed = check_int("seed", seed, minimum=0)
    check_common(image_size)
    if num_epochs is not None:
        num_epochs = check_int("num_epochs", num_epochs, minimum=1)
    config = aug.get_augment(augment)
    norm = aug.get_normalization(normalization)
    table = caption_table_for(source, captions_by_class, class_names, tokenizer, context_length)

    # Our random operations get explicit seeds derived from (seed, operation name), so they do not
    # move when the pipeline gains or loses a node (e.g. the whole-batch cut of finite epochs);
    # .seed() still seeds anything a caller adds downstream.
    ds = grain.MapDataset.source(IndexedRecords(source)).seed(seed)
    if shuffle:
        ds = ds.shuffle(seed=op_seed(seed, "shuffle"))
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
        ds = ds.random_map(RandomAugment(config, image_size, norm), seed=op_seed(seed, "augment"))
    if table is not None:
        caption_seed = seed if caption_seed is None else check_int("caption_seed", caption_seed, minimum=0)
        ds = ds.random_map(SampleCaption(table), seed=op_seed(caption_seed, "caption"))
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
    num_records = check_source(source)
    process_index, process_count = process_slot(process_index, process_count)
    local_batch = local_batch_size(global_batch_size, process_count)
    seed = check_int("seed", seed, minimum=0)
    check_common(image_size, crop_fraction)
    norm = aug.get_normalization(normalization)
    table = caption_table_for(source, captions_by_class, class_names, tokenizer, context_length)

    padded = math.ceil(num_records / global_batch_size) * global_batch_size
    ds = grain.MapDataset.source(IndexedRecords(source, length=padded, with_valid=True)).seed(seed)
    draft = math.ceil(image_size / crop_fraction)
    ds = ds.map(DecodeImage(image_key, label_key, repr(source), draft_size=draft))
    ds = ds.map(EvalResize(image_size, norm, crop_fraction))
    if table is not None:
        ds = ds.random_map(SampleCaption(table), seed=op_seed(seed, "caption"))
    ds = ds[process_index::process_count]
    return ds.batch(local_batch, drop_remainder=True)
