"""Captions written from a rendered image's own scene: the text side of FungalZSL without an LLM.

FungalZSL (Rani, Arroyo, Durdevic 2025, https://arxiv.org/abs/2502.19038) trains CLIP on synthetic
growth-stage images paired with LLM-written descriptions of the *stage*. Here every image gets a
description of *itself*, written from its :class:`~fungizsl.data.scene_params.SceneParams` (spore
count, shape and size, germ tubes, branching depth, colonies, density, conidiophores, background,
magnification, focus, debris, ...) by a small grammar:

* many phrasings per fact, synonyms, optional clauses in random order, one or several sentences,
  numbers as words, digits or approximations, and the stage name present in about half of the
  captions, so that a text tower has to learn the morphology words rather than one template;
* two disjoint **phrase banks**. Every phrasing (sentence frame, clause wording, adjective
  synonym) has an id and belongs to the ``"train"`` bank or the ``"heldout"`` bank. Training
  captions come from the train bank only; :func:`class_prompts` builds the zero-shot class prompts
  from the held-out bank only (with class-typical morphology), so zero-shot evaluation uses
  sentences the model never saw. The nouns of the domain (spore, hypha, filament, germ tube,
  colony, ...) are shared vocabulary: a prompt in words the model never met would test nothing.

Every draw is a pure function of (scene, generator state); :func:`draw_caption` also returns the
phrase ids used and the facts mentioned, which the tests use to check disjointness and truth.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fungizsl.data.scene_params import SceneParams

BANKS = ("train", "heldout")
MAX_DETAILS, MAX_IMAGING = 3, 2  # optional clauses per caption: keeps captions within ~64 BPE tokens
PROMPT_DETAILS = 2  # held-out prompts: their rarer words take more BPE tokens, so fewer clauses

# ----------------------------------------------------------------------------------------------
# What a scene shows, in words (deterministic: these are facts, not phrasing)
# ----------------------------------------------------------------------------------------------


def spore_shape(scene: SceneParams) -> str:
    """"round", "oval" or "elliptical" from the mean minor/major axis ratio of the spores."""
    a = scene.spore_aspect
    return "round" if a >= 0.85 else "oval" if a >= 0.68 else "elliptical"


def spore_size(scene: SceneParams) -> str:
    s = scene.spore_size
    return "small" if s < 3.2 else "large" if s > 5.5 else "medium"


def density(scene: SceneParams) -> str:
    c = scene.coverage
    return "sparse" if c < 0.06 else "dense" if c > 0.18 else "moderate"


def magnification(scene: SceneParams) -> str:
    m = scene.magnification
    return "low" if m < 0.85 else "high" if m > 1.25 else "medium"


def focus(scene: SceneParams) -> str:
    return "sharp" if scene.blur <= 0 else "soft" if scene.blur < 0.8 else "blurred"


def debris(scene: SceneParams) -> str:
    n = scene.debris_specks + scene.debris_fibres
    return "clean" if n == 0 else "some" if n <= 8 else "much"


def filament_width(scene: SceneParams) -> str:
    w = scene.filament_width
    return "thin" if w < 1.6 else "thick" if w > 2.6 else "medium"


def structure(scene: SceneParams) -> str:
    """Which kind of subject the image has: free spores, germinating spores, a network, or a
    network carrying conidiophores (decided from what is drawn, not from the stage name)."""
    if scene.conidiophores > 0:
        return "sporulating"
    if scene.branches > 0:
        return "network"
    if scene.germinated > 0:
        return "germinating"
    return "spores"


# ----------------------------------------------------------------------------------------------
# The phrase banks
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Phrase:
    id: str  # "<bank>:<slot>:<n>"
    text: str  # with {placeholders}


PHRASES: dict[str, dict[str, tuple[Phrase, ...]]] = {}


def _slot(name: str, train: Sequence[str], heldout: Sequence[str]) -> None:
    PHRASES[name] = {bank: tuple(Phrase(f"{bank}:{name}:{i}", t) for i, t in enumerate(texts))
                     for bank, texts in (("train", train), ("heldout", heldout))}


# adjectives and short fragments -----------------------------------------------------------------
_slot("shape.round", ["round", "spherical", "circular", "globular"], ["nearly spherical", "ball-like round"])
_slot("shape.oval", ["slightly oval", "ovoid", "slightly elongated", "oval"],
      ["gently oval", "almost round but oval"])
_slot("shape.elliptical", ["elliptical", "elongated", "ellipsoidal", "oblong"],
      ["long and elliptical", "clearly elongated oval"])
_slot("size.small", ["small", "tiny", "minute"], ["very small"])
_slot("size.medium", ["medium-sized", "moderately sized", "mid-sized"], ["average-sized"])
_slot("size.large", ["large", "big", "swollen"], ["fairly large"])
_slot("arrangement.scattered", ["scattered across the field", "spread out", "lying apart from each other",
                                "dispersed at random"], ["each lying on its own", "spread loosely over the slide"])
_slot("arrangement.clustered", ["gathered in clumps", "clustered together", "in tight groups",
                                "forming small clusters"], ["bunched into a few groups", "crowded into patches"])
_slot("arrangement.chains", ["lined up in short chains", "arranged in rows", "in bead-like chains",
                             "joined end to end"], ["strung together in short rows", "linked like beads"])
_slot("density.sparse", ["sparse", "thin", "loose", "scanty"], ["barely developed", "open and sparse"])
_slot("density.moderate", ["moderately dense", "medium-density", "fairly developed"], ["reasonably dense"])
_slot("density.dense", ["dense", "thick", "crowded", "heavily packed"], ["tightly packed", "very dense"])
_slot("width.thin", ["thin", "fine", "slender"], ["narrow"])
_slot("width.medium", ["", "regular"], ["ordinary"])
_slot("width.thick", ["thick", "broad", "wide"], ["stout"])

# the subject of the caption, one slot per kind of structure ---------------------------------------
_slot("subject.spores", [
    "{count} {size} {shape} {spores}",
    "{count} {spores}, {shape} and {size}",
    "{count} {shape} fungal {spores}",
    "a field of {count} {shape} {spores}",
    "{count} {shape} {cells} on the slide",
], [
    "{count} {spores}, {size} and {shape} in outline",
    "{count} {shape} {spores} and nothing else",
])
_slot("subject.germinating", [
    "{count} {spores}, {germinated} of them putting out germ tubes",
    "{count} {shape} {spores} with {tubes} germ tubes emerging",
    "germinating {spores}: {germinated} of {count} have sprouted",
    "{count} {spores}, {germinated} of which are germinating",
], [
    "{count} {spores} where {germinated} have begun to sprout germ tubes",
    "{tubes} young germ tubes growing out of {count} {spores}",
])
_slot("subject.network", [
    "a {density} network of {width} branching {filaments}",
    "{density} {width} {filaments} that branch and spread",
    "{colonies} of {width} branching {filaments}",
    "a {density} web of {filaments}",
    "branching {filaments} forming a {density} mat",
], [
    "{width} {filaments} forming a {density}, branched net",
    "a branched, {density} spread of {filaments}",
])
_slot("subject.sporulating", [
    "branching {filaments} carrying {heads} conidiophores",
    "{filaments} with {heads} spore-bearing stalks",
    "{heads} conidiophores rising from {width} {filaments}",
], [
    "{width} {filaments} topped by {heads} stalks that bear spores",
])

# detail clauses, each as a fragment after a comma ------------------------------------------------
_slot("detail.spore_shape", ["the {spores} are {shape}", "{shape} in outline", "each spore {shape}"],
      ["the spore outline is {shape}"])
_slot("detail.spore_size", ["the {spores} are {size}", "{size} {spores}"], ["{spores} that look {size}"])
_slot("detail.arrangement", ["{arrangement}", "the {spores} {arrangement}"], ["with the {spores} {arrangement}"])
_slot("detail.no_germination", ["none of them germinating", "no germ tubes yet", "without any germ tubes"],
      ["with no sign of germination"])
_slot("detail.bipolar", ["some germinating from both ends", "a few with two germ tubes"],
      ["some sprouting at both poles"])
_slot("detail.depth", ["branching {depth} times", "{depth} levels of branching", "branched {depth} levels deep",
                       "with {depth} generations of branches"], ["forking through {depth} generations"])
_slot("detail.initial", ["{initial} main branches leave each origin", "{initial} primary branches per colony",
                         "each colony starts with {initial} branches"], ["{initial} first-order branches per origin"])
_slot("detail.colonies", ["{colonies} in view", "grown from {colonies}", "{colonies} visible"],
      ["{colonies} making up the picture"])
_slot("detail.origin_spores", ["growing out of {count} {spores}", "{count} parent {spores} visible",
                               "starting from {count} {spores}"], ["with {count} {spores} at the growth centres"])
_slot("detail.no_origin_spores", ["no parent spores visible", "the spores they grew from out of sight"],
      ["without any visible source spores"])
_slot("detail.coverage", ["covering {percent} of the field", "filling {percent} of the image"],
      ["taking up {percent} of the view"])
_slot("detail.branch_count", ["{branches} branch segments", "{branches} branches in view"],
      ["{branches} branch pieces"])
_slot("detail.chains", ["each ending in chains of {chain} conidia", "with chains of {chain} spores at the tips"],
      ["every head carrying rows of {chain} conidia"])
_slot("detail.stage", ["{stage}", "growth stage: {stage}", "showing {stage}", "an example of {stage}"],
      ["a typical case of {stage}", "{stage}, by its look"])

# how the image was taken ----------------------------------------------------------------------------
_slot("imaging.brightfield", ["bright-field", "on a bright background", "in bright-field microscopy"],
      ["lit from below on a pale field"])
_slot("imaging.darkfield", ["dark-field", "glowing on a black background", "in dark-field microscopy"],
      ["bright against a dark field"])
_slot("imaging.stained", ["stained {colour}", "with a {colour} stain", "{colour}-stained"],
      ["dyed {colour}"])
_slot("imaging.phase", ["phase-contrast", "with bright halos around the cells", "in phase contrast"],
      ["haloed as in phase contrast"])
_slot("imaging.agar", ["growing on {medium} agar", "on an agar plate", "on a {medium} culture medium"],
      ["on a dish of {medium} agar"])
_slot("imaging.white", ["drawn in {colour} on white", "on a plain white background", "{colour} line art"],
      ["{colour} drawing on a white page"])
_slot("imaging.magnification.low", ["at low magnification", "low-power view", "zoomed out"],
      ["seen from afar under the lens"])
_slot("imaging.magnification.medium", ["at medium magnification", "medium-power view"], ["at moderate zoom"])
_slot("imaging.magnification.high", ["at high magnification", "high-power view", "zoomed in"],
      ["seen close up under the lens"])
_slot("imaging.focus.sharp", ["in sharp focus", "crisp", "well focused"], ["with clean edges"])
_slot("imaging.focus.soft", ["slightly out of focus", "a little soft", "slightly blurred"], ["mildly unsharp"])
_slot("imaging.focus.blurred", ["out of focus", "blurry", "blurred"], ["badly unsharp"])
_slot("imaging.debris.clean", ["clean background", "no debris"], ["a spotless field"])
_slot("imaging.debris.some", ["a few specks of debris", "some dust"], ["a little dirt here and there"])
_slot("imaging.debris.much", ["lots of debris", "many specks of dust", "a dirty slide"], ["dirt all over"])
_slot("imaging.fibre", ["a stray fibre", "a fibre crossing the field"], ["a loose thread in view"])
_slot("imaging.noise", ["grainy", "noisy"], ["speckled with sensor noise"])
_slot("imaging.uneven", ["unevenly lit", "with uneven illumination"], ["lit more on one side"])
_slot("imaging.vignette", ["darker corners", "vignetted"], ["shadowed towards the edges"])

# whole-caption frames --------------------------------------------------------------------------------
_slot("frame", [
    "{subject}{tail}.",
    "A micrograph of {subject}{tail}.",
    "Microscope image showing {subject}{tail}.",
    "Here we see {subject}{tail}.",
    "Image: {subject}{tail}.",
    "Synthetic render of {subject}{tail}.",
    "{subject} under the microscope{tail}.",
    "{subject}{tail}",
    "This image shows {subject}{tail}.",
], [
    "A picture in which one can make out {subject}{tail}.",
    "What is visible: {subject}{tail}.",
    "In this field of view there are {subject}{tail}.",
])
_slot("sentence", ["{Clause}.", "Also: {clause}.", "Detail: {clause}."], ["Note: {clause}.", "Besides, {clause}."])

# shared vocabulary: the domain's nouns (identical in both banks, see the module docstring)
NOUNS = {
    "spores": (("spore", "spores"), ("spore", "spores"), ("cell", "cells"), ("conidium", "conidia")),
    "cells": (("cell", "cells"), ("spore cell", "spore cells")),
    "filaments": (("hyphae", "hyphae"), ("filaments", "filaments"), ("hyphal threads", "hyphal threads")),
    "colonies": (("colony", "colonies"), ("growth centre", "growth centres")),
}
STAGE_NAMES = {
    "spore": ("spores", "the spore stage", "ungerminated spores", "resting spores"),
    "germinating_spore": ("germinating spores", "spore germination"),
    "hyphae": ("hyphae", "young hyphae", "the hyphal stage"),
    "sporulating_hyphae": ("sporulating hyphae", "sporulation"),
    "mycelium": ("mycelium", "a mycelium", "the mycelial stage"),
}

_NUMBER_WORDS = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
                 "sixteen seventeen eighteen nineteen twenty").split()


def number_text(n: int, rng: np.random.Generator, approximate: bool = True) -> str:
    """``n`` as a word or digits; counts above 12 may be approximated ("about 40", "dozens of")."""
    n = int(n)
    if n <= 12 or not approximate or rng.random() < 0.4:
        return _NUMBER_WORDS[n] if n <= 20 and rng.random() < 0.5 else str(n)
    step = 5 if n < 60 else 10 if n < 300 else 100
    rounded = max(step, int(round(n / step) * step))
    options = [f"about {rounded}", f"roughly {rounded}", f"around {rounded}"]
    options += ["dozens of"] if 24 <= n < 150 else ["hundreds of"] if n >= 200 else ["over a dozen"]
    return options[int(rng.integers(len(options)))]


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
    if s.preset == "paper":  # flat drawings: no optics to describe
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
