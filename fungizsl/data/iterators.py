"""Checkpointable iterators over the batched datasets, and their Orbax checkpoint arguments.

``iterator.get_state()`` / ``set_state()`` resume at exactly the next batch; with Orbax, save
``checkpoint_save_args(iterator, state=...)`` and restore with ``checkpoint_restore_args``. A
saved state restores into an iterator built with the same arguments, ``worker_count`` included.
"""

from __future__ import annotations

import grain
import orbax.checkpoint as ocp
from absl import flags

from fungizsl.data.datasets import make_eval_dataset, make_train_dataset
from fungizsl.data.observations import make_observation_dataset
from fungizsl.data.records import check_int

#: Name of the data-iterator item in an Orbax Composite checkpoint.
ITERATOR_ITEM = "data"


def iterate(dataset: grain.MapDataset, *, worker_count: int = 0, worker_buffer_size: int = 1,
            read_threads: int = 2, prefetch_batches: int = 2) -> grain.DatasetIterator:
    """A checkpointable iterator over a batched ``MapDataset``.

    ``read_threads`` threads per process (each worker has its own) compute up to ``prefetch_batches``
    batches ahead; ``worker_count > 0`` spreads the batches over that many spawned processes (Grain
    ``mp_prefetch``), each buffering ``worker_buffer_size`` finished batches.
    """
    worker_count = check_int("worker_count", worker_count, minimum=0)
    worker_buffer_size = check_int("worker_buffer_size", worker_buffer_size, minimum=1)
    read_threads = check_int("read_threads", read_threads, minimum=0)
    prefetch_batches = check_int("prefetch_batches", prefetch_batches, minimum=0)
    ds = dataset.to_iter_dataset(grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches))
    if worker_count:
        _ensure_flags_parsed()
        ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=worker_count,
                                                         per_worker_buffer_size=worker_buffer_size))
    return iter(ds)


def _ensure_flags_parsed() -> None:
    """Grain's worker start reads absl flags. An absl app has parsed them by now; a plain script or a
    test has not, and would fail with UnparsedFlagAccessError, so fall back to the flag defaults."""
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


def checkpoint_save_args(iterator: grain.DatasetIterator, **items):
    """``ocp.args.Composite`` saving ``iterator`` under :data:`ITERATOR_ITEM` next to ``items``
    (e.g. ``state=ocp.args.StandardSave(train_state)``)."""
    return ocp.args.Composite(**{ITERATOR_ITEM: grain.checkpoint.CheckpointSave(iterator)}, **items)


def checkpoint_restore_args(iterator: grain.DatasetIterator, **items):
    """The restoring counterpart of :func:`checkpoint_save_args`; restores ``iterator`` in place."""
    return ocp.args.Composite(**{ITERATOR_ITEM: grain.checkpoint.CheckpointRestore(iterator)}, **items)
