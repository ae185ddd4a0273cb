"""The grammar of scene captions: a scene's facts in words, and the two phrase banks.

:mod:`fungizsl.data.scene_captions` writes each rendered image's caption from its
:class:`~fungizsl.data.scene_params.SceneParams`; this module holds what it writes with:

* the facts of a scene as words (deterministic: spore shape and size, density, magnification,
  focus, debris, filament width, and which kind of structure the image shows);
* the phrasings, in slots (adjectives, subjects, detail clauses, imaging clauses, whole-caption
  frames), many per fact. Every phrasing has an id ``"<bank>:<slot>:<n>"`` and belongs to one of
  two disjoint **phrase banks**, ``"train"`` or ``"heldout"``: training captions come from the
  train bank only, zero-shot class prompts from the held-out bank only. The nouns of the domain
  (spore, hypha, filament, germ tube, colony, ...) are shared vocabulary (:data:`NOUNS`): a prompt
  in words the model never met would test nothing;
* numbers as words, digits or approximations (:func:`number_text`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from fungizsl.data.scene_params import SceneParams

BANKS = ("train", "heldout")

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
_slot("imaging.layout.field", ["several small colonies scattered across the field",
                               "many small separate colonies across a wide field", "a field dotted with small colonies"],
      ["numerous little growth centres spread over the view"])
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

