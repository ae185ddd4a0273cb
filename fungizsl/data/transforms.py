"""Grain transforms of the input pipeline: decode a record, augment (training) or resize (eval).

They are top-level picklable classes because Grain worker processes unpickle them. The image
operations themselves live in :mod:`fungizsl.data.augment`.
"""

from __future__ import annotations

import grain
import numpy as np

from fungizsl.data import augment as aug
from fungizsl.data.records import describe_record, record_image, record_label


class DecodeImage(grain.transforms.Map):
    """``{"record", "index"[, "valid"]}`` -> ``{"image": RGB PIL image or None, "label", "index"[, "valid"]}``."""

    def __init__(self, image_key: str = "image", label_key: str | None = None, source_name: str = "source",
                 draft_size: int | None = None):
        self.image_key = image_key
        self.label_key = label_key
        self.source_name = source_name
        self.draft_size = draft_size

    def map(self, element):
        record, index = element["record"], element["index"]
        out = {k: v for k, v in element.items() if k != "record"}
        if record is None:  # padding
            out.update(image=None, label=np.int32(-1), index=np.int32(-1))
            return out
        where = describe_record(record, index, self.source_name)
        out["image"] = record_image(record, self.image_key, where, self.draft_size)
        out["label"] = np.int32(record_label(record, self.label_key, where))
        out["index"] = np.int32(index)
        return out


class RandomAugment(grain.transforms.RandomMap):
    """Training transform (:func:`fungizsl.data.augment.augment_image`) with the element's generator."""

    def __init__(self, config: aug.AugmentConfig, image_size: int, normalization: aug.Normalization):
        self.config = config
        self.image_size = image_size
        self.normalization = normalization

    def random_map(self, element, rng: np.random.Generator):
        element = dict(element)
        element["image"] = aug.augment_image(element["image"], rng, self.config, self.image_size,
                                             self.normalization)
        return element


class EvalResize(grain.transforms.Map):
    """Deterministic resize + center crop + normalisation; padding elements become zeros."""

    def __init__(self, image_size: int, normalization: aug.Normalization, crop_fraction: float = 1.0,
                 interpolation: str = "bicubic"):
        self.image_size = image_size
        self.normalization = normalization
        self.crop_fraction = crop_fraction
        self.interpolation = interpolation

    def map(self, element):
        element = dict(element)
        if element["image"] is None:
            element["image"] = np.zeros((self.image_size, self.image_size, 3), np.float32)
        else:
            element["image"] = aug.eval_image(element["image"], self.image_size, self.normalization,
                                              self.crop_fraction, self.interpolation)
        return element
