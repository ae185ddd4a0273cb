"""TFDS builder of FungiCLEF 2025 (FungiTastic-FewShot): one record per image, every field typed.

FungiCLEF 2025 (Janouskova, Matas, Picek, "Overview of FungiCLEF 2025: Few-Shot Classification
With Rare Fungi Species", CEUR-WS Vol-4038) is the few-shot split of FungiTastic (Picek et al.,
"FungiTastic: A Multi-Modal Dataset and Benchmark for Image Categorization",
https://arxiv.org/abs/2408.13632), built from the Atlas of Danish Fungi: 2,427 species, train up to
2021, validation 2022, test 2023, scored by top-5 accuracy per observation (1 to 30 images each).
The few-shot system this project reproduces (Lu et al., "Few-Shot Classification of Fungi Species
Using Contrastive Representation Learning and Multimodal Fusion", FungiCLEF 2025, 2nd place)
renders each record's date, habitat and substrate into text, so every metadata column is kept.

``manual_dir`` is the Kaggle download::

    metadata/FungiTastic-FewShot/FungiTastic-FewShot-{Train,Val,Test}.csv   (or -Val-dev.csv)
    images/FungiTastic-FewShot/{train,val,test}/{300p,500p,720p,fullsize}/<filename>
    captions/{train,val,test}/<filename>.json       optional; one JSON string per image

or, for the ``metadata_only`` config, just a folder holding the three CSVs. Splits are named
``train``, ``val`` and ``test``; records keep the CSV's row order (``disable_shuffling``).

Record schema (CSV column names kept as published)::

    image                  uint8 [H, W, 3]   JPEG; not in the metadata_only config
    caption                bytes   b"" when the image has no caption file
    filename, eventDate, habitat, countryCode, scientificName, kingdom, phylum, class, order,
    family, genus, specificEpithet, species, iucnRedListCategory, substrate, region, district,
    metaSubstrate, landcover, biogeographicalRegion
                           bytes   UTF-8; b"" for a blank (or, in test, absent) field
    observationID          int64   required
    category_id            int64   -1 in test (no labels) and for a blank
    year, month, day       int32   -1 for a blank; "2021", "2022.0" and "1.0" all read as integers
    poisonous              int32   0 or 1; -1 for a blank and in test
    hasCoordinate          bool    a blank reads as "latitude and longitude are both given"
    latitude, longitude, coorUncert, elevation
                           float32 NaN for a blank

Conventions: blank text -> ``b""``, blank integer -> ``-1``, blank float -> ``NaN`` (test with
``np.isnan``). Taxa outside the kingdom Fungi (Protozoa, Chromista: slime moulds, water moulds)
are genuine competition classes and are kept. Missing or undecodable image files are skipped:
each is named in a warning as it is met, their count is logged at the end of each split, and the
list is stored in the dataset's ``metadata.json`` under ``"skipped"``.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from fungizsl.data.builders._common import BadImage, BuilderBase, SkipLog, read_image_file, set_metadata

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
RESOLUTIONS = ("300p", "500p", "720p", "fullsize")
CSV_PREFIX = "FungiTastic-FewShot"
CSV_NAMES = {  # split -> accepted file names, first found wins
    "train": ("FungiTastic-FewShot-Train.csv",),
    "val": ("FungiTastic-FewShot-Val.csv", "FungiTastic-FewShot-Val-dev.csv"),
    "test": ("FungiTastic-FewShot-Test.csv",),
}

TEXT_COLUMNS = ("filename", "eventDate", "habitat", "countryCode", "scientificName", "kingdom", "phylum", "class",
                "order", "family", "genus", "specificEpithet", "species", "iucnRedListCategory", "substrate",
                "region", "district", "metaSubstrate", "landcover", "biogeographicalRegion")
INT_COLUMNS = {"observationID": np.int64, "category_id": np.int64, "year": np.int32, "month": np.int32,
               "day": np.int32, "poisonous": np.int32}
# float32, not float64: TFDS serialises floats as tf.train.Example float lists, which are 32-bit
# (4e-6 degrees of latitude, well under every coorUncert in the data).
FLOAT_COLUMNS = {"latitude": np.float32, "longitude": np.float32, "coorUncert": np.float32,
                 "elevation": np.float32}
BOOL_COLUMNS = ("hasCoordinate",)
REQUIRED_COLUMNS = ("filename", "observationID")
KNOWN_COLUMNS = set(TEXT_COLUMNS) | set(INT_COLUMNS) | set(FLOAT_COLUMNS) | set(BOOL_COLUMNS)
MISSING_INT = -1
_NULL_WORDS = {"", "nan", "none", "null", "na"}


@dataclasses.dataclass(eq=False)
class FungiClefConfig(tfds.core.BuilderConfig):
    """``resolution`` is the image folder to read (None: metadata only, no ``image`` feature)."""

    resolution: str | None = "300p"
    max_rows_per_split: int | None = None  # first N CSV rows of each split (quick builds, tests)

    def __post_init__(self):
        if self.resolution is not None and self.resolution not in RESOLUTIONS:
            raise ValueError(f"resolution must be one of {', '.join(RESOLUTIONS)} or None, got {self.resolution!r}")
        if self.max_rows_per_split is not None and self.max_rows_per_split < 1:
            raise ValueError(f"max_rows_per_split must be >= 1, got {self.max_rows_per_split}")


BUILDER_CONFIGS = [
    *(FungiClefConfig(name=r, description=f"Images from the {r} folder with all metadata.", resolution=r)
      for r in RESOLUTIONS),
    FungiClefConfig(name="metadata_only", description="All metadata and captions, no images.", resolution=None),
]


# ----------------------------------------------------------------------------------------------
# Typed CSV fields
# ----------------------------------------------------------------------------------------------


def _is_blank(value: str | None) -> bool:
    return value is None or value.strip().lower() in _NULL_WORDS


def parse_int(value: str | None) -> int:
    """'2021', '2022.0', '1.0' -> int; blank (or 'nan') -> -1; anything else raises ValueError."""
    if _is_blank(value):
        return MISSING_INT
    text = value.strip()
    try:
        return int(text)
    except ValueError:
        number = float(text)  # raises ValueError for garbage
        if not number.is_integer():
            raise ValueError(f"{value!r} is not a whole number") from None
        return int(number)


def parse_float(value: str | None) -> float:
    """A float; blank (or 'nan') -> NaN; anything else unreadable raises ValueError."""
    return math.nan if _is_blank(value) else float(value)


def parse_bool(value: str | None) -> bool | None:
    """'True'/'False'/'1'/'0' (any case, '1.0' too) -> bool; blank -> None."""
    if _is_blank(value):
        return None
    text = value.strip().lower()
    if text in ("true", "t", "yes", "1", "1.0"):
        return True
    if text in ("false", "f", "no", "0", "0.0"):
        return False
    raise ValueError(f"{value!r} is not a boolean")


def typed_row(row: dict[str, str | None], where: str) -> dict:
    """One CSV row as typed fields (every known column, blanks filled per the module's convention)."""
    out: dict = {}
    column = None
    try:
        for column in TEXT_COLUMNS:
            value = row.get(column)
            out[column] = "" if _is_blank(value) else value.strip()
        for column in INT_COLUMNS:
            out[column] = parse_int(row.get(column))
        for column in FLOAT_COLUMNS:
            out[column] = parse_float(row.get(column))
        for column in BOOL_COLUMNS:
            out[column] = parse_bool(row.get(column))
    except ValueError as err:
        raise ValueError(f"{where}: column {column!r}: cannot read {row.get(column)!r} ({err})") from None
    if out["hasCoordinate"] is None:
        out["hasCoordinate"] = not (math.isnan(out["latitude"]) or math.isnan(out["longitude"]))
    if out["observationID"] == MISSING_INT or not out["filename"]:
        raise ValueError(f"{where}: a row needs both filename and observationID")
    return out


def read_metadata_csv(path: epath.PathLike, max_rows: int | None = None) -> list[tuple[int, dict]]:
    """(line number, typed row) for each row of a FungiTastic-FewShot CSV."""
    path = epath.Path(path)
    text = path.read_bytes().decode("utf-8-sig")  # bytes: keeps quoted newlines; -sig: drops a BOM
    with io.StringIO(text, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; has {', '.join(columns)}")
        unknown = [c for c in columns if c not in KNOWN_COLUMNS]
        if unknown:
            logger.warning("%s: ignoring unknown column(s) %s", path, ", ".join(unknown))
        rows = []
        for row in reader:
            if max_rows is not None and len(rows) >= max_rows:
                break
            rows.append((reader.line_num, typed_row(row, f"{path}:{reader.line_num}")))
    return rows


# ----------------------------------------------------------------------------------------------
# Layout
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Layout:
    """Where one download keeps its CSVs, images and captions."""

    csvs: dict[str, epath.Path]
    images: epath.Path | None  # the folder holding {split}/{resolution}/
    captions: epath.Path | None  # the folder holding {split}/<filename>.json

    def image_dir(self, split: str, resolution: str) -> epath.Path | None:
        return self.images / split / resolution if self.images else None


def find_layout(manual_dir: epath.PathLike) -> Layout:
    """Find the CSVs (Kaggle layout or a flat folder), image and caption folders under manual_dir."""
    root = epath.Path(manual_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"FungiCLEF 2025 folder {root} does not exist")
    csvs: dict[str, epath.Path] = {}
    for folder in (root / "metadata" / CSV_PREFIX, root / "metadata", root):
        for split, names in CSV_NAMES.items():
            for name in names:
                if split not in csvs and (folder / name).is_file():
                    csvs[split] = folder / name
        if csvs:
            break
    if not csvs:
        raise FileNotFoundError(
            f"no FungiTastic-FewShot CSVs under {root}: expected metadata/{CSV_PREFIX}/{CSV_NAMES['train'][0]} "
            f"(Kaggle layout) or the CSV files directly in the folder")
    for split in SPLITS:
        if split not in csvs:
            logger.warning("%s: no CSV for split %r (looked for %s); building without it",
                           root, split, " or ".join(CSV_NAMES[split]))
    images = next((p for p in (root / "images" / CSV_PREFIX, root / "images") if p.is_dir()), None)
    captions = root / "captions" if (root / "captions").is_dir() else None
    return Layout(csvs=dict(sorted(csvs.items(), key=lambda kv: SPLITS.index(kv[0]))), images=images,
                  captions=captions)


def read_caption(caption_dir: epath.Path | None, filename: str, where: str) -> str:
    """The caption of one image ('' when it has none); a malformed file is named in a warning."""
    if caption_dir is None:
        return ""
    stem = filename.rsplit(".", 1)[0]
    for path in (caption_dir / f"{filename}.json", caption_dir / f"{stem}.json"):
        if path.is_file():
            break
    else:
        return ""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        logger.warning("%s: unreadable caption %s (%s); using none", where, path, err)
        return ""
    if not isinstance(value, str):
        logger.warning("%s: caption %s is a JSON %s, not a string; using none", where, path, type(value).__name__)
        return ""
    return value.strip()


# ----------------------------------------------------------------------------------------------
# Builder
# ----------------------------------------------------------------------------------------------


class FungiClef2025(BuilderBase):
    """FungiCLEF 2025 / FungiTastic-FewShot images and metadata from a manual download."""

    name = "fungiclef2025"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_BUILDER_CONFIG_NAME = "300p"
    MANUAL_DOWNLOAD_INSTRUCTIONS = """\
    Download the FungiCLEF 2025 competition data from Kaggle and pass its root folder as
    manual_dir (it holds metadata/FungiTastic-FewShot/*.csv and images/FungiTastic-FewShot/).
    For the metadata_only config a folder holding just the three CSVs is enough.
    """

    def _info(self) -> tfds.core.DatasetInfo:
        features = {column: tfds.features.Text() for column in TEXT_COLUMNS}
        features.update({c: tfds.features.Scalar(dtype) for c, dtype in INT_COLUMNS.items()})
        features.update({c: tfds.features.Scalar(dtype) for c, dtype in FLOAT_COLUMNS.items()})
        features.update({c: tfds.features.Scalar(np.bool_) for c in BOOL_COLUMNS})
        features["caption"] = tfds.features.Text()
        if self.builder_config.resolution:
            features["image"] = tfds.features.Image(shape=(None, None, 3), encoding_format="jpeg")
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            homepage="https://arxiv.org/abs/2408.13632",
            citation=CITATION,
            disable_shuffling=True,
            metadata=tfds.core.MetadataDict(),
        )

    def _split_generators(self, dl_manager):
        layout = find_layout(dl_manager.manual_dir)
        resolution = self.builder_config.resolution
        if resolution:
            for split in layout.csvs:
                folder = layout.image_dir(split, resolution)
                if folder is None or not folder.is_dir():
                    raise FileNotFoundError(
                        f"no image folder for split {split!r} at resolution {resolution}: expected "
                        f"{epath.Path(dl_manager.manual_dir) / 'images' / CSV_PREFIX / split / resolution}; "
                        f"build the 'metadata_only' config when the images are absent")
        set_metadata(self.info, "source_csv", {s: str(p) for s, p in layout.csvs.items()})
        set_metadata(self.info, "skipped", {})
        return {split: self._generate_examples(split, layout) for split in layout.csvs}

    def _generate_examples(self, split: str, layout: Layout):
        cfg = self.builder_config
        rows = read_metadata_csv(layout.csvs[split], cfg.max_rows_per_split)
        log = SkipLog(self.name, split)
        image_dir = layout.image_dir(split, cfg.resolution) if cfg.resolution else None
        caption_dir = layout.captions / split if layout.captions and (layout.captions / split).is_dir() else None
        seen: set[str] = set()
        other_kingdoms: dict[str, int] = {}
        captions = 0
        for line, record in rows:
            filename = record["filename"]
            if filename in seen:
                log.skip(filename, f"duplicate row (line {line})")
                continue
            seen.add(filename)
            if image_dir is not None:
                try:
                    record["image"], _ = read_image_file(image_dir / filename, reencode="jpeg", keep=("JPEG",))
                except BadImage as err:
                    log.skip(filename, f"{err} ({image_dir / filename})")
                    continue
            record["caption"] = read_caption(caption_dir, filename, f"{split}/{filename}")
            captions += bool(record["caption"])
            if record["kingdom"] and record["kingdom"] != "Fungi":
                other_kingdoms[record["kingdom"]] = other_kingdoms.get(record["kingdom"], 0) + 1
            log.written += 1
            yield filename, record
        if other_kingdoms:
            logger.info("%s/%s: kept %s records of kingdoms other than Fungi", self.name, split,
                        ", ".join(f"{n} {k}" for k, n in sorted(other_kingdoms.items())))
        logger.info("%s/%s: %d of %d records have a caption", self.name, split, captions, log.written)
        log.log_summary()
        skipped = dict(self.info.metadata.get("skipped", {}))
        skipped[split] = log.as_json()
        set_metadata(self.info, "skipped", skipped)


CITATION = """@inproceedings{janouskova2025fungiclef,
  title     = {Overview of {FungiCLEF} 2025: Few-Shot Classification With Rare Fungi Species},
  author    = {Janouskova, Klara and Matas, Ji{\\v{r}}{\\'\\i} and Picek, Lukas},
  booktitle = {Working Notes of CLEF 2025},
  series    = {CEUR Workshop Proceedings},
  volume    = {4038},
  year      = {2025}
}
@article{picek2024fungitastic,
  title   = {{FungiTastic}: A Multi-Modal Dataset and Benchmark for Image Categorization},
  author  = {Picek, Lukas and Janou{\\v{s}}kov{\\'a}, Kl{\\'a}ra and Cermak, Vojtech and Matas, Jiri},
  journal = {arXiv preprint arXiv:2408.13632},
  year    = {2024}
}"""
