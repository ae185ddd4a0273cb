"""Caption corpora: the FungalZSL paper's captions, hand-written templates and user JSONL files.

Every source yields :class:`Caption` records and offers ``by_class()`` (class -> list of texts),
so experiments can swap the text side of zero-shot classification the way the paper compared
caption sources::

    src = get_caption_source("fungalzsl_split", root="../shared/data/fungalzsl", split="train")
    texts = src.by_class()                      # {"spore": [...], "hyphae": [...], ...}

Two traps in the FungalZSL files, both handled at read time:

* ``temperature``. Each split entry carries a ``temperature`` field, but in the released data it
  is a constant per class (spore 300.0, hyphae 340.0, mycelium 365.0). It is a label in disguise:
  any model or feature that sees it can classify perfectly without looking at the image or the
  text. The readers therefore never put it into a :class:`Caption`; it is dropped as the JSON is
  parsed.
* The prompt prefix. Every description starts with the prompt its LLM was given (for example
  "Describe the early stage of fungal growth, focusing on spore formation. Spores are small
  reproductive units, ..."), identical for every description of a class. A text benchmark on the
  raw descriptions mostly measures that prefix. ``strip_prompt=True`` removes it: the prefix of
  each class is detected as the longest run of leading *sentences* that all descriptions of the
  class share (:func:`detect_prompt_prefix`), or given explicitly as ``prompts={class: text}``.
  A description that is nothing but the prompt (the real hyphae files have a few) has no text of
  its own left; such entries are dropped, with a warning, unless ``drop_empty=False``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import re
import warnings
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

__all__ = [
    "Caption",
    "CaptionSource",
    "CaptionStats",
    "FUNGALZSL_CLASSES",
    "GROWTH_STAGES",
    "FUNGALZSL_SPLITS",
    "TEMPLATES",
    "STAGE_PHRASES",
    "read_split_file",
    "read_generated_captions",
    "read_jsonl_captions",
    "iter_jsonl",
    "detect_prompt_prefix",
    "detect_prompt_prefixes",
    "strip_prefix",
    "strip_prompts",
    "split_sentences",
    "normalize_text",
    "deduplicate",
    "caption_stats",
    "group_by_class",
    "register_caption_source",
    "get_caption_source",
    "available_caption_sources",
    "FungalZSLSplitSource",
    "FungalZSLGeneratedSource",
    "TemplateSource",
    "JsonlSource",
    "ListSource",
    "SceneCaptionSource",
    "SceneHeldoutPromptSource",
]

#: The three classes of the FungalZSL data, in the paper's order.
FUNGALZSL_CLASSES: tuple[str, ...] = ("spore", "hyphae", "mycelium")
#: All growth stages this project knows: the paper's three plus two intermediate stages.
GROWTH_STAGES: tuple[str, ...] = (
    "spore",
    "germinating_spore",
    "hyphae",
    "sporulating_hyphae",
    "mycelium",
)
#: Split name -> file name inside a FungalZSL folder.
FUNGALZSL_SPLITS: dict[str, str] = {
    "train": "train_data.json",
    "val": "val_data.json",
    "test": "test_data.json",
}
_SPLIT_ALIASES = {"validation": "val", "valid": "val", "dev": "val"}
GENERATED_FILE = "generated_captions.json"


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


# --------------------------------------------------------------------------------------------
# Readers


def _load_json_list(path: str | os.PathLike) -> tuple[pathlib.Path, list]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: caption file not found")
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: malformed JSON (line {e.lineno}, column {e.colno}: {e.msg})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of entries, got {type(data).__name__}")
    return path, data


def _field(path, index: int, entry, name: str, *, classes: Sequence[str] | None = None) -> str:
    where = f"{path}: entry {index}"
    if not isinstance(entry, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(entry).__name__}")
    if name not in entry:
        raise ValueError(f"{where}: missing field {name!r}")
    value = entry[name]
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
    if not value.strip():
        raise ValueError(f"{where}: field {name!r} is blank")
    if classes is not None and value not in classes:
        raise ValueError(f"{where}: field {name!r} has unknown class {value!r} (known: {', '.join(classes)})")
    return value


def _finish(captions: list[Caption], path, *, strip_prompt: bool, prompts, min_fraction,
            drop_empty) -> list[Caption]:
    if strip_prompt or prompts is not None:
        captions = strip_prompts(captions, prompts=prompts, min_fraction=min_fraction,
                                 drop_empty=drop_empty, origin=str(path), _stacklevel=4)
    return captions


def read_split_file(path: str | os.PathLike, *, strip_prompt: bool = False,
                    prompts: Mapping[str, str] | None = None, min_fraction: float = 1.0,
                    drop_empty: bool = True, classes: Sequence[str] | None = FUNGALZSL_CLASSES,
                    source: str | None = None) -> list[Caption]:
    """Read a FungalZSL split file (``train_data.json`` and co.): a JSON list of
    ``{image_path, class_label, description, temperature}``.

    ``temperature`` is dropped here on purpose (it is constant per class: a leaked label; see the
    module docstring). ``strip_prompt`` removes each class's prompt prefix, detected per class
    (sentences shared by at least ``min_fraction`` of the class) unless ``prompts`` gives it;
    passing ``prompts`` implies stripping. ``classes`` is the set of allowed class labels
    (None: any). Raises ValueError naming the file, the entry index and the field on bad input.
    """
    path, data = _load_json_list(path)
    source = source or f"fungalzsl:{path.stem}"
    captions = []
    for i, entry in enumerate(data):
        cls = _field(path, i, entry, "class_label", classes=classes)
        text = _field(path, i, entry, "description")
        image = _field(path, i, entry, "image_path")
        # entry["temperature"] is deliberately never read: it encodes the class.
        captions.append(Caption(class_name=cls, text=text.strip(), source=source, image_path=image))
    return _finish(captions, path, strip_prompt=strip_prompt, prompts=prompts,
                   min_fraction=min_fraction, drop_empty=drop_empty)


def read_generated_captions(path: str | os.PathLike, *, strip_prompt: bool = False,
                            prompts: Mapping[str, str] | None = None, min_fraction: float = 1.0,
                            drop_empty: bool = True,
                            classes: Sequence[str] | None = FUNGALZSL_CLASSES,
                            source: str = "fungalzsl:generated") -> list[Caption]:
    """Read ``generated_captions.json``: a JSON list of ``{description, class_label}``.

    Options as for :func:`read_split_file`.
    """
    path, data = _load_json_list(path)
    captions = []
    for i, entry in enumerate(data):
        cls = _field(path, i, entry, "class_label", classes=classes)
        text = _field(path, i, entry, "description")
        captions.append(Caption(class_name=cls, text=text.strip(), source=source))
    return _finish(captions, path, strip_prompt=strip_prompt, prompts=prompts,
                   min_fraction=min_fraction, drop_empty=drop_empty)


def iter_jsonl(path: str | os.PathLike, *, allow_truncated_tail: bool = True
               ) -> Iterator[tuple[int, dict]]:
    """Yield ``(line_number, object)`` for each non-blank line of a JSONL file (1-based numbers).

    A last line that has no newline and is not valid JSON is what an interrupted writer leaves
    behind; with ``allow_truncated_tail`` it is skipped with a warning. Any other bad line raises
    ValueError naming the file and line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: JSONL file not found")
    with open(path, "rb") as f:
        raw = f.read()
    lines = raw.split(b"\n")
    complete_tail = raw.endswith(b"\n")
    for number, line in enumerate(lines, start=1):
        is_tail = number == len(lines)
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            if is_tail and not complete_tail and allow_truncated_tail:
                warnings.warn(f"{path}: line {number}: ignoring truncated last line", stacklevel=2)
                return
            raise ValueError(f"{path}: line {number}: malformed JSON ({e})") from e
        if not isinstance(obj, dict):
            raise ValueError(f"{path}: line {number}: expected a JSON object, got {type(obj).__name__}")
        yield number, obj


def read_jsonl_captions(path: str | os.PathLike, *, classes: Sequence[str] | None = None,
                        source: str | None = None, allow_truncated_tail: bool = True
                        ) -> list[Caption]:
    """Read a JSONL file of ``{"class": ..., "text": ...}`` lines (extra keys are ignored).

    ``classes`` restricts the allowed class names (None: any non-blank name). Errors name the line.
    """
    path = pathlib.Path(path)
    source = source or f"jsonl:{path.name}"
    out = []
    for number, obj in iter_jsonl(path, allow_truncated_tail=allow_truncated_tail):
        where = f"{path}: line {number}"
        for key in ("class", "text"):
            if key not in obj:
                raise ValueError(f"{where}: missing field {key!r}")
            if not isinstance(obj[key], str) or not obj[key].strip():
                raise ValueError(f"{where}: field {key!r} must be a non-blank string")
        cls = obj["class"].strip()
        if classes is not None and cls not in classes:
            raise ValueError(f"{where}: field 'class' has unknown class {cls!r} (known: {', '.join(classes)})")
        out.append(Caption(class_name=cls, text=obj["text"].strip(), source=source,
                           image_path=obj.get("image_path") if isinstance(obj.get("image_path"), str) else None))
    return out


# --------------------------------------------------------------------------------------------
# Hand-written templates

#: Prompt templates; ``{}`` takes a class phrase (a noun phrase).
TEMPLATES: tuple[str, ...] = (
    "a microscopy image of fungal {}.",
    "a micrograph showing {}.",
    "a photo of {} under a light microscope.",
    "a close-up microscope view of {}.",
    "a stained slide with {}.",
    "a bright-field image of {}.",
    "a high-magnification image of {}.",
    "a synthetic rendering of {}.",
    "a laboratory culture image of {}.",
    "an illustration of {} at the microscopic scale.",
)

#: Descriptive noun phrases per growth stage, written for this project.
STAGE_PHRASES: dict[str, tuple[str, ...]] = {
    "spore": (
        "spores",
        "small round spores scattered apart",
        "isolated spherical spores without filaments",
        "dispersed oval reproductive cells",
    ),
    "germinating_spore": (
        "germinating spores",
        "swollen spores putting out short germ tubes",
        "round spores with a single short outgrowth",
        "spores beginning to sprout thin tubes",
    ),
    "hyphae": (
        "hyphae",
        "thin branching filaments",
        "a sparse network of thread-like hyphae",
        "elongated tubular filaments that fork a few times",
    ),
    "sporulating_hyphae": (
        "sporulating hyphae",
        "hyphae bearing clusters of spores at their tips",
        "filaments carrying spore-producing heads",
        "branched hyphae ending in chains of spores",
    ),
    "mycelium": (
        "mycelium",
        "a dense mat of interwoven hyphae",
        "a thick, highly branched filament network",
        "a mature mycelial web covering the field",
    ),
}


# --------------------------------------------------------------------------------------------
# Sources and their registry


class CaptionSource:
    """A named collection of captions. Subclasses implement :meth:`_load`; results are cached."""

    name: str = "source"

    def __init__(self) -> None:
        self._cache: list[Caption] | None = None

    def _load(self) -> list[Caption]:
        raise NotImplementedError

    def captions(self) -> list[Caption]:
        if self._cache is None:
            self._cache = list(self._load())
        return list(self._cache)

    def __iter__(self) -> Iterator[Caption]:
        return iter(self.captions())

    def __len__(self) -> int:
        return len(self.captions())

    def by_class(self) -> dict[str, list[str]]:
        """class -> list of caption texts."""
        return group_by_class(self.captions())

    def classes(self) -> list[str]:
        return list(self.by_class())

    def stats(self) -> dict[str, CaptionStats]:
        return caption_stats(self.captions())

    def deduplicated(self) -> "ListSource":
        return ListSource(deduplicate(self.captions()), name=f"{self.name}+dedup")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: dict[str, Callable[..., CaptionSource]] = {}


def register_caption_source(name: str) -> Callable:
    """Decorator: register a CaptionSource factory (class or function) under ``name``."""

    def deco(factory):
        if name in _REGISTRY:
            raise ValueError(f"caption source {name!r} is already registered")
        _REGISTRY[name] = factory
        return factory

    return deco


def available_caption_sources() -> list[str]:
    return sorted(_REGISTRY)


def get_caption_source(name: str, **kwargs) -> CaptionSource:
    """Build the caption source registered as ``name`` with ``kwargs``."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"unknown caption source {name!r}; available: {', '.join(available_caption_sources())}"
        ) from None
    return factory(**kwargs)


@register_caption_source("fungalzsl_split")
class FungalZSLSplitSource(CaptionSource):
    """The paper's per-image captions of one split. ``root`` is the FungalZSL folder.

    ``strip_prompt`` defaults to True here (unlike the raw reader): a source feeds models.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train", *, strip_prompt: bool = True,
                 prompts: Mapping[str, str] | None = None, min_fraction: float = 1.0,
                 drop_empty: bool = True) -> None:
        super().__init__()
        split = _SPLIT_ALIASES.get(split, split)
        if split not in FUNGALZSL_SPLITS:
            raise ValueError(f"unknown FungalZSL split {split!r}; expected one of {', '.join(FUNGALZSL_SPLITS)}")
        self.path = pathlib.Path(root) / FUNGALZSL_SPLITS[split]
        self.split = split
        self.name = f"fungalzsl_split:{split}"
        self._kw = dict(strip_prompt=strip_prompt, prompts=prompts, min_fraction=min_fraction,
                        drop_empty=drop_empty)

    def _load(self) -> list[Caption]:
        return read_split_file(self.path, source=self.name, **self._kw)


@register_caption_source("fungalzsl_generated")
class FungalZSLGeneratedSource(CaptionSource):
    """The paper's ``generated_captions.json``; ``path`` is the file or the FungalZSL folder."""

    name = "fungalzsl_generated"

    def __init__(self, path: str | os.PathLike, *, strip_prompt: bool = True,
                 prompts: Mapping[str, str] | None = None, min_fraction: float = 1.0,
                 drop_empty: bool = True) -> None:
        super().__init__()
        path = pathlib.Path(path)
        self.path = path / GENERATED_FILE if path.is_dir() else path
        self._kw = dict(strip_prompt=strip_prompt, prompts=prompts, min_fraction=min_fraction,
                        drop_empty=drop_empty)

    def _load(self) -> list[Caption]:
        return read_generated_captions(self.path, source=self.name, **self._kw)


@register_caption_source("templates")
class TemplateSource(CaptionSource):
    """Hand-written captions: every template filled with every phrase of each class.

    ``classes`` defaults to the paper's three; any of :data:`GROWTH_STAGES` may be asked for, and
    ``phrases``/``templates`` may replace the built-in ones (e.g. for new classes).
    """

    name = "templates"

    def __init__(self, classes: Sequence[str] | str | None = None,
                 templates: Sequence[str] | None = None,
                 phrases: Mapping[str, Sequence[str]] | None = None) -> None:
        super().__init__()
        if isinstance(classes, str):
            classes = [c.strip() for c in classes.split(",") if c.strip()]
        self.phrases = {k: tuple(v) for k, v in (phrases or STAGE_PHRASES).items()}
        self.class_names = list(classes) if classes is not None else list(FUNGALZSL_CLASSES)
        unknown = [c for c in self.class_names if c not in self.phrases]
        if unknown:
            raise ValueError(f"templates: no phrases for class(es) {', '.join(unknown)}; "
                             f"known: {', '.join(self.phrases)}")
        self.templates = tuple(templates or TEMPLATES)
        for t in self.templates:
            if t.count("{}") != 1:
                raise ValueError(f"templates: template {t!r} must contain exactly one '{{}}'")

    def _load(self) -> list[Caption]:
        return [
            Caption(class_name=c, text=t.format(p), source=self.name)
            for c in self.class_names
            for p in self.phrases[c]
            for t in self.templates
        ]


@register_caption_source("jsonl")
class JsonlSource(CaptionSource):
    """Any JSONL file of ``{"class": ..., "text": ...}`` lines (e.g. `fungizsl captions generate`)."""

    def __init__(self, path: str | os.PathLike, *, classes: Sequence[str] | None = None,
                 dedup: bool = False) -> None:
        super().__init__()
        self.path = pathlib.Path(path)
        self.name = f"jsonl:{self.path.name}"
        self.allowed = classes
        self.dedup = dedup

    def _load(self) -> list[Caption]:
        caps = read_jsonl_captions(self.path, classes=self.allowed, source=self.name)
        return deduplicate(caps) if self.dedup else caps


@register_caption_source("scene")
class SceneCaptionSource(CaptionSource):
    """Captions written from each rendered image's own scene (:mod:`fungizsl.data.scene_captions`).

    The source is *per image*: :meth:`caption` describes one
    :class:`~fungizsl.data.scene_params.SceneParams`, and the pipeline draws one per record
    (:class:`~fungizsl.data.scene_pipeline.SceneCaptions`). ``by_class()`` gives, for code that
    wants a class pool, ``per_class`` captions of each class's typical scenes in the same phrase bank.
    """

    name = "scene"
    per_image = True

    def __init__(self, classes: Sequence[str] | str | None = None, *, bank: str = "train",
                 per_class: int = 24, seed: int = 0) -> None:
        super().__init__()
        from fungizsl.data import scene_captions  # noqa: PLC0415 (numpy only; keeps this module light)

        if bank not in scene_captions.BANKS:
            raise ValueError(f"scene: bank must be one of {scene_captions.BANKS}, got {bank!r}")
        self._grammar = scene_captions
        self.class_names = _class_list(classes)
        self.bank, self.per_class, self.seed = bank, int(per_class), int(seed)

    def caption(self, scene, rng) -> str:
        """One caption of ``scene`` (a SceneParams or its JSON) drawn with the generator ``rng``."""
        from fungizsl.data.scene_params import SceneParams  # noqa: PLC0415

        if not isinstance(scene, SceneParams):
            scene = SceneParams.from_json(scene)
        return self._grammar.caption(scene, rng, self.bank)

    def _load(self) -> list[Caption]:
        import numpy as np  # noqa: PLC0415

        out = []
        for c in self.class_names:
            rng = np.random.default_rng([self.seed, zlib.crc32(c.encode())])
            scenes = self._grammar.typical_scenes(c)
            out += [Caption(c, self._grammar.caption(scenes[i % len(scenes)], rng, self.bank), self.name)
                    for i in range(self.per_class)]
        return out


@register_caption_source("scene_heldout")
class SceneHeldoutPromptSource(CaptionSource):
    """Zero-shot class prompts written only with the held-out phrase bank of the scene grammar
    (:func:`fungizsl.data.scene_captions.class_prompts`): texts a model trained on ``scene`` captions
    never saw."""

    name = "scene_heldout"

    def __init__(self, classes: Sequence[str] | str | None = None, *, per_class: int = 24, seed: int = 0) -> None:
        super().__init__()
        self.class_names = _class_list(classes)
        self.per_class, self.seed = int(per_class), int(seed)

    def _load(self) -> list[Caption]:
        from fungizsl.data.scene_captions import class_prompts  # noqa: PLC0415

        return [Caption(c, t, self.name) for c in self.class_names for t in class_prompts(c, self.per_class, self.seed)]


def _class_list(classes) -> list[str]:
    if isinstance(classes, str):
        classes = [c.strip() for c in classes.split(",") if c.strip()]
    names = list(classes) if classes is not None else list(FUNGALZSL_CLASSES)
    unknown = [c for c in names if c not in GROWTH_STAGES]
    if unknown:
        raise ValueError(f"scene captions: unknown class(es) {', '.join(unknown)}; known: {', '.join(GROWTH_STAGES)}")
    return names


class ListSource(CaptionSource):
    """Captions already in memory."""

    def __init__(self, captions: Iterable[Caption], name: str = "list") -> None:
        super().__init__()
        self._cache = list(captions)
        self.name = name

    def _load(self) -> list[Caption]:
        return list(self._cache or [])
