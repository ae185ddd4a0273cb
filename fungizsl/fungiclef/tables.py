"""FungiCLEF 2025 observations as tables: one row per observation, read from the Kaggle CSVs.

An observation (one specimen, 1 to 30 photos) carries one set of metadata and one label, so
metadata-level work happens per observation: `ObservationTable` holds the first record of each
observation with its label. `temporal_holdout` carves the validation split out of the training
observations the way the competition splits its data (train up to 2021, validation 2022, test
2023): the latest years' observations of species that keep at least one older observation, so
selection never looks at the evaluation CSV. Per class: the poisonous flag (1, 0, or -1 when no
row says) and the genus. `shuffled_batches` feeds the metadata-only trainer.

The CSV side of the evaluation-only runner lives here too: which columns a run's model reads
(`required_columns`), reading a CSV after checking its header (`read_csv_rows`), and where the
Kaggle layout keeps a CSV's split and images (`csv_split`, `default_image_dir`).
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Mapping, Sequence

import grain
import numpy as np
from etils import epath

from fungizsl.data.builders.fungiclef2025 import CSV_NAMES, CSV_PREFIX, read_metadata_csv
from fungizsl.errors import ConfigError
from fungizsl.fungiclef.metadata_prior import PRIOR_FIELDS

# Columns every evaluated CSV needs, beyond filename and observationID (the builder's own check).
LABEL_COLUMNS = ("category_id",)
NUMERIC_COLUMNS = ("month", "day", "latitude", "longitude", "elevation")
TEXT_COLUMNS = ("year", "month", "day", "habitat", "substrate")


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
    """int32 [C]: 1 poisonous, 0 edible, -1 when no labelled row of the table gives the class a flag."""
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


# -------------------------------------------------------------------------------------------------
# A CSV to evaluate
# -------------------------------------------------------------------------------------------------

def required_columns(config) -> list[str]:
    """CSV columns the run's model reads (besides filename and observationID)."""
    d, m = config.data, config.model
    need = list(LABEL_COLUMNS) + list(d.fields)
    if m.get("use_numeric", False):
        need += NUMERIC_COLUMNS
    if m.get("use_prior", False):
        need += list(PRIOR_FIELDS) + ["latitude", "longitude"]
    if m.get("use_text", False):
        need += list(TEXT_COLUMNS) + list(d.get("extra_text_fields", ()) or ())
    return list(dict.fromkeys(need))


def read_csv_rows(path: str, config) -> list[dict]:
    """Typed rows of a FungiCLEF CSV (the builder's reader), after checking its header names every
    column the model reads."""
    file = epath.Path(path)
    if not file.is_file():
        raise ConfigError(f"FungiCLEF CSV {path} does not exist")
    header = next(csv.reader(file.read_bytes().decode("utf-8-sig").splitlines()[:1]), [])
    missing = [c for c in required_columns(config) if c not in header]
    if missing:
        hint = " (an unlabelled test CSV cannot be evaluated)" if "category_id" in missing else ""
        raise ConfigError(f"FungiCLEF CSV {path} lacks column(s) {', '.join(missing)} that the model needs{hint}")
    try:
        return [row for _, row in read_metadata_csv(file)]
    except ValueError as error:
        raise ConfigError(str(error)) from None


def csv_split(path: str) -> str | None:
    """train / val / test from a FungiTastic-FewShot CSV file name, else None."""
    name = epath.Path(path).name
    return next((split for split, names in CSV_NAMES.items() if name in names), None)


def default_image_dir(csv_path: str, resolution: str) -> epath.Path:
    """The Kaggle layout's image folder of the CSV (`<root>/images/FungiTastic-FewShot/<split>/<resolution>`
    when the CSV sits in `<root>/metadata/FungiTastic-FewShot/`), else `<CSV folder>/images`."""
    file = epath.Path(csv_path)
    split = csv_split(csv_path)
    if file.parent.name == CSV_PREFIX and file.parent.parent.name == "metadata" and split:
        return file.parent.parent.parent / "images" / CSV_PREFIX / split / resolution
    return file.parent / "images"
