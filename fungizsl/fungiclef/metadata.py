"""Observation metadata for the FungiCLEF 2025 stage-2 fusion (Lu et al., FungiCLEF 2025, sec. 3.1).

* `render_text`: the paper's template, "This fungi specimen was collected on [year]-[month]-[day]
  in a [habitat] area, growing on a [substrate] substrate.", with blanks dropped clause by clause
  rather than printed as "-1" or "nan", and optional extra fields appended as short sentences.
* `FieldVocab`: categorical fields -> integer ids (0 = blank or unseen), for field embeddings.
* `numeric_features`: day of year on the circle, latitude/longitude/elevation standardised, each
  with a "known" flag; blanks are 0 with the flag off.

Records are the typed rows of `fungizsl.data.builders.fungiclef2025` (blank text "", blank int -1,
blank float NaN), or any dict with those keys.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence

import numpy as np

#: Extra fields that `render_text` can append, with the sentence each becomes.
EXTRA_FIELD_TEMPLATES = {
    "metaSubstrate": "The substrate type is {}.",
    "landcover": "The land cover is {}.",
    "region": "It was found in the region {}.",
    "district": "It was found in the district {}.",
    "biogeographicalRegion": "The biogeographical region is {}.",
    "countryCode": "The country is {}.",
    "elevation": "The elevation is {:.0f} metres.",
}
DEFAULT_FIELDS = ("habitat", "substrate", "metaSubstrate", "landcover", "region", "district",
                  "biogeographicalRegion", "countryCode", "month")


def _text(value) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        value = value.decode("utf-8")
    if isinstance(value, float) and math.isnan(value):
        return ""
    text = str(value).strip()
    return "" if text.lower() in ("", "nan", "none", "-1") else text


def _int(value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return -1
    return -1 if math.isnan(number) else int(number)


def render_text(record: Mapping, extra_fields: Sequence[str] = (), with_year: bool = True) -> str:
    """The paper's metadata sentence for one record; blank parts are left out, not printed."""
    year, month, day = _int(record.get("year")), _int(record.get("month")), _int(record.get("day"))
    habitat, substrate = _text(record.get("habitat")), _text(record.get("substrate"))
    date = [f"{year}" if with_year and year > 0 else "", f"{month}" if month > 0 else "",
            f"{day}" if day > 0 else ""]
    date = "-".join(p for p in date if p)
    text = "This fungi specimen was collected"
    if date:
        text += f" on {date}"
    if habitat:
        text += f" in a {habitat} area"
    if substrate:
        text += f", growing on a {substrate} substrate"
    text += "."
    for field in extra_fields:
        if field not in EXTRA_FIELD_TEMPLATES:
            raise ValueError(f"unknown extra metadata field {field!r}; known: {sorted(EXTRA_FIELD_TEMPLATES)}")
        value = record.get(field)
        if field == "elevation":
            try:
                value = float(value)
            except (TypeError, ValueError):
                continue
            if math.isnan(value):
                continue
            text += " " + EXTRA_FIELD_TEMPLATES[field].format(value)
        elif _text(value):
            text += " " + EXTRA_FIELD_TEMPLATES[field].format(_text(value))
    return text


@dataclasses.dataclass
class FieldVocab:
    """Per-field value -> id tables built on training records; id 0 is blank or unseen."""

    fields: tuple[str, ...]
    tables: dict[str, dict[str, int]]

    @classmethod
    def build(cls, records: Sequence[Mapping], fields: Sequence[str] = DEFAULT_FIELDS,
              min_count: int = 1) -> "FieldVocab":
        tables = {}
        for field in fields:
            counts: dict[str, int] = {}
            for record in records:
                value = _field_value(record, field)
                if value:
                    counts[value] = counts.get(value, 0) + 1
            kept = sorted(v for v, c in counts.items() if c >= min_count)
            tables[field] = {v: i + 1 for i, v in enumerate(kept)}
        return cls(tuple(fields), tables)

    def sizes(self) -> tuple[int, ...]:
        """Table size per field (including id 0)."""
        return tuple(len(self.tables[f]) + 1 for f in self.fields)

    def encode(self, records: Sequence[Mapping]) -> np.ndarray:
        """int32 [len(records), len(fields)]."""
        out = np.zeros((len(records), len(self.fields)), np.int32)
        for i, record in enumerate(records):
            for j, field in enumerate(self.fields):
                out[i, j] = self.tables[field].get(_field_value(record, field), 0)
        return out

    def to_json(self) -> dict:
        return {"fields": list(self.fields), "tables": self.tables}

    @classmethod
    def from_json(cls, data: Mapping) -> "FieldVocab":
        return cls(tuple(data["fields"]), {k: dict(v) for k, v in data["tables"].items()})


def _field_value(record: Mapping, field: str) -> str:
    if field in ("month", "day", "year"):
        value = _int(record.get(field))
        return str(value) if value > 0 else ""
    return _text(record.get(field))


NUMERIC_FEATURES = ("doy_sin", "doy_cos", "date_known", "lat", "lon", "geo_known", "elevation",
                    "elevation_known")
_GEO_CENTRE = (56.0, 10.5)  # Denmark, where the Atlas of Danish Fungi observations come from
_GEO_SCALE = (1.5, 2.5)


def numeric_features(records: Sequence[Mapping]) -> np.ndarray:
    """float32 [len(records), len(NUMERIC_FEATURES)]; blanks are 0 with their flag off."""
    out = np.zeros((len(records), len(NUMERIC_FEATURES)), np.float32)
    for i, record in enumerate(records):
        month, day = _int(record.get("month")), _int(record.get("day"))
        if month > 0:
            doy = (month - 1) * 30.44 + (day if day > 0 else 15)
            out[i, 0:3] = math.sin(2 * math.pi * doy / 365.25), math.cos(2 * math.pi * doy / 365.25), 1
        lat, lon = _float(record.get("latitude")), _float(record.get("longitude"))
        if not (math.isnan(lat) or math.isnan(lon)):
            out[i, 3:6] = (lat - _GEO_CENTRE[0]) / _GEO_SCALE[0], (lon - _GEO_CENTRE[1]) / _GEO_SCALE[1], 1
        elevation = _float(record.get("elevation"))
        if not math.isnan(elevation):
            out[i, 6:8] = elevation / 50.0, 1
    return out


def _float(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
