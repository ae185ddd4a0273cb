"""Shifted test sets: how a FungalZSL model does on renders it was never trained on.

The model trains on the ``realistic`` renderer at one resolution and one magnification range.
These conditions render the *test* scenes again with one thing moved outside that distribution,
for evaluation only (issue 10, point 4: robustness beyond one renderer; issue 21: beyond the
project's own renderer):

* ``paper``: the FungalZSL authors' own generator (the ``paper`` preset of
  :mod:`fungizsl.data.synthetic`, :mod:`fungizsl.data.fungalzsl_generator`): ten small growth
  centres on white, colour tied to the stage;
* ``colony``: the project's earlier reading of the paper (one colony filling the field);
* ``unseen``: an independent generator written apart from the training renderer
  (:mod:`fungizsl.data.unseen_renderer`: other drawing code, growth, spore shapes and styles);
  its number is the summary's "unseen generator" one. Every shift below applies to it as well:
  ``unseen_gray``, ``unseen_zoom_out``, ``unseen_zoom_in``, ``unseen_size<N>``;
* ``gray``: the realistic renders in grayscale (colour carries no label, but the model may still
  lean on it);
* ``zoom_out`` / ``zoom_in``: realistic renders with the per-image magnification drawn below /
  above the plain renders' range (0.6-1.7). The main job's randomised training renders
  (``synthetic.RANDOMISED``, 0.3-3.2) cover both magnifications; these sets stay a test of the
  plain look at them (no fields, no white backgrounds) rather than of an unseen scale;
* ``size<N>`` (e.g. ``size64``, ``size128``): realistic renders drawn at N px, resized to the
  model's input size by the evaluation pipeline (as a photo of another resolution would be).

A condition's split is named ``test_<condition>``. Its images use the test split's seed, so every
condition of one generator shows the same scenes (stage, index) as the others of that generator,
changed only as the condition says. This module is the only one that imports the unseen generator.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

from fungizsl.data import synthetic, unseen_renderer
from fungizsl.data.sources import RenderedSource

SPLIT_PREFIX = "test_"
UNSEEN = "unseen"
SHIFTS = ("gray", "zoom_out", "zoom_in")  # and size<N>: apply to the training renderer or the unseen one
CONDITIONS = ("paper", "gray", "zoom_out", "zoom_in", "size64", "size128", "unseen", "unseen_gray",
              "unseen_zoom_out", "unseen_zoom_in", "unseen_size64", "unseen_size128", "colony")
ZOOM_OUT = (0.3, 0.55)  # below the plain renders' range synthetic.MAGNIFICATION (inside RANDOMISED's)
ZOOM_IN = (1.9, 3.2)  # above it


def is_robustness_split(split: str) -> bool:
    return split.startswith(SPLIT_PREFIX)


def condition_of(split: str) -> str:
    if not is_robustness_split(split):
        raise ValueError(f"{split!r} is not a robustness split (names look like 'test_paper', 'test_size64')")
    return check_condition(split[len(SPLIT_PREFIX):])


def check_condition(name: str) -> str:
    shift = name[len(UNSEEN) + 1:] if name.startswith(UNSEEN + "_") else name
    if name in ("paper", "colony", UNSEEN) or shift in SHIFTS or re.fullmatch(r"size\d+", shift):
        if shift.startswith("size") and int(shift[4:]) < 16:
            raise ValueError(f"robustness condition {name!r}: images must be at least 16 px")
        return name
    raise ValueError(f"unknown robustness condition {name!r}: use paper, colony, gray, zoom_out, zoom_in, "
                     f"size<N> (e.g. size64), unseen, or unseen_<shift> (e.g. unseen_gray, unseen_size64)")


def is_unseen(condition: str) -> bool:
    """Whether ``condition`` is drawn by the independent, evaluation-only generator."""
    return condition == UNSEEN or condition.startswith(UNSEEN + "_")


def render_config(condition: str, base: synthetic.RenderConfig) -> synthetic.RenderConfig:
    """The training renderer's settings of `condition`, from its `base` settings."""
    condition = check_condition(condition)
    if is_unseen(condition):
        raise ValueError(f"robustness condition {condition!r} is drawn by the unseen generator: use unseen_config")
    if condition in ("paper", "colony"):
        return dataclasses.replace(base, preset=condition)
    if condition == "zoom_out":
        return dataclasses.replace(base, preset="realistic", magnification=ZOOM_OUT)
    if condition == "zoom_in":
        return dataclasses.replace(base, preset="realistic", magnification=ZOOM_IN)
    if condition.startswith("size"):
        return dataclasses.replace(base, preset="realistic", image_size=int(condition[4:]))
    return dataclasses.replace(base, preset="realistic")  # gray: the same renders, colour removed


def unseen_config(condition: str, base: synthetic.RenderConfig) -> unseen_renderer.UnseenConfig:
    """The unseen generator's settings of an ``unseen`` / ``unseen_<shift>`` condition (image size and
    stages from the training renderer's `base`)."""
    condition = check_condition(condition)
    if not is_unseen(condition):
        raise ValueError(f"robustness condition {condition!r} is not drawn by the unseen generator")
    shift = condition[len(UNSEEN) + 1:]
    config = unseen_renderer.UnseenConfig(image_size=base.image_size, stages=base.stages)
    if shift == "zoom_out":
        return dataclasses.replace(config, magnification=ZOOM_OUT)
    if shift == "zoom_in":
        return dataclasses.replace(config, magnification=ZOOM_IN)
    if shift.startswith("size"):
        return dataclasses.replace(config, image_size=int(shift[4:]))
    return config  # unseen, unseen_gray


def to_gray(image: np.ndarray) -> np.ndarray:
    """uint8 [H, W, 3] -> the same image in grayscale (ITU-R 601 luma), still 3 channels."""
    luma = np.asarray(image, np.float32) @ np.asarray([0.299, 0.587, 0.114], np.float32)
    return np.repeat(np.clip(np.rint(luma), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)


class ShiftedSource:
    """Test scenes rendered under one robustness condition; records as :class:`RenderedSource`'s."""

    def __init__(self, condition: str, stages, n_per_stage: int, seed: int, base: synthetic.RenderConfig):
        self.condition = check_condition(condition)
        if is_unseen(condition):
            self._source = unseen_renderer.UnseenSource(tuple(stages), n_per_stage, seed,
                                                        unseen_config(condition, base))
        else:
            self._source = RenderedSource(tuple(stages), n_per_stage, seed=seed,
                                          render_config=render_config(condition, base))
        self.class_names = self._source.class_names

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int):
        record = dict(self._source[index])
        if self.condition in ("gray", UNSEEN + "_gray"):
            record["image"] = to_gray(record["image"])
        return record

    def __repr__(self) -> str:
        return f"ShiftedSource({self.condition!r}, {len(self)} records)"
