"""Per-image captions in the Grain pipeline: each record's scene, written as text and tokenised.

The FungalZSL pipeline (:mod:`fungizsl.data.datasets`) pairs an image with a caption of its *class*
drawn from a pool. Rendered growth-stage records also carry their scene
(:class:`~fungizsl.data.scene_params.SceneParams` as JSON, under ``"scene"``: the
``fungal_growth_stages`` TFDS builder stores it, :class:`~fungizsl.data.sources.RenderedSource`
adds it), so :class:`SceneCaptions` can instead write a caption of the image itself with
:mod:`fungizsl.data.scene_captions`:

* in training, a fresh caption per element of the stream (Grain's per-element generator: the same
  image gets a different phrasing every epoch, reproducibly);
* in evaluation, one caption per image, fixed by the evaluation seed and the record index, so
  instance-level Recall@K pairs each test image with a text about that image alone.

Pass it as ``record_captions=`` to ``make_train_dataset`` / ``make_eval_dataset``; it runs on the
raw record, before decoding, and adds the tokenizer's arrays plus ``caption_id`` (the record index:
each caption belongs to one image).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grain
import numpy as np

from fungizsl.data import scene_captions, scene_phrases
from fungizsl.data.records import describe_record
from fungizsl.data.scene_params import SceneParams

SCENE_KEY = "scene"


def record_scene(record: Mapping, where: str, scene_key: str = SCENE_KEY) -> SceneParams:
    """The :class:`SceneParams` a record carries, or an error saying how to get records that have one."""
    if scene_key not in record:
        raise ValueError(f"{where} has no {scene_key!r} field (its fields: {sorted(record)}); per-image "
                         f"captions (config.data.captions='scene') need records of the synthetic renderer: "
                         f"rebuild with `fungizsl build fungal_growth_stages` (version 1.1.0 or later) or "
                         f"choose another caption source")
    try:
        return SceneParams.from_json(record[scene_key])
    except ValueError as err:
        raise ValueError(f"{where}: {err}") from None


class SceneCaptions(grain.transforms.RandomMap):
    """Adds a tokenised caption of the element's own scene (see the module docstring).

    ``tokenizer``: a tokenizer object of :mod:`fungizsl.tokenizers` (texts -> dict of int arrays);
    ``bank``: the phrase bank (``"train"``; ``"heldout"`` only for experiments).
    """

    def __init__(self, tokenizer, *, bank: str = "train", scene_key: str = SCENE_KEY, source_name: str = "source"):
        if bank not in scene_phrases.BANKS:
            raise ValueError(f"bank must be one of {scene_phrases.BANKS}, got {bank!r}")
        if not callable(tokenizer):
            raise ValueError(f"tokenizer must be a tokenizer object, got {type(tokenizer).__name__}")
        self.tokenizer = tokenizer
        self.bank = bank
        self.scene_key = scene_key
        self.source_name = source_name
        self.pad_tokens = {k: np.asarray(v[0], np.int32) for k, v in tokenizer([""]).items()}

    def random_map(self, element, rng: np.random.Generator):
        element = dict(element)
        record, index = element["record"], int(element["index"])
        if record is None:  # padding element of an evaluation pass
            element.update(self.pad_tokens)
            element["caption_id"] = np.int32(-1)
            return element
        scene = record_scene(record, describe_record(record, index, self.source_name), self.scene_key)
        text = scene_captions.caption(scene, rng, self.bank)
        element.update({k: np.asarray(v[0], np.int32) for k, v in self.tokenizer([text]).items()})
        element["caption_id"] = np.int32(index)
        return element


def sample_captions(source, n_records: int = 1500, draws: int = 2, seed: int = 0,
                    bank: str = "train") -> list[str]:
    """Captions of up to ``n_records`` evenly spaced records of ``source``, ``draws`` each: the corpus a
    from-scratch tokenizer is trained on when captions are per image."""
    size = len(source)
    positions = np.unique(np.linspace(0, size - 1, min(size, n_records)).round().astype(int))
    texts = []
    for position in positions:
        record = source[int(position)]
        scene = record_scene(record, describe_record(record, int(position), repr(source)))
        rng = np.random.default_rng([int(seed), int(position)])
        texts.extend(scene_captions.caption(scene, rng, bank) for _ in range(draws))
    return texts


def caption_examples(scenes: Sequence[SceneParams], seed: int = 0) -> list[str]:
    """One training-bank caption per scene (e.g. under a contact sheet), reproducible from ``seed``."""
    return [scene_captions.caption(scene, np.random.default_rng([int(seed), i])) for i, scene in enumerate(scenes)]
