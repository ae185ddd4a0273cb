"""Captions in the input pipeline: every caption tokenised once, one drawn per example.

FungalZSL (Rani, Arroyo, Durdevic 2025) pairs each training image with a description of its
growth stage; :class:`SampleCaption` draws one of the class's captions per example from the
example's own random generator, so the draw depends only on the seed and the stream position.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import grain
import numpy as np

from fungizsl.tokenizers import load_tokenizer


@dataclasses.dataclass(frozen=True)
class CaptionTable:
    """Every caption of every class, tokenised once (in the parent process).

    ``tokens[name]`` is int32 [n_captions, length] for each tokenizer output (``input_ids``, and
    ``attention_mask``/``token_type_ids`` for BERT); class ``c`` owns rows ``offsets[c]`` to
    ``offsets[c] + counts[c] - 1``, and ``texts[row]`` is the caption of a row. ``pad_tokens`` is the
    tokenised empty text, used for padding elements.
    """

    class_names: tuple[str, ...]
    texts: tuple[str, ...]
    offsets: np.ndarray
    counts: np.ndarray
    tokens: dict[str, np.ndarray]
    pad_tokens: dict[str, np.ndarray]

    def rows_of(self, label: int) -> range:
        return range(int(self.offsets[label]), int(self.offsets[label] + self.counts[label]))


def build_caption_table(captions_by_class, class_names: Sequence[str], tokenizer,
                        context_length: int | None = None) -> CaptionTable:
    """Tokenise ``captions_by_class`` (dict class -> texts, or a caption source with ``by_class()``)
    for the classes ``class_names`` (label i = class_names[i]) with ``tokenizer``: a tokenizer object
    from :mod:`fungizsl.tokenizers` (any callable texts -> dict of int arrays) or a folder for
    :func:`fungizsl.tokenizers.load_tokenizer`."""
    if hasattr(captions_by_class, "by_class"):
        captions_by_class = captions_by_class.by_class()
    if not isinstance(captions_by_class, Mapping):
        raise ValueError(f"captions_by_class must map class names to lists of texts, got "
                         f"{type(captions_by_class).__name__}")
    class_names = tuple(class_names)
    if not class_names:
        raise ValueError("class_names must not be empty")
    missing = [c for c in class_names if not captions_by_class.get(c)]
    if missing:
        raise ValueError(f"captions_by_class has no captions for class(es) {', '.join(missing)} of class_names; "
                         f"it has {', '.join(sorted(captions_by_class)) or 'none'}")
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = load_tokenizer(tokenizer, length=context_length)
    elif context_length is not None:
        raise ValueError("context_length applies when tokenizer is a folder; a tokenizer object has its own")
    if not callable(tokenizer):
        raise ValueError(f"tokenizer must be a tokenizer object or a folder, got {type(tokenizer).__name__}")
    texts, counts = [], []
    for name in class_names:
        class_texts = list(captions_by_class[name])
        for i, text in enumerate(class_texts):
            if not isinstance(text, str):
                raise ValueError(f"caption {i} of class {name!r} is a {type(text).__name__}, not a string")
        texts.extend(class_texts)
        counts.append(len(class_texts))
    chunks = [tokenizer(texts[i:i + 4096]) for i in range(0, len(texts), 4096)]
    tokens = {k: np.concatenate([np.asarray(c[k], np.int32) for c in chunks]) for k in chunks[0]}
    pad_tokens = {k: np.asarray(v[0], np.int32) for k, v in tokenizer([""]).items()}
    counts = np.asarray(counts, np.int64)
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    return CaptionTable(class_names, tuple(texts), offsets, counts, tokens, pad_tokens)


class SampleCaption(grain.transforms.RandomMap):
    """Adds a caption of the element's class: its token arrays and ``caption_id`` (row of the table)."""

    def __init__(self, table: CaptionTable):
        self.table = table

    def random_map(self, element, rng: np.random.Generator):
        element = dict(element)
        label = int(element["label"])
        table = self.table
        if element["index"] < 0:  # padding element of an evaluation pass
            element.update(table.pad_tokens)
            element["caption_id"] = np.int32(-1)
            return element
        if not 0 <= label < len(table.class_names):
            raise ValueError(f"record {int(element['index'])} has label {label}, outside the "
                             f"{len(table.class_names)} classes of class_names {list(table.class_names)}")
        row = int(table.offsets[label] + rng.integers(table.counts[label]))
        for key, values in table.tokens.items():
            element[key] = values[row]
        element["caption_id"] = np.int32(row)
        return element


def caption_table_for(source, captions_by_class, class_names, tokenizer, context_length):
    if captions_by_class is None:
        if tokenizer is not None:
            raise ValueError("tokenizer was given without captions_by_class; give both or neither")
        return None
    if tokenizer is None:
        raise ValueError("captions_by_class needs a tokenizer (a tokenizer object or a tokenizer folder)")
    class_names = class_names if class_names is not None else getattr(source, "class_names", None)
    if class_names is None:
        raise ValueError("class_names (label i -> class name) is required with captions_by_class when the "
                         "source does not define class_names")
    return build_caption_table(captions_by_class, class_names, tokenizer, context_length)
