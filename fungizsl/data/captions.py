"""Caption sources: named corpora of growth-stage captions, built by name from a registry.

The corpora are the FungalZSL paper's captions (:mod:`fungizsl.data.caption_files` reads them),
hand-written templates, user JSONL files and captions written from each rendered image's scene
(:mod:`fungizsl.data.scene_captions`). Every source yields
:class:`~fungizsl.data.caption_text.Caption` records and offers ``by_class()`` (class -> list of
texts), so experiments can swap the text side of zero-shot classification the way the paper
compared caption sources::

    src = get_caption_source("fungalzsl_split", root="/data/fungalzsl", split="train")
    texts = src.by_class()                      # {"spore": [...], "hyphae": [...], ...}

The FungalZSL sources strip each class's prompt prefix by default (``strip_prompt=True``; see
:mod:`fungizsl.data.caption_text`) and never pass the split files' ``temperature`` on (see
:mod:`fungizsl.data.caption_files`).
"""

from __future__ import annotations

import os
import pathlib
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from fungizsl.data import scene_captions, scene_phrases
from fungizsl.data.caption_files import (FUNGALZSL_CLASSES, FUNGALZSL_SPLITS, GENERATED_FILE, SPLIT_ALIASES,
                                         read_generated_captions, read_jsonl_captions, read_split_file)
from fungizsl.data.caption_text import Caption, CaptionStats, caption_stats, deduplicate, group_by_class
from fungizsl.data.scene_params import SceneParams

__all__ = [
    "CaptionSource",
    "GROWTH_STAGES",
    "TEMPLATES",
    "STAGE_PHRASES",
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

#: All growth stages this project knows: the paper's three plus two intermediate stages.
GROWTH_STAGES: tuple[str, ...] = (
    "spore",
    "germinating_spore",
    "hyphae",
    "sporulating_hyphae",
    "mycelium",
)


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
        split = SPLIT_ALIASES.get(split, split)
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
        if bank not in scene_phrases.BANKS:
            raise ValueError(f"scene: bank must be one of {scene_phrases.BANKS}, got {bank!r}")
        self._grammar = scene_captions
        self.class_names = _class_list(classes)
        self.bank, self.per_class, self.seed = bank, int(per_class), int(seed)

    def caption(self, scene, rng) -> str:
        """One caption of ``scene`` (a SceneParams or its JSON) drawn with the generator ``rng``."""
        if not isinstance(scene, SceneParams):
            scene = SceneParams.from_json(scene)
        return self._grammar.caption(scene, rng, self.bank)

    def _load(self) -> list[Caption]:
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
        return [Caption(c, t, self.name) for c in self.class_names
                for t in scene_captions.class_prompts(c, self.per_class, self.seed)]


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
