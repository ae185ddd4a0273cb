"""Captions written from a rendered image's own scene: the text side of FungalZSL without an LLM.

FungalZSL (Rani, Arroyo, Durdevic 2025, https://arxiv.org/abs/2502.19038) trains CLIP on synthetic
growth-stage images paired with LLM-written descriptions of the *stage*. Here every image gets a
description of *itself*, written from its :class:`~fungizsl.data.scene_params.SceneParams` (spore
count, shape and size, germ tubes, branching depth, colonies, density, conidiophores, background,
magnification, focus, debris, ...) by a small grammar (:mod:`fungizsl.data.scene_phrases`); this
module draws captions from it:

* many phrasings per fact, synonyms, optional clauses in random order, one or several sentences,
  numbers as words, digits or approximations, and the stage name present in about half of the
  captions, so that a text tower has to learn the morphology words rather than one template;
* training captions come from the ``"train"`` phrase bank only; :func:`class_prompts` builds the
  zero-shot class prompts from the ``"heldout"`` bank only (with class-typical morphology), so
  zero-shot evaluation uses sentences the model never saw.

Every draw is a pure function of (scene, generator state); :func:`draw_caption` also returns the
phrase ids used and the facts mentioned, which the tests use to check disjointness and truth.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fungizsl.data.scene_params import SceneParams
from fungizsl.data.scene_phrases import (BANKS, NOUNS, PHRASES, STAGE_NAMES, debris, density, filament_width, focus,
                                         magnification, number_text, spore_shape, spore_size, structure)

MAX_DETAILS, MAX_IMAGING = 3, 2  # optional clauses per caption: keeps captions within ~64 BPE tokens
PROMPT_DETAILS = 2  # held-out prompts: their rarer words take more BPE tokens, so fewer clauses

# ----------------------------------------------------------------------------------------------
# Drawing a caption
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SceneCaption:
    text: str
    phrase_ids: tuple[str, ...]  # every phrasing used, in order
    mentions: frozenset[str]  # which facts of the scene the text states


class _Writer:
    """One caption in progress: picks phrases of one bank and records what it used."""

    def __init__(self, scene: SceneParams, rng: np.random.Generator, bank: str):
        if bank not in BANKS:
            raise ValueError(f"phrase bank must be one of {BANKS}, got {bank!r}")
        self.scene, self.rng, self.bank = scene, rng, bank
        self.ids: list[str] = []
        self.mentions: set[str] = set()

    def choice(self, options):
        return options[int(self.rng.integers(len(options)))]

    def phrase(self, slot: str, mention: str | None = None, **fill) -> str:
        picked = self.choice(PHRASES[slot][self.bank])
        self.ids.append(picked.id)
        text = " ".join(picked.text.format(**fill).split())
        if mention and text:
            self.mentions.add(mention)
        return text

    def noun(self, kind: str, count: int = 2) -> str:
        singular, plural = self.choice(NOUNS[kind])
        return singular if count == 1 else plural

    def count(self, n: int, kind: str) -> tuple[str, str]:
        """(number text, noun agreeing with it)."""
        text = "a single" if n == 1 and self.rng.random() < 0.5 else number_text(n, self.rng)
        return text, self.noun(kind, n)

    # facts as words -----------------------------------------------------------------------------
    def shape(self):
        return self.phrase(f"shape.{spore_shape(self.scene)}", "spore_shape")

    def size(self):
        return self.phrase(f"size.{spore_size(self.scene)}", "spore_size")

    def width(self):
        return self.phrase(f"width.{filament_width(self.scene)}", "filament_width")

    def density(self):
        return self.phrase(f"density.{density(self.scene)}", "density")


def _subject(w: _Writer) -> str:
    s, kind = w.scene, structure(w.scene)
    if kind in ("spores", "germinating"):
        count, spores = w.count(s.spores, "spores")
        w.mentions.add("spore_count")
        fill = dict(count=count, spores=spores, cells=w.noun("cells", s.spores), shape="{shape}", size="{size}",
                    germinated=number_text(s.germinated, w.rng), tubes=number_text(s.germ_tubes, w.rng))
        template = w.choice(PHRASES[f"subject.{kind}"][w.bank])
        w.ids.append(template.id)
        if kind == "germinating":
            w.mentions.add("germination")
        text = template.text.format(**fill)
        if "{shape}" in text:
            text = text.replace("{shape}", w.shape())
        if "{size}" in text:
            text = text.replace("{size}", w.size())
        return " ".join(text.split())
    fill = dict(filaments=w.noun("filaments"), density="{density}", width="{width}", heads="{heads}")
    n_colonies, colonies = w.count(s.colonies, "colonies")
    fill["colonies"] = f"{n_colonies} {colonies}"
    template = w.choice(PHRASES[f"subject.{kind}"][w.bank])
    w.ids.append(template.id)
    text = template.text.format(**fill)
    if "{colonies}" in template.text:
        w.mentions.add("colonies")
    if "{density}" in text:
        text = text.replace("{density}", w.density())
    if "{width}" in text:
        text = text.replace("{width}", w.width())
    if "{heads}" in text:
        text = text.replace("{heads}", number_text(s.conidiophores, w.rng))
        w.mentions.add("conidiophores")
    return " ".join(text.split())


def _details(w: _Writer) -> list:
    """Candidate clauses stating further facts, as (probability, thunk) pairs; a thunk writes its
    clause (recording phrase ids and mentions) only when the clause is kept."""
    s, kind = w.scene, structure(w.scene)
    out = []
    if s.spores and "spore_shape" not in w.mentions:
        out.append((0.35, lambda: w.phrase("detail.spore_shape", "spore_shape", spores=w.noun("spores"),
                                           shape=w.shape())))
    if s.spores and "spore_size" not in w.mentions:
        out.append((0.25, lambda: w.phrase("detail.spore_size", "spore_size", spores=w.noun("spores"), size=w.size())))
    if kind in ("spores", "germinating"):
        out.append((0.4, lambda: w.phrase("detail.arrangement", None, spores=w.noun("spores"), arrangement=w.phrase(
            f"arrangement.{s.spore_arrangement}", "arrangement"))))
        if kind == "spores":
            out.append((0.3, lambda: w.phrase("detail.no_germination", "germination")))
        elif s.germ_tubes > s.germinated:
            out.append((0.35, lambda: w.phrase("detail.bipolar", "germination")))
        return out
    out.append((0.5, lambda: w.phrase("detail.depth", "branch_depth", depth=number_text(s.branch_depth, w.rng))))
    out.append((0.35, lambda: w.phrase("detail.initial", "initial_branches",
                                       initial=number_text(s.initial_branches, w.rng))))
    if "colonies" not in w.mentions:
        out.append((0.3, lambda: w.phrase("detail.colonies", "colonies", colonies=" ".join(w.count(s.colonies,
                                                                                                 "colonies")))))
    if s.spores:
        out.append((0.35, lambda: w.phrase("detail.origin_spores", "spore_count", **dict(
            zip(("count", "spores"), w.count(s.spores, "spores"))))))
    else:
        out.append((0.35, lambda: w.phrase("detail.no_origin_spores", "spore_count")))
    if "density" not in w.mentions:
        out.append((0.35, lambda: w.density() + " " + w.noun("filaments")))
    out.append((0.25, lambda: w.phrase("detail.coverage", "coverage", percent=_percent(s.coverage, w.rng))))
    out.append((0.15, lambda: w.phrase("detail.branch_count", "branches",
                                       branches=number_text(s.branches_in_view, w.rng))))
    if kind == "sporulating":
        out.append((0.5, lambda: w.phrase("detail.chains", "chains", chain=number_text(s.chain_length, w.rng))))
    return out


def _percent(coverage: float, rng: np.random.Generator) -> str:
    percent = max(1, int(round(coverage * 100)))
    return f"{percent}%" if rng.random() < 0.5 else f"{number_text(percent, rng, approximate=False)} percent"


def _imaging(w: _Writer) -> list:
    """Candidate clauses about how the image was taken, as for :func:`_details`."""
    s, out = w.scene, []
    out.append((0.4, lambda: w.phrase(f"imaging.{s.background}", "background", colour=s.colour,
                                      medium=s.medium_colour)))
    if s.layout == "field" and structure(s) in ("network", "sporulating"):
        out.append((0.6, lambda: w.phrase("imaging.layout.field", "layout")))
    if s.preset in ("paper", "colony"):  # flat drawings: no optics to describe
        return out
    out.append((0.25, lambda: w.phrase(f"imaging.magnification.{magnification(s)}", "magnification")))
    out.append((0.25, lambda: w.phrase(f"imaging.focus.{focus(s)}", "focus")))
    out.append((0.2, lambda: w.phrase(f"imaging.debris.{debris(s)}", "debris")))
    if s.debris_fibres:
        out.append((0.15, lambda: w.phrase("imaging.fibre", "debris")))
    if s.noise > 6.5:
        out.append((0.2, lambda: w.phrase("imaging.noise", "noise")))
    if s.illumination > 0.3:
        out.append((0.15, lambda: w.phrase("imaging.uneven", "illumination")))
    if s.vignette > 0.4:
        out.append((0.15, lambda: w.phrase("imaging.vignette", "illumination")))
    return out


def _keep(w: _Writer, candidates: list, limit: int) -> list[str]:
    """Keep each candidate with its probability, at most ``limit`` of them, and write the kept ones."""
    kept = [thunk for p, thunk in candidates if w.rng.random() < p]
    if len(kept) > limit:
        kept = [kept[i] for i in sorted(w.rng.choice(len(kept), limit, replace=False))]
    return [thunk() for thunk in kept]


def _compose(w: _Writer, subject: str, clauses: list[str]) -> str:
    """Clauses in random order: some after the subject (commas, "and"), the rest as sentences."""
    order = w.rng.permutation(len(clauses))
    clauses = [clauses[i] for i in order]
    inline = int(w.rng.integers(0, len(clauses) + 1))
    head, rest = clauses[:inline], clauses[inline:]
    tail = ""
    if head:
        joiner = w.choice([", ", "; ", ", "])
        tail = joiner + joiner.join(head[:-1]) + (" and " if len(head) > 1 and w.rng.random() < 0.5 else
                                                 joiner if len(head) > 1 else "") + head[-1]
    frame = w.phrase("frame", None, subject=subject, tail=tail)
    sentences = [frame]
    for clause in rest:
        sentences.append(w.phrase("sentence", None, clause=clause, Clause=clause[:1].upper() + clause[1:]))
    text = " ".join(sentences)
    text = text[:1].upper() + text[1:] if w.rng.random() < 0.7 else text[:1].lower() + text[1:]
    return " ".join(text.split())


def draw_caption(scene: SceneParams, rng: np.random.Generator, bank: str = "train", *,
                 stage_name: float = 0.5, imaging: bool = True, max_details: int = MAX_DETAILS) -> SceneCaption:
    """One caption of ``scene`` from phrase bank ``bank``; the stage is named with probability
    ``stage_name``; ``imaging=False`` leaves out background, magnification, focus and debris;
    at most ``max_details`` optional morphology clauses."""
    w = _Writer(scene, rng, bank)
    subject = _subject(w)
    clauses = _keep(w, _details(w), max_details) + (_keep(w, _imaging(w), MAX_IMAGING) if imaging else [])
    if scene.stage in STAGE_NAMES and rng.random() < stage_name:
        clauses.append(w.phrase("detail.stage", "stage", stage=w.choice(STAGE_NAMES[scene.stage])))
    return SceneCaption(_compose(w, subject, clauses), tuple(w.ids), frozenset(w.mentions))


def caption(scene: SceneParams, rng: np.random.Generator, bank: str = "train") -> str:
    """The text of :func:`draw_caption`."""
    return draw_caption(scene, rng, bank).text


# ----------------------------------------------------------------------------------------------
# Zero-shot class prompts from the held-out bank
# ----------------------------------------------------------------------------------------------

#: Class-typical morphology per stage (what a mycologist would say the stage looks like), as the
#: scenes the held-out prompts describe. Imaging is left out of prompts.
TYPICAL_SCENES: dict[str, tuple[dict, ...]] = {
    "spore": tuple(dict(spores=n, spore_aspect=a, spore_size=z, spore_arrangement=arr, coverage=0.04)
                   for n, a, z, arr in ((6, 0.95, 4.0, "scattered"), (25, 0.75, 3.0, "clustered"),
                                        (60, 0.6, 4.5, "scattered"), (12, 0.9, 6.0, "chains"))),
    "germinating_spore": tuple(dict(spores=n, germinated=g, germ_tubes=t, spore_aspect=a, spore_size=4.0,
                                    coverage=0.03)
                               for n, g, t, a in ((8, 6, 7, 0.9), (20, 14, 17, 0.7), (40, 30, 34, 0.8))),
    "hyphae": tuple(dict(spores=s, colonies=c, branch_depth=d, initial_branches=i, branches=b, branches_in_view=b,
                         coverage=cov, filament_width=w, spore_aspect=0.8, spore_size=4.0)
                    for s, c, d, i, b, cov, w in ((1, 1, 3, 2, 40, 0.03, 2.4), (2, 2, 3, 3, 90, 0.05, 2.0),
                                                  (3, 3, 4, 2, 150, 0.08, 2.8), (1, 1, 2, 1, 12, 0.02, 2.2))),
    "sporulating_hyphae": tuple(dict(spores=1, colonies=c, branch_depth=d, initial_branches=2, branches=b,
                                     branches_in_view=b, coverage=0.05, filament_width=2.2, conidiophores=h,
                                     chain_length=k, spore_aspect=0.85, spore_size=4.0)
                                for c, d, b, h, k in ((1, 3, 30, 5, 5), (2, 3, 45, 8, 4), (1, 2, 15, 3, 6))),
    "mycelium": tuple(dict(spores=0, colonies=c, branch_depth=d, initial_branches=i, branches=b, branches_in_view=b,
                           coverage=cov, filament_width=w)
                      for c, d, i, b, cov, w in ((3, 9, 12, 1200, 0.3, 1.4), (5, 10, 14, 2000, 0.4, 1.2),
                                                 (2, 8, 10, 800, 0.22, 1.8), (4, 10, 16, 1500, 0.35, 1.0))),
}


def typical_scenes(stage: str) -> list[SceneParams]:
    if stage not in TYPICAL_SCENES:
        raise ValueError(f"no typical scenes for stage {stage!r}; known: {', '.join(TYPICAL_SCENES)}")
    return [SceneParams(stage=stage, preset="realistic", image_size=224, **fields) for fields in TYPICAL_SCENES[stage]]


def class_prompts_with_ids(stage: str, n: int = 24, seed: int = 0) -> list[SceneCaption]:
    """``n`` distinct held-out prompts for ``stage``: held-out phrasings of its typical scenes."""
    scenes = typical_scenes(stage)
    rng = np.random.default_rng([int(seed), 7919])
    out, seen = [], set()
    for attempt in range(50 * n):
        scene = scenes[attempt % len(scenes)]
        drawn = draw_caption(scene, rng, "heldout", imaging=False, max_details=PROMPT_DETAILS)
        if drawn.text not in seen:
            seen.add(drawn.text)
            out.append(drawn)
        if len(out) == n:
            break
    return out


def class_prompts(stage: str, n: int = 24, seed: int = 0) -> list[str]:
    """Zero-shot prompts of ``stage``, written only with the held-out phrase bank."""
    return [c.text for c in class_prompts_with_ids(stage, n, seed)]
