"""Random-access record sources for the input pipeline.

Any object with ``__len__`` and ``__getitem__`` returning a dict record is a source (the TFDS
array_record sources of :mod:`fungizsl.data.builders` are); this module adds
:class:`InMemorySource` (records in a list) and :class:`RenderedSource` (synthetic growth-stage
images of :mod:`fungizsl.data.synthetic`, rendered on access), and :class:`IndexedRecords`, the
Grain source that tags each record with its index (and pads evaluation passes).
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from PIL import Image

from fungizsl.data import synthetic
from fungizsl.data.records import check_int


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
    "render_index", "scene"}``; ``image`` is a uint8 [H, W, 3] array, or PNG/JPEG bytes with
    ``encoding``; ``scene`` is the image's :class:`~fungizsl.data.scene_params.SceneParams` as JSON
    (what it shows, for per-image captions). A record is a pure function of (stages, index, seed,
    render_config), in any process.
    """

    def __init__(self, stages: Sequence[str] | None = None, n_per_stage: int = 100, seed: int = 0,
                 render_config=None, *, encoding: str | None = None):
        config = render_config or synthetic.RenderConfig()
        stages = tuple(config.stages if stages is None else stages)
        if not stages:
            raise ValueError("RenderedSource: stages must not be empty")
        for stage in stages:
            synthetic.check_stage(stage)
        check_int("n_per_stage", n_per_stage, minimum=1)
        check_int("seed", seed, minimum=0)
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
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"RenderedSource index {index} out of range [0, {len(self)})")
        label, render_index = index % len(self.stages), index // len(self.stages)
        stage = self.stages[label]
        image, scene = synthetic.render_scene(stage, render_index, self.seed, self.render_config)
        if self.encoding is not None:
            image = encode_image(image, self.encoding)
        return {"image": image, "label": label, "stage": stage, "render_index": render_index,
                "scene": scene.to_json()}

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


class IndexedRecords:
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
        return f"IndexedRecords({self.source!r})"
