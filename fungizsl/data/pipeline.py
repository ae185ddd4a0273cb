"""The Grain input pipeline: records -> shuffled, sharded, augmented, captioned numpy batches.

This module is a facade over the small modules that build it (listed below).

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

The pieces live in small modules, re-exported here so ``from fungizsl.data import pipeline``
keeps working: :mod:`~fungizsl.data.sources` (sources), :mod:`~fungizsl.data.records` (reading a
record, argument checks), :mod:`~fungizsl.data.transforms` (decode, augment, resize),
:mod:`~fungizsl.data.caption_table` (tokenised captions, :class:`SampleCaption`),
:mod:`~fungizsl.data.datasets` (train/eval datasets), :mod:`~fungizsl.data.observations`
(FungiCLEF observation groups), :mod:`~fungizsl.data.iterators` (iterators, checkpoint arguments)
and :mod:`fungizsl.placement` (batches onto a device mesh).

Example::

    source = RenderedSource(n_per_stage=1000, render_config=RenderConfig(image_size=256))
    it = make_train_iterator(source, global_batch_size=256, seed=0, image_size=224,
                             augment="microscopy", captions_by_class=get_caption_source("templates"),
                             tokenizer=tokenizer_folder, worker_count=8)
    batch = to_global_batch(next(it), mesh)
"""


from fungizsl.data.caption_table import CaptionTable, SampleCaption, build_caption_table
from fungizsl.data.datasets import make_eval_dataset, make_train_dataset
from fungizsl.data.iterators import (ITERATOR_ITEM, checkpoint_restore_args, checkpoint_save_args, iterate,
                                     make_eval_iterator, make_observation_iterator, make_train_iterator)
from fungizsl.data.observations import (LoadObservation, ObservationIndex, build_observation_index,
                                        make_observation_dataset)
from fungizsl.data.sources import InMemorySource, RenderedSource, encode_image
from fungizsl.data.transforms import DecodeImage, EvalResize, RandomAugment
from fungizsl.placement import to_global_batch

__all__ = [
    "InMemorySource",
    "RenderedSource",
    "encode_image",
    "CaptionTable",
    "SampleCaption",
    "build_caption_table",
    "DecodeImage",
    "EvalResize",
    "RandomAugment",
    "ObservationIndex",
    "LoadObservation",
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
