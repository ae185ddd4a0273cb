"""What one synthetic image shows, in numbers: the renderer's scene parameters as a small record.

FungalZSL (Rani, Arroyo, Durdevic 2025, https://arxiv.org/abs/2502.19038) pairs every rendered
growth-stage image with a description. This project writes that description from the renderer's
own parameters (:mod:`fungizsl.data.scene_captions`), so each caption is about *its* image. The
record here is what the renderer reports per image (:func:`fungizsl.data.synthetic.render_scene`):
counts are of what lies in the field of view (a spore drawn outside the frame is not counted),
``coverage`` is measured on the drawn mask, lengths are in pixels of a 224 px image so that they
mean the same at every image size.

A :class:`SceneParams` is frozen and survives a JSON round trip (``to_json`` / ``from_json``), the
form in which TFDS records and :class:`~fungizsl.data.pipeline.RenderedSource` records carry it.
"""

from __future__ import annotations

import colorsys
import dataclasses
import json
from collections.abc import Mapping

import numpy as np

REFERENCE_SIZE = 224.0


@dataclasses.dataclass(frozen=True)
class SceneParams:
    """The scene of one rendered image (see the module docstring for units)."""

    stage: str
    preset: str
    image_size: int
    magnification: float = 1.0  # 1: the reference scale; the realistic preset draws 0.6 .. 1.7
    coverage: float = 0.0  # fraction of the field covered by fungal structures (measured on the mask)
    spores: int = 0  # spores in view (for hyphal stages: the spores the colonies grew from)
    spore_aspect: float = 0.0  # mean minor / major axis of those spores (1: round); 0 without spores
    spore_size: float = 0.0  # mean semi-major axis, px of a 224 px image
    spore_arrangement: str = "scattered"  # scattered | clustered | chains
    germinated: int = 0  # spores in view with at least one germ tube
    germ_tubes: int = 0
    colonies: int = 0  # origins of branching networks
    branch_depth: int = 0  # branching generations grown (0: no network)
    initial_branches: int = 0  # branches leaving each origin
    branches: int = 0  # filament segments grown
    branches_in_view: int = 0
    filament_width: float = 0.0  # first-generation width, px of a 224 px image
    conidiophores: int = 0  # spore-bearing stalks in view
    chain_length: int = 0  # conidia per chain
    layout: str = "single"  # single: one scene at `magnification`; field: several small colonies across it
    background: str = "white"  # brightfield | darkfield | stained | phase | agar | white (paper)
    colour: str = ""  # colour name of the fungal structures
    medium_colour: str = ""  # colour name of the background
    blur: float = 0.0  # focus blur radius, px of a 224 px image (0: sharp)
    noise: float = 0.0  # sensor noise std, grey levels
    illumination: float = 0.0  # strength of the illumination gradient across the field
    vignette: float = 0.0  # darkening towards the corners
    debris_specks: int = 0
    debris_fibres: int = 0

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes | Mapping) -> "SceneParams":
        """Parse ``to_json``'s output (str, bytes as TFDS returns Text features, or a dict)."""
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        try:
            data = dict(text) if isinstance(text, Mapping) else json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"scene: malformed JSON ({e.msg} at column {e.colno})") from e
        if not isinstance(data, dict):
            raise ValueError(f"scene: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise ValueError(f"scene: unknown field(s) {', '.join(unknown)}")
        missing = [n for n in ("stage", "preset", "image_size") if n not in data]
        if missing:
            raise ValueError(f"scene: missing field(s) {', '.join(missing)}")
        kwargs = {}
        for name, value in data.items():
            kind = fields[name].type
            if kind == "str":
                if not isinstance(value, str):
                    raise ValueError(f"scene: field {name!r} must be a string, got {value!r}")
            elif kind == "int":
                value = int(value)
            else:
                value = float(value)
            kwargs[name] = value
        return cls(**kwargs)


def colour_name(rgb) -> str:
    """A plain colour word for an RGB triple (0..255)."""
    r, g, b = (float(np.clip(c, 0, 255)) / 255.0 for c in rgb)
    h, s, v = colorsys.rgb_to_hsv(r, g, b)
    if v < 0.18:
        return "black"
    if s < 0.18:
        return "white" if v > 0.85 else "grey"
    hue = h * 360.0
    if v < 0.55 and 15 <= hue < 50:
        return "brown"
    for limit, name in ((15, "red"), (40, "orange"), (70, "yellow"), (160, "green"), (200, "cyan"),
                        (255, "blue"), (290, "purple"), (340, "pink"), (361, "red")):
        if hue < limit:
            return name
    return "red"


def describe(stage: str, preset: str, image_size: int, facts: Mapping, coverage: float, *,
             magnification: float = 1.0, style=None, colour=None, spore_arrangement: str = "scattered",
             layout: str = "single") -> SceneParams:
    """Assemble a :class:`SceneParams` from a shape scene's ``facts`` and the image's style.

    ``style`` is the realistic preset's :class:`~fungizsl.data.synthetic.Style` (None for the paper
    preset, whose look is flat colour ``colour`` on white).
    """
    u = image_size / REFERENCE_SIZE
    common = dict(
        stage=stage, preset=preset, image_size=int(image_size), magnification=round(float(magnification), 4),
        coverage=round(float(coverage), 5), spores=int(facts.get("spores", 0)),
        spore_aspect=round(float(facts.get("spore_aspect", 0.0)), 4),
        spore_size=round(float(facts.get("spore_radius", 0.0)) / u, 3), spore_arrangement=spore_arrangement,
        germinated=int(facts.get("germinated", 0)), germ_tubes=int(facts.get("germ_tubes", 0)),
        colonies=int(facts.get("colonies", 0)), branch_depth=int(facts.get("branch_depth", 0)),
        initial_branches=int(facts.get("initial_branches", 0)), branches=int(facts.get("branches", 0)),
        branches_in_view=int(facts.get("branches_in_view", 0)),
        filament_width=round(float(facts.get("filament_width", 0.0)) / u, 3),
        conidiophores=int(facts.get("conidiophores", 0)), chain_length=int(facts.get("chain_length", 0)),
        layout=layout)
    if style is None:
        return SceneParams(**common, background="white", colour=colour_name(colour), medium_colour="white")
    return SceneParams(
        **common, background=style.kind, colour=colour_name(style.wall if style.kind != "agar" else style.lumen),
        medium_colour=colour_name(style.background), blur=round(float(style.blur) / u, 3),
        noise=round(float(style.noise), 3), illumination=round(float(style.gradient), 3),
        vignette=round(float(style.vignette), 3), debris_specks=int(style.specks), debris_fibres=int(style.fibres))
