"""Shifted test sets: how a FungalZSL model does on renders it was never trained on.

The model trains on the ``realistic`` renderer at one resolution and one magnification range.
These conditions render the *test* scenes again with one thing moved outside that distribution,
for evaluation only (issue 10, point 4: robustness beyond one renderer):

* ``paper``: the paper's look (white background, line art, colour tied to the stage);
* ``gray``: the realistic renders in grayscale (colour carries no label, but the model may still
  lean on it);
* ``zoom_out`` / ``zoom_in``: realistic renders with the per-image magnification drawn below /
  above the training range (0.6-1.7 by default);
* ``size<N>`` (e.g. ``size64``, ``size128``): realistic renders drawn at N px, resized to the
  model's input size by the evaluation pipeline (as a photo of another resolution would be).

A condition's split is named ``test_<condition>``. Its images use the test split's seed, so every
condition shows the same scenes (stage, index) as the others, changed only as the condition says.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from fungizsl.data import synthetic
from fungizsl.data.sources import RenderedSource

SPLIT_PREFIX = "test_"
CONDITIONS = ("paper", "gray", "zoom_out", "zoom_in", "size64", "size128")
ZOOM_OUT = (0.3, 0.55)  # below the training range (0.6, 1.7)
ZOOM_IN = (1.9, 3.2)  # above it


def is_robustness_split(split: str) -> bool:
    return split.startswith(SPLIT_PREFIX)


def condition_of(split: str) -> str:
    if not is_robustness_split(split):
        raise ValueError(f"{split!r} is not a robustness split (names look like 'test_paper', 'test_size64')")
    return check_condition(split[len(SPLIT_PREFIX):])


def check_condition(name: str) -> str:
    if name in ("paper", "gray", "zoom_out", "zoom_in") or re.fullmatch(r"size\d+", name):
        if name.startswith("size") and int(name[4:]) < 16:
            raise ValueError(f"robustness condition {name!r}: images must be at least 16 px")
        return name
    raise ValueError(f"unknown robustness condition {name!r}: use paper, gray, zoom_out, zoom_in or size<N> "
                     f"(e.g. size64)")


def render_config(condition: str, base: synthetic.RenderConfig) -> synthetic.RenderConfig:
    """The renderer settings of `condition`, from the training renderer's `base` settings."""
    condition = check_condition(condition)
    if condition == "paper":
        return dataclasses.replace(base, preset="paper")
    if condition == "zoom_out":
        return dataclasses.replace(base, preset="realistic", magnification=ZOOM_OUT)
    if condition == "zoom_in":
        return dataclasses.replace(base, preset="realistic", magnification=ZOOM_IN)
    if condition.startswith("size"):
        return dataclasses.replace(base, preset="realistic", image_size=int(condition[4:]))
    return dataclasses.replace(base, preset="realistic")  # gray: the same renders, colour removed


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> the same image in grayscale (ITU-R 601 luma), still 3 channels."""
    luma = np.asarray(image, np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


class ShiftedSource:
    """Test scenes rendered under one robustness condition; records as :class:`RenderedSource`'s."""

    def __init__(self, condition: str, stages, n_per_stage: int, seed: int, base: synthetic.RenderConfig):
        self.condition = check_condition(condition)
        self._source = RenderedSource(tuple(stages), n_per_stage, seed=seed,
                                      render_config=render_config(condition, base))
        self.class_names = self._source.class_names

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        record = dict(self._source[index])
        if self.condition == "gray":
            record["image"] = to_gray(record["image"])
        return record

    def __repr__(self) -> str:
        return f"ShiftedSource({self.condition!r}, {len(self)} records)"
