"""FungiCLEF 2025 observations: all images of one observation travel together.

An observation has 1 to 30 photos; batches hold whole observations padded to ``max_images`` with
an ``image_mask``, so Top-K can be computed per observation (the FungiCLEF metric).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import grain
import numpy as np

from fungizsl.data import augment as aug
from fungizsl.data.records import (check_common, check_int, check_source, describe_record, local_batch_size,
                                   process_slot, record_image, record_label)


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
    num_records = check_source(source)
    if observation_ids is None:
        records = (source[i] for i in range(num_records))
        observation_ids, scanned = [], []
        for i, record in enumerate(records):
            where = describe_record(record, i, repr(source))
            if observation_key not in record:
                raise ValueError(f"{where} has no observation field {observation_key!r}; its fields are "
                               f"{sorted(record)}")
            observation_ids.append(int(record[observation_key]))
            scanned.append(record_label(record, label_key, where))
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
            where = describe_record(record, int(record_index), self.source_name)
            image = record_image(record, self.image_key, where, draft)
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
    check_source(source)
    process_index, process_count = process_slot(process_index, process_count)
    global_batch_size = process_count if global_batch_size is None else global_batch_size
    local_batch = local_batch_size(global_batch_size, process_count)
    check_common(image_size, crop_fraction)
    norm = aug.get_normalization(normalization)
    index = observation_index or build_observation_index(source, observation_key=observation_key,
                                                         label_key=label_key)
    if max_images is None:
        max_images = index.max_images
    max_images = check_int("max_images", max_images, minimum=1)
    if index.max_images > max_images:
        biggest = int(np.argmax([len(r) for r in index.record_indices]))
        raise ValueError(f"observation {int(index.observation_ids[biggest])} has "
                         f"{len(index.record_indices[biggest])} images, more than max_images={max_images}")
    padded = math.ceil(len(index) / global_batch_size) * global_batch_size
    ds = grain.MapDataset.range(padded)
    ds = ds.map(LoadObservation(source, index, max_images, image_size, norm, crop_fraction, image_key))
    ds = ds[process_index::process_count]
    return ds.batch(local_batch, drop_remainder=True)
