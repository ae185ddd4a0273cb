"""Caption text handling: the :class:`Caption` record and what is done to caption texts.

Pure functions over texts and :class:`Caption` lists, shared by every caption reader and source:
normalising a text into its de-duplication key, splitting it into sentences, de-duplicating,
per-class statistics, and removing the prompt prefix.

The prompt prefix is what an LLM-written description repeats from the prompt it was given (for
example "Describe the early stage of fungal growth, focusing on spore formation. Spores are small
reproductive units, ..."), identical for every description of a class. A text benchmark on the
raw descriptions mostly measures that prefix. :func:`strip_prompts` removes it: the prefix of each
class is detected as the longest run of leading *sentences* that all descriptions of the class
share (:func:`detect_prompt_prefix`), or given explicitly as ``prompts={class: text}``. A
description that is nothing but the prompt has no text of its own left; such entries are
dropped, with a warning, unless ``drop_empty=False``.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence

__all__ = [
    "Caption",
    "CaptionStats",
    "normalize_text",
    "split_sentences",
    "strip_prefix",
    "detect_prompt_prefix",
    "detect_prompt_prefixes",
    "group_by_class",
    "strip_prompts",
    "deduplicate",
    "caption_stats",
]

# --------------------------------------------------------------------------------------------
# Records


@dataclasses.dataclass(frozen=True)
class Caption:
    """One caption: the class it describes, its text, where it came from, and its image if any."""

    class_name: str
    text: str
    source: str
    image_path: str | None = None


@dataclasses.dataclass(frozen=True)
class CaptionStats:
    """Per-class corpus statistics: ``count`` captions, ``unique`` after de-duplication."""

    count: int
    unique: int
    mean_words: float


# --------------------------------------------------------------------------------------------
# Text helpers

_WS = re.compile(r"\s+")
# A sentence ends at . ! or ?, optionally followed by closing quotes/brackets, then whitespace.
_SENTENCE_END = re.compile(r"[.!?]+[\"')\]]*(?=\s|$)")


def normalize_text(text: str) -> str:
    """The de-duplication key of a text: case-folded, whitespace collapsed, ends trimmed."""
    return _WS.sub(" ", text).strip().casefold()


def _sentence_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of each sentence of ``text``, surrounding whitespace excluded; a tail without
    an end mark counts as one sentence."""
    spans = []
    pos = 0
    n = len(text)
    while pos < n:
        while pos < n and text[pos].isspace():
            pos += 1
        if pos >= n:
            break
        m = _SENTENCE_END.search(text, pos)
        end = m.end() if m else len(text.rstrip())
        spans.append((pos, end))
        pos = end
    return spans


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after . ! ? followed by whitespace), whitespace-normalised."""
    return [_WS.sub(" ", text[s:e]) for s, e in _sentence_spans(text)]


def _match_prefix(text: str, prefix: str) -> int | None:
    """Index in ``text`` just past ``prefix`` if ``text`` starts with it, whitespace runs being
    interchangeable (leading whitespace ignored); None when it does not."""
    i = 0
    n = len(text)
    while i < n and text[i].isspace():
        i += 1
    p = prefix.strip()
    j = 0
    m = len(p)
    while j < m:
        if p[j].isspace():
            if i >= n or not text[i].isspace():
                return None
            while i < n and text[i].isspace():
                i += 1
            while j < m and p[j].isspace():
                j += 1
            continue
        if i >= n or text[i] != p[j]:
            return None
        i += 1
        j += 1
    # Cut only at a boundary: never in the middle of a word.
    if i < n and m and p[-1].isalnum() and text[i].isalnum():
        return None
    return i


def strip_prefix(text: str, prefix: str) -> str:
    """``text`` without ``prefix`` (whitespace-insensitive match), trimmed; unchanged if absent."""
    if not prefix or not prefix.strip():
        return text.strip()
    cut = _match_prefix(text, prefix)
    if cut is None:
        return text.strip()
    return text[cut:].strip()


def detect_prompt_prefix(texts: Sequence[str], *, min_fraction: float = 1.0) -> str:
    """The longest run of leading sentences that (at least ``min_fraction`` of) ``texts`` share.

    The comparison is per sentence, so the prefix always ends at a sentence boundary. Returns ""
    when there is no such prefix, when fewer than two texts share it, or when it would leave every
    text empty (all texts identical: nothing to tell prompt from description).
    """
    if not 0.0 < min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in (0, 1], got {min_fraction}")
    texts = list(texts)
    if len(texts) < 2:
        return ""
    needed = max(2, math.ceil(min_fraction * len(texts)))
    sentences = [split_sentences(t) for t in texts]
    shared: list[str] = []
    candidates = list(range(len(texts)))
    k = 0
    while True:
        counts = Counter(sentences[i][k] for i in candidates if len(sentences[i]) > k)
        if not counts:
            break
        sentence, count = counts.most_common(1)[0]
        if count < needed:
            break
        candidates = [i for i in candidates if len(sentences[i]) > k and sentences[i][k] == sentence]
        shared.append(sentence)
        k += 1
    if not shared:
        return ""
    # A "prefix" that is every text in full is no prefix at all.
    if all(len(s) == k for s in sentences):
        return ""
    return " ".join(shared)


def group_by_class(captions: Iterable[Caption]) -> dict[str, list[str]]:
    """class -> list of texts, classes in first-seen order."""
    out: dict[str, list[str]] = {}
    for c in captions:
        out.setdefault(c.class_name, []).append(c.text)
    return out


def detect_prompt_prefixes(captions: Iterable[Caption] | Mapping[str, Sequence[str]], *,
                           min_fraction: float = 1.0) -> dict[str, str]:
    """class -> detected prompt prefix ("" when none), from captions or a class -> texts map."""
    by_class = captions if isinstance(captions, Mapping) else group_by_class(captions)
    return {c: detect_prompt_prefix(texts, min_fraction=min_fraction) for c, texts in by_class.items()}


def strip_prompts(captions: Sequence[Caption], *, prompts: Mapping[str, str] | None = None,
                  min_fraction: float = 1.0, drop_empty: bool = True,
                  origin: str = "captions", _stacklevel: int = 2) -> list[Caption]:
    """Remove each class's prompt prefix from its captions.

    ``prompts`` maps class -> prompt text; classes it does not name get a detected prefix
    (:func:`detect_prompt_prefix`). A caption left empty is dropped with a warning naming
    ``origin`` (or kept as "" when ``drop_empty=False``).
    """
    prompts = dict(prompts or {})
    missing = {c.class_name for c in captions} - prompts.keys()
    if missing:
        detected = detect_prompt_prefixes(
            {k: v for k, v in group_by_class(captions).items() if k in missing},
            min_fraction=min_fraction,
        )
        prompts.update(detected)
    out = []
    dropped: Counter[str] = Counter()
    for c in captions:
        text = strip_prefix(c.text, prompts.get(c.class_name, ""))
        if not text and drop_empty:
            dropped[c.class_name] += 1
            continue
        out.append(dataclasses.replace(c, text=text))
    if dropped:
        detail = ", ".join(f"{k}: {v}" for k, v in sorted(dropped.items()))
        warnings.warn(
            f"{origin}: dropped {sum(dropped.values())} description(s) that were only their "
            f"class's prompt ({detail})",
            stacklevel=_stacklevel,
        )
    return out


def deduplicate(captions: Iterable[Caption], *, across_classes: bool = False) -> list[Caption]:
    """Keep the first caption of each normalised text (per class, or over all classes)."""
    seen: set = set()
    out = []
    for c in captions:
        key = normalize_text(c.text) if across_classes else (c.class_name, normalize_text(c.text))
        if key in seen:
            continue
        seen.add(key)
        out.append(c)
    return out


def caption_stats(captions: Iterable[Caption] | Mapping[str, Sequence[str]]) -> dict[str, CaptionStats]:
    """class -> :class:`CaptionStats` (captions, unique captions, mean words per caption)."""
    by_class = captions if isinstance(captions, Mapping) else group_by_class(captions)
    out = {}
    for cls, texts in by_class.items():
        texts = list(texts)
        words = [len(t.split()) for t in texts]
        out[cls] = CaptionStats(
            count=len(texts),
            unique=len({normalize_text(t) for t in texts}),
            mean_words=(sum(words) / len(words)) if words else 0.0,
        )
    return out
