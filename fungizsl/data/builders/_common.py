"""Shared plumbing of the fungizsl TFDS builders: array_record by default, `manual_dir=`, image checks.

The builders write ``array_record`` shards that Grain reads by random access
(``builder.as_data_source(split)``); nothing here needs TensorFlow. Three details make that work:

* images reach TFDS as *encoded bytes* (``tfds.features.Image`` given a numpy array would call
  TensorFlow to encode it), always RGB so that every record decodes to ``[H, W, 3]``;
* ``code_path`` is resolved from the module file directly: TFDS 4.9's own lookup touches the
  third-party ``importlib_resources`` package, which a TensorFlow-free install may lack;
* ``manual_dir`` may be given to the constructor (``Builder(manual_dir=...)``) as well as through
  ``download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=...))``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import io
import json
import logging
import os
import warnings
from collections.abc import Mapping

import tensorflow_datasets as tfds
from etils import epath
from PIL import Image

logger = logging.getLogger(__name__)


class BuilderBase(tfds.core.GeneratorBasedBuilder):
    """A GeneratorBasedBuilder that writes array_record and accepts ``manual_dir=``.

    Abstract (it implements none of ``_info``/``_split_generators``/``_generate_examples``), so
    TFDS does not register it as a dataset.
    """

    def __init__(self, *, manual_dir: epath.PathLike | None = None, file_format: str | None = "array_record",
                 **kwargs):
        self._manual_dir = os.fspath(manual_dir) if manual_dir is not None else None  # _info() may use it
        super().__init__(file_format=file_format, **kwargs)
        # TFDS pickles a builder as its constructor arguments (`_original_state`): keep ours in it.
        self._original_state = dict(self._original_state, manual_dir=self._manual_dir, file_format=file_format)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        return epath.Path(inspect.getfile(cls))

    @property
    def manual_dir(self) -> epath.Path | None:
        """The manual_dir given to the constructor (None: TFDS's default under data_dir)."""
        return epath.Path(self._manual_dir) if self._manual_dir else None

    def download_and_prepare(self, *, download_config: tfds.download.DownloadConfig | None = None, **kwargs):
        download_config = download_config or tfds.download.DownloadConfig()
        if self._manual_dir and not download_config.manual_dir:
            download_config = dataclasses.replace(download_config, manual_dir=self._manual_dir)
        return super().download_and_prepare(download_config=download_config, **kwargs)


def set_metadata(info: tfds.core.DatasetInfo, key: str, value) -> None:
    """Store a JSON-able value in the dataset's ``metadata.json`` (written with the dataset)."""
    if info.metadata is not None:
        info.metadata[key] = value


def config_digest(config, exclude: tuple[str, ...] = ("name", "description")) -> str:
    """8 hex digits naming a config's data-affecting fields, for derived config names."""
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
              if f.name not in exclude and f.name not in _BASE_CONFIG_FIELDS}
    return hashlib.sha256(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()[:8]


_BASE_CONFIG_FIELDS = {f.name for f in dataclasses.fields(tfds.core.BuilderConfig)}


def derive_config(base, overrides: Mapping[str, object], name: str | None = None):
    """``base`` with ``overrides`` (field -> value); named ``name``, else ``<base>_<digest>`` when
    anything changed.

    A changed config must not reuse the base name: TFDS would "reuse" the other data on disk.
    """
    changed = {k: v for k, v in overrides.items() if getattr(base, k) != v}
    if not changed and name in (None, base.name):
        return base
    config = dataclasses.replace(base, name=base.name, **overrides)
    config.name = name or f"{base.name}_{config_digest(config)}"
    settings = ", ".join(f"{k}={v}" for k, v in changed.items())
    config.description = f"{base.description or base.name} (custom: {settings})"
    return config


# ----------------------------------------------------------------------------------------------
# Images
# ----------------------------------------------------------------------------------------------


def encode_image(image, encoding: str = "png", quality: int = 95) -> bytes:
    """A uint8 [H, W, 3] array or PIL image as PNG or JPEG bytes (RGB)."""
    img = image if isinstance(image, Image.Image) else Image.fromarray(image)
    if img.mode != "RGB":
        img = img.convert("RGB")
    buf = io.BytesIO()
    if encoding == "png":
        img.save(buf, format="PNG")
    elif encoding == "jpeg":
        img.save(buf, format="JPEG", quality=quality)
    else:
        raise ValueError(f"unknown image encoding {encoding!r}; use 'png' or 'jpeg'")
    return buf.getvalue()


class BadImage(Exception):
    """An image file that is missing, unreadable or does not decode; the message says why."""


def read_image_file(path: epath.PathLike, reencode: str = "png",
                    keep: tuple[str, ...] = ("JPEG", "PNG")) -> tuple[bytes, tuple[int, int]]:
    """(RGB JPEG/PNG bytes, (height, width)) of an image file, decoded once to prove it is whole.

    Files in RGB whose PIL format is in ``keep`` are returned byte for byte; other modes
    (greyscale, CMYK, RGBA, palette) or formats are converted to RGB and re-encoded as ``reencode``.
    Raises :class:`BadImage` for a missing, truncated or otherwise undecodable file.
    """
    path = epath.Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise BadImage("missing file") from None
    except OSError as err:
        raise BadImage(f"unreadable file ({err})") from None
    if not data:
        raise BadImage("empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            img.load()  # full decode: catches truncated and corrupt data, not just a bad header
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... for bad data
        raise BadImage(f"corrupt image ({type(err).__name__}: {err})") from None
    if img.mode == "RGB" and fmt in keep:
        return data, (img.height, img.width)
    return encode_image(img, reencode), (img.height, img.width)


class SkipLog:
    """Counts and names the files a split generator skipped; `summary()` is logged at the end."""

    def __init__(self, dataset: str, split: str):
        self.dataset, self.split = dataset, split
        self.skipped: list[tuple[str, str]] = []
        self.written = 0

    def skip(self, name: str, reason: str) -> None:
        self.skipped.append((name, reason))
        logger.warning("%s/%s: skipping %s: %s", self.dataset, self.split, name, reason)

    def counts(self) -> dict[str, int]:
        kinds: dict[str, int] = {}
        for _, reason in self.skipped:
            kind = reason.split(" (")[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        return kinds

    def summary(self) -> str:
        text = f"{self.dataset}/{self.split}: wrote {self.written} examples, skipped {len(self.skipped)}"
        if self.skipped:
            text += " (" + ", ".join(f"{k}: {v}" for k, v in sorted(self.counts().items())) + ")"
        return text

    def log_summary(self) -> None:
        (logger.warning if self.skipped else logger.info)("%s", self.summary())

    def as_json(self) -> dict:
        return {"written": self.written, "skipped": [{"file": n, "reason": r} for n, r in self.skipped]}
