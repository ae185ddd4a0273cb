"""FungiCLEF 2025 observation tables for the few-shot trainer (Lu et al., FungiCLEF 2025).

An observation (one specimen, 1 to 30 photos) carries one set of metadata and one label, so
metadata-level work happens per observation: `ObservationTable` holds the first record of each
observation with its label, and `temporal_holdout` carves the validation split out of the
training observations the way the competition splits its data (train up to 2021, validation 2022,
test 2023): the latest years' observations of species that keep at least one older observation.
Selection never looks at the evaluation CSV.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from fungizsl.data.builders.fungiclef2025 import read_metadata_csv
from fungizsl.errors import ConfigError


@dataclasses.dataclass
class ObservationTable:
    records: list[dict]
    observation_ids: np.ndarray  # int64 [N]
    labels: np.ndarray  # int64 [N]; -1 when unlabelled

    def __len__(self) -> int:
        return len(self.records)

    def subset(self, index) -> "ObservationTable":
        index = np.asarray(index)
        return ObservationTable([self.records[i] for i in index], self.observation_ids[index], self.labels[index])

    @property
    def years(self) -> np.ndarray:
        return np.asarray([int(r.get("year", -1)) for r in self.records])


def table_from_records(records: Sequence[Mapping], label_key: str = "category_id",
                       observation_key: str = "observationID") -> ObservationTable:
    first: dict[int, dict] = {}
    for r in records:
        first.setdefault(int(r[observation_key]), dict(r))
    recs = list(first.values())
    return ObservationTable(recs, np.asarray(list(first), np.int64),
                            np.asarray([int(r.get(label_key, -1)) for r in recs], np.int64))


def table_from_csv(path: str) -> ObservationTable:
    if not path:
        raise ConfigError("config.data.train_csv / eval_csv must name a FungiTastic-FewShot CSV file")
    try:
        rows = read_metadata_csv(path)
    except FileNotFoundError:
        raise ConfigError(f"FungiCLEF CSV {path} does not exist") from None
    return table_from_records([r for _, r in rows])


def temporal_holdout(table: ObservationTable, years: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """(train positions, val positions): observations from the latest `years` years, newest first,
    each taken only while its species keeps at least one other training observation."""
    obs_years = table.years
    recent = np.unique(obs_years[obs_years > 0])[-years:] if years > 0 else np.array([], int)
    left = np.bincount(table.labels[table.labels >= 0], minlength=int(table.labels.max()) + 1)
    held = np.zeros(len(table), bool)
    for i in np.argsort(-obs_years, kind="stable"):
        c = table.labels[i]
        if obs_years[i] in recent and c >= 0 and left[c] >= 2:
            held[i] = True
            left[c] -= 1
    return np.flatnonzero(~held), np.flatnonzero(held)


def poisonous_by_class(table: ObservationTable, num_classes: int) -> np.ndarray:
    out = np.full(num_classes, -1, np.int32)
    for r, c in zip(table.records, table.labels):
        p = int(r.get("poisonous", -1))
        if c >= 0 and p >= 0:
            out[c] = p
    return out


def level_of_class(table: ObservationTable, num_classes: int, level: str = "genus") -> np.ndarray:
    """Index of each class's genus (or family, ...) as seen in the table; unseen classes get their own."""
    names: dict[str, int] = {}
    out = np.full(num_classes, -1, np.int64)
    for r, c in zip(table.records, table.labels):
        if c >= 0 and out[c] < 0:
            out[c] = names.setdefault(str(r.get(level) or f"<class {c}>"), len(names))
    for c in np.flatnonzero(out < 0):
        out[c] = names.setdefault(f"<class {c}>", len(names))
    return out


class GatherRows(grain.transforms.Map):
    """Batch of row positions -> the arrays' rows (picklable, for Grain workers)."""

    def __init__(self, arrays: Mapping[str, np.ndarray]):
        self.arrays = dict(arrays)

    def map(self, positions):
        positions = np.asarray(positions)
        return {k: v[positions] for k, v in self.arrays.items()}


def shuffled_batches(arrays: Mapping[str, np.ndarray], batch_size: int, seed: int,
                     process_index: int = 0, process_count: int = 1):
    """A checkpointable iterator of this process's share of shuffled, repeated row batches."""
    n = len(next(iter(arrays.values())))
    ds = grain.MapDataset.range(n).seed(seed).shuffle().repeat()
    ds = ds[process_index::process_count].batch(batch_size // process_count, drop_remainder=True)
    return iter(ds.map(GatherRows(arrays)).to_iter_dataset())
