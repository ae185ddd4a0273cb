"""Synthetic fungal growth-stage images: the image source of FungalZSL.

FungalZSL (Rani, Arroyo, Durdevic 2025, "Zero-Shot Fungal Classification with Image Captioning
Using a Synthetic Data Approach") fine-tunes CLIP on rendered images of three growth stages: spores
drawn as round or elliptical cells; hyphae as recursively branching filaments growing from spores
(depth 3, 4 initial branches); mycelium as a dense network (depth 10, 14 initial branches); every
branch splits into 3 to 5 and branch lengths are scaled by Normal(1, 0.2).  Its renders are
matplotlib-like line drawings on white whose colour runs yellow -> orange -> red with the stage, so
colour alone names the class.  (These figures are the paper's as relayed by the project brief; the
summary under shared/papers holds only its abstract.)  Three presets:

* ``"paper"``: the authors' own generator, written anew in :mod:`fungizsl.data.fungalzsl_generator`
  from their public script (its module docstring cites every fact): ten small growth centres in a
  white field (spores, hyphal colonies a few pixels across at 96 px, or mycelial colonies that
  together cover much of the field), each coloured between its stage's two end colours by its
  height, lines at alpha 0.8; for reproducing their numbers and as a shifted test set;
* ``"colony"``: this project's earlier reading of the paper: one colony filling the field, flat
  colour per stage (yellow, orange, red) on white;
* ``"realistic"`` (the default): the task made honest.  Colour is drawn independently of
  the stage, and each image varies background (agar plate, bright-field, dark-field, stained,
  phase contrast), magnification, density, focus blur, noise, illumination gradient and debris.
  Domain randomisation (issue 21): a share of the network images is a field of several small
  colonies at low magnification with thin filaments (``field_fraction``, :func:`field_morphology`;
  the scene's ``layout`` says which), and flat colour of any hue on white joins the backgrounds
  (``white_background``), so scale and style are no shortcut; all drawn with this module's shapes.
  ``hyphae_mycelium_overlap`` in [0, 1] sets how far the hyphae and mycelium morphology ranges
  (depth, branching, density, ...) are pulled towards their union; at 1 the two stages are drawn
  from the same distribution (the paper's hard pair, made as hard as you like).

Two extra stages, ``germinating_spore`` (spores with germ tubes) and ``sporulating_hyphae``
(hyphae bearing conidiophores with spore chains), support experiments beyond three classes.

Every image is a pure function of (stage, index, seed, config): its random generator is seeded from
(seed, a fixed id of the stage name, index), so any process renders identical pixels.
Run ``fungizsl render --out sheet.png`` for a labelled contact sheet
(:mod:`fungizsl.data.contact_sheets`).
"""

from __future__ import annotations

import colorsys
import dataclasses
import functools
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter

from fungizsl.data import fungalzsl_generator
from fungizsl.data.render_shapes import BranchSpec, Morphology, build_scene, debris_scene, rasterise
from fungizsl.data.scene_params import SceneParams, describe

STAGES = ("spore", "hyphae", "mycelium")  # the paper's classes: the default class list
EXTRA_STAGES = ("germinating_spore", "sporulating_hyphae")
ALL_STAGES = STAGES + EXTRA_STAGES
PRESETS = ("realistic", "paper", "colony")
# "white": flat colour of any hue on a white page, the look of the authors' drawings (colour is
# still drawn independently of the stage)
BACKGROUNDS = ("brightfield", "darkfield", "stained", "phase", "agar", "white")
# Per-image magnification range of the plain realistic renders (RenderConfig's default); the
# robustness zoom shifts are drawn outside it.
MAGNIFICATION = (0.6, 1.7)
# The domain randomisation the main job trains on (issue 21): RenderConfig fields over the realistic
# preset. A tenth to three times the base magnification (several colonies small in the field through
# one filling it), 30 % of the network images as fields of small colonies, flat colour on white
# among the backgrounds. The builder config realistic_224_randomised and the rendered input path
# (config.data.randomised) both take it from here.
RANDOMISED = dict(magnification=(0.3, 3.2), field_fraction=0.3, white_background=True)
BACKGROUND_PROBS = (0.2, 0.12, 0.2, 0.12, 0.16, 0.2)
LAYOUTS = ("single", "field")  # realistic networks: one scale, or several small colonies across the field

REFERENCE_SIZE = 224.0  # lengths below are in pixels of a 224 px image and scale with image_size

# paper preset: each growth centre's colour lies between its stage's two end colours
# (fungalzsl_generator.STAGE_COLOURS); the scene names the stage's colour as the authors' README does
# (bright yellow spores, orange hyphae, deep red mycelium) with these representatives of the ranges
PAPER_COLOURS = {
    "spore": (255, 214, 0),
    "germinating_spore": (255, 190, 0),
    "hyphae": (255, 140, 0),
    "sporulating_hyphae": (255, 115, 0),
    "mycelium": (230, 25, 0),
}

# colony preset: one colour per stage, yellow -> orange -> red with growth (extras slot in between)
COLONY_COLOURS = {
    "spore": (255, 215, 0),
    "germinating_spore": (255, 180, 0),
    "hyphae": (255, 140, 0),
    "sporulating_hyphae": (245, 85, 0),
    "mycelium": (220, 20, 20),
}

# realistic preset: (hyphae range, mycelium range) of each network parameter; at overlap t both
# ranges move a fraction t towards their union, so at t = 1 the two stages are the same distribution
NETWORK_RANGES = {
    "depth": ((2, 4), (7, 10)),
    "initial_branches": ((1, 3), (8, 16)),  # per origin
    "n_origins": ((1, 3), (2, 6)),
    "origin_scatter": ((0.0, 0.0), (10.0, 60.0)),  # px; 0: every branch starts at its spore
    "max_tips": ((12, 40), (200, 450)),  # live tips per generation (times the image's density)
    "length": ((26.0, 46.0), (14.0, 26.0)),  # first-generation branch length (times magnification)
    "length_decay": ((0.7, 0.85), (0.8, 0.9)),
    "width": ((1.6, 2.8), (1.0, 2.0)),  # first-generation width (times magnification)
    "origin_margin": ((0.15, 0.3), (-0.15, 0.1)),  # < 0: colonies may sit outside the field of view
    "origin_spore_prob": ((0.8, 1.0), (0.0, 0.15)),
}
_INT_PARAMS = ("depth", "initial_branches", "n_origins", "max_tips")


def check_stage(stage: str) -> str:
    if stage not in ALL_STAGES:
        raise ValueError(f"unknown stage {stage!r}; valid stages: {', '.join(ALL_STAGES)}")
    return stage


def check_preset(preset: str) -> str:
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; valid presets: {', '.join(PRESETS)}")
    return preset


@dataclasses.dataclass(frozen=True)
class RenderConfig:
    """How images are rendered; `stages` is the class list (label i = stages[i])."""

    image_size: int = 224
    preset: str = "realistic"
    hyphae_mycelium_overlap: float = 0.3  # realistic preset only; the paper preset has fixed shapes
    stages: tuple[str, ...] = STAGES
    supersample: int = 2  # drawing canvas is this many times larger, then box-filtered down
    # realistic preset: per-image magnification drawn log-uniformly in this range (robustness
    # tests shift it outside the training range; the draw consumes the same random numbers)
    magnification: tuple[float, float] = MAGNIFICATION
    # realistic preset, domain randomisation of scale: this fraction of the network images (hyphae,
    # mycelium, ...) is a "field" of several small colonies (n_colonies of them, origins anywhere in
    # the field) at a magnification drawn log-uniformly in field_magnification, with filaments
    # thinned by a factor in field_width; their spores keep a scale of their own. 0 (the default,
    # the main job's renders): every image is one scene at `magnification` (the layout draw
    # consumes no random numbers then). RANDOMISED (the main job's renders) uses 0.3.
    field_fraction: float = 0.0
    field_magnification: tuple[float, float] = (0.1, 1.0)
    n_colonies: tuple[int, int] = (4, 12)
    field_width: tuple[float, float] = (0.35, 1.0)
    # realistic preset: draw backgrounds from BACKGROUNDS (with "white") instead of the five
    # microscopy families only (False by default: pixels as before; True in RANDOMISED)
    white_background: bool = False

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        check_preset(self.preset)
        for stage in self.stages:
            check_stage(stage)
        if not self.stages or len(set(self.stages)) != len(self.stages):
            raise ValueError(f"stages must be a non-empty list without repeats, got {self.stages}")
        if not 0.0 <= self.hyphae_mycelium_overlap <= 1.0:
            raise ValueError(f"hyphae_mycelium_overlap must lie in [0, 1], got {self.hyphae_mycelium_overlap}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        lo, hi = self.magnification
        if not 0.0 < lo <= hi:
            raise ValueError(f"magnification must be a range (low, high) with 0 < low <= high, got {self.magnification}")
        object.__setattr__(self, "magnification", (float(lo), float(hi)))
        if not 0.0 <= self.field_fraction <= 1.0:
            raise ValueError(f"field_fraction must lie in [0, 1], got {self.field_fraction}")
        for name in ("field_magnification", "field_width", "n_colonies"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi:
                raise ValueError(f"{name} must be a range (low, high) with 0 < low <= high, got {(lo, hi)}")
            object.__setattr__(self, name, (type(lo)(lo), type(hi)(hi)))
        if self.supersample not in (1, 2, 3, 4):
            raise ValueError(f"supersample must be 1, 2, 3 or 4, got {self.supersample}")

    @property
    def overlap(self) -> float:
        return self.hyphae_mycelium_overlap


# ----------------------------------------------------------------------------------------------
# Public rendering API
# ----------------------------------------------------------------------------------------------


def render_image(stage: str, index: int, seed: int = 0, config: RenderConfig | None = None) -> np.ndarray:
    """One image of `stage` as uint8 [H, W, 3]; a pure function of its arguments."""
    return render_scene(stage, index, seed, config)[0]


def render_scene(stage: str, index: int, seed: int = 0,
                 config: RenderConfig | None = None) -> tuple[np.ndarray, SceneParams]:
    """One image of `stage` and its :class:`~fungizsl.data.scene_params.SceneParams` (what it shows).

    The image is exactly :func:`render_image`'s: describing the scene draws no random numbers.
    """
    config = config or RenderConfig()
    rng = image_rng(check_stage(stage), index, seed)
    size = config.image_size
    if config.preset == "paper":
        field = fungalzsl_generator.build_field(rng, stage)
        image, coverage = fungalzsl_generator.draw_field(field, size, config.supersample)
        return image, describe(stage, "paper", size, fungalzsl_generator.field_facts(field, size), coverage,
                               colour=PAPER_COLOURS[stage],
                               layout="single" if stage in ("spore", "germinating_spore") else "field")
    if config.preset == "colony":
        morph = colony_morphology(rng, stage, size)
        shapes = build_scene(rng, stage, morph)
        mask = rasterise(shapes, size, config.supersample)
        scene = describe(stage, "colony", size, shapes.facts, _coverage(mask), colour=COLONY_COLOURS[stage],
                         spore_arrangement=morph.arrangement)
        return compose_flat(mask, COLONY_COLOURS[stage]), scene
    style = sample_style(rng, size, config.white_background)
    field = config.field_fraction > 0 and stage not in ("spore", "germinating_spore") \
        and rng.random() < config.field_fraction
    if field:
        morph = field_morphology(rng, stage, size, config)
    else:
        morph = realistic_morphology(rng, stage, size, config.hyphae_mycelium_overlap, config.magnification)
    shapes = build_scene(rng, stage, morph)
    mask = rasterise(shapes, size, config.supersample)
    debris = rasterise(debris_scene(rng, size, style.specks, style.fibres, size / REFERENCE_SIZE), size, 1)
    scene = describe(stage, "realistic", size, shapes.facts, _coverage(mask), magnification=morph.magnification,
                     style=style, spore_arrangement=morph.arrangement, layout="field" if field else "single")
    return compose_realistic(rng, mask, debris, style, size), scene


def _coverage(mask: Image.Image) -> float:
    return float(np.asarray(mask, dtype=np.float32).mean() / 255.0)


def render_batch(stages: str | Sequence[str], indices: Sequence[int], seed: int = 0,
                 config: RenderConfig | None = None) -> np.ndarray:
    """Images for (stage, index) pairs as uint8 [N, H, W, 3]; a single stage name applies to all."""
    config = config or RenderConfig()
    indices = list(indices)
    stages = [stages] * len(indices) if isinstance(stages, str) else list(stages)
    if len(stages) != len(indices):
        raise ValueError(f"got {len(stages)} stages for {len(indices)} indices")
    out = np.empty((len(indices), config.image_size, config.image_size, 3), dtype=np.uint8)
    for i, (stage, index) in enumerate(zip(stages, indices)):
        out[i] = render_image(stage, index, seed, config)
    return out


def render_labelled(indices: Sequence[int], seed: int = 0, config: RenderConfig | None = None):
    """A balanced labelled stream: item g is image g // C of class g % C (C = len(config.stages)).

    Returns (images uint8 [N, H, W, 3], labels int32 [N]) with labels indexing `config.stages`.
    """
    config = config or RenderConfig()
    g = np.asarray(list(indices), dtype=np.int64)
    labels = (g % len(config.stages)).astype(np.int32)
    images = render_batch([config.stages[c] for c in labels], (g // len(config.stages)).tolist(), seed, config)
    return images, labels


def image_rng(stage: str, index: int, seed: int) -> np.random.Generator:
    """The generator of one image, seeded from (seed, a process-independent id of stage, index)."""
    for name, value in (("index", index), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return np.random.default_rng([int(seed), zlib.crc32(stage.encode()), int(index)])


# ----------------------------------------------------------------------------------------------
# Morphology: what each preset draws
# ----------------------------------------------------------------------------------------------


def colony_morphology(rng: np.random.Generator, stage: str, size: int) -> Morphology:
    """One colony filling the field: straight fanning branches, depth 3 x 4 / depth 10 x 14, 3-5 splits."""
    u = size / REFERENCE_SIZE
    spores = dict(spore_radius=u * rng.uniform(4.0, 7.0), spore_aspect=(0.5, 1.0), arrangement="scattered")
    if stage in ("spore", "germinating_spore"):
        germ = stage == "germinating_spore"
        return Morphology(size, spore_count=int(rng.integers(10, 31)) // (2 if germ else 1),
                          germ_fraction=0.9 * germ, germ_length=3.0, **spores)
    if stage == "mycelium":
        net = BranchSpec(depth=10, initial_branches=14, length=u * rng.uniform(24.0, 32.0), length_decay=0.82,
                         spread=np.radians(50.0), width=1.4 * u, width_decay=0.93, min_width=0.5 * u,
                         max_tips=320, max_segments=2500)
        return Morphology(size, network=net, n_origins=int(rng.integers(1, 3)), origin_margin=0.3,
                          origin_spore_prob=0.0, **spores)
    net = BranchSpec(depth=3, initial_branches=4, length=u * rng.uniform(26.0, 36.0), length_decay=0.7,
                     spread=np.radians(40.0), width=2.0 * u, width_decay=0.85, min_width=0.5 * u)
    heads = int(rng.integers(3, 7)) if stage == "sporulating_hyphae" else 0
    return Morphology(size, network=net, n_origins=int(rng.integers(1, 4)), origin_margin=0.25,
                      origin_spore_prob=1.0, heads=heads, stalk_length=16.0 * u, stalk_width=1.5 * u,
                      chains=5, chain_length=4, conidium_radius=2.0 * u, **spores)


def network_ranges(stage: str, overlap: float) -> dict[str, tuple[float, float]]:
    """Sampling range of each network parameter for hyphae-like or mycelium stages at this overlap."""
    own = 1 if stage == "mycelium" else 0
    ranges = {}
    for name, pair in NETWORK_RANGES.items():
        lo, hi = pair[own]
        union_lo, union_hi = min(p[0] for p in pair), max(p[1] for p in pair)
        ranges[name] = (lo + overlap * (union_lo - lo), hi + overlap * (union_hi - hi))
    return ranges


def realistic_morphology(rng: np.random.Generator, stage: str, size: int, overlap: float,
                         magnification: tuple[float, float] = MAGNIFICATION) -> Morphology:
    """Per-image magnification and density, shapes drawn from stage ranges (colour is not decided here)."""
    u = size / REFERENCE_SIZE
    mag = float(np.exp(rng.uniform(np.log(magnification[0]), np.log(magnification[1]))))
    density = float(np.exp(rng.uniform(np.log(0.6), np.log(1.6))))
    lo_aspect = rng.uniform(0.45, 0.95)
    spores = dict(spore_radius=u * mag * rng.uniform(2.8, 5.5), spore_aspect=(lo_aspect, min(1.0, lo_aspect + 0.2)),
                  arrangement=str(rng.choice(["scattered", "clustered", "chains"], p=[0.5, 0.3, 0.2])))
    if stage in ("spore", "germinating_spore"):
        count = density * rng.uniform(15.0, 60.0) / mag**2 / (2.0 if stage == "germinating_spore" else 1.0)
        return Morphology(size, spore_count=int(np.clip(round(count), 2, 200)), germ_fraction=rng.uniform(0.5, 1.0),
                          germ_length=rng.uniform(1.5, 4.5), magnification=mag, **spores)
    ranges = network_ranges(stage, overlap if stage in ("hyphae", "mycelium") else 0.0)
    p = {k: (int(rng.integers(round(lo), round(hi) + 1)) if k in _INT_PARAMS else float(rng.uniform(lo, hi)))
         for k, (lo, hi) in ranges.items()}
    width = u * mag * p["width"]
    net = BranchSpec(depth=p["depth"], initial_branches=p["initial_branches"], length=u * mag * p["length"],
                     length_decay=p["length_decay"], spread=np.radians(rng.uniform(50.0, 85.0)), style="lateral",
                     curvature=rng.uniform(0.05, 0.18), substeps=4, width=width, width_decay=0.94,
                     min_width=0.45 * width, width_jitter=0.15, max_tips=max(4, round(p["max_tips"] * density)),
                     max_segments=2500, origin_scatter=u * mag * p["origin_scatter"])
    heads = int(round(rng.uniform(3, 9) * density)) if stage == "sporulating_hyphae" else 0
    return Morphology(size, network=net, n_origins=p["n_origins"], origin_margin=p["origin_margin"],
                      origin_spore_prob=p["origin_spore_prob"], heads=heads,
                      stalk_length=u * mag * rng.uniform(14.0, 30.0), stalk_width=0.9 * width,
                      chains=int(rng.integers(3, 8)), chain_length=int(rng.integers(3, 9)),
                      conidium_radius=u * mag * rng.uniform(1.3, 2.3), magnification=mag, **spores)


def field_morphology(rng: np.random.Generator, stage: str, size: int, config: RenderConfig) -> Morphology:
    """Several small colonies across the field: the realistic stage ranges at a low magnification.

    The network is drawn as :func:`realistic_morphology` draws it at a magnification from
    ``config.field_magnification``, then given ``config.n_colonies`` origins anywhere in the field
    and filaments thinned by a factor from ``config.field_width``. Colonies stay the stage's: a
    hyphal colony is a few short branches, a mycelial one a dense tuft.
    """
    morph = realistic_morphology(rng, stage, size, config.hyphae_mycelium_overlap, config.field_magnification)
    thin = rng.uniform(*config.field_width)
    n = int(rng.integers(config.n_colonies[0], config.n_colonies[1] + 1))
    net = morph.network
    net = dataclasses.replace(net, width=net.width * thin, min_width=net.min_width * thin,
                              max_tips=max(net.max_tips, 6 * n), origin_scatter=0.0)
    return dataclasses.replace(morph, network=net, n_origins=n, origin_margin=float(rng.uniform(0.05, 0.2)),
                               stalk_width=morph.stalk_width * thin)


# ----------------------------------------------------------------------------------------------
# Appearance: background, colours and optics (realistic preset), independent of the stage
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Style:
    kind: str  # one of BACKGROUNDS
    background: np.ndarray  # RGB of the medium
    wall: np.ndarray  # RGB of cell walls / thin filaments
    lumen: np.ndarray  # RGB inside wide cells
    opacity: float
    texture: float  # relative amplitude of low-frequency mottling of the background
    texture_cells: int
    halo: float  # phase-contrast halo brightness (0: none)
    soften: float  # blur of the structures themselves (fuzzy colonies on agar)
    blur: float  # focus blur of the whole image (Gaussian radius, px)
    noise: float  # sensor noise std (grey levels)
    gradient: float  # illumination slope across the field
    gradient_angle: float
    vignette: float
    specks: int
    fibres: int
    debris_alpha: float


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1)))) * 255.0


def sample_style(rng: np.random.Generator, size: int, white: bool = True) -> Style:
    """Background, palette and optics of one realistic image; nothing here depends on the stage.

    ``white=True`` (the default) includes the flat-colour-on-white family (:data:`BACKGROUND_PROBS`);
    False draws the five microscopy families only, as before issue 21."""
    u = size / REFERENCE_SIZE
    if white:
        kind = BACKGROUNDS[int(rng.choice(len(BACKGROUNDS), p=BACKGROUND_PROBS))]
        if kind == "white":
            return _white_style(rng, u)
    else:
        kind = BACKGROUNDS[int(rng.choice(5, p=[0.25, 0.15, 0.25, 0.15, 0.2]))]
    tint = lambda s: 1.0 + rng.normal(0.0, s, 3)  # noqa: E731
    halo, soften, opacity = 0.0, 0.0, rng.uniform(0.75, 1.0)
    if kind == "brightfield":
        bg = rng.uniform(165, 240) * tint(0.04)
        wall, lumen = bg * rng.uniform(0.2, 0.55), bg * rng.uniform(0.72, 0.98)
    elif kind == "darkfield":
        bg = rng.uniform(4, 40) * tint(0.15)
        wall = rng.uniform(140, 250) * tint(0.08)
        lumen = bg + (wall - bg) * rng.uniform(0.3, 0.7)
    elif kind == "stained":
        h = rng.random()
        bg = _hsv(h + rng.normal(0, 0.03), rng.uniform(0.04, 0.25), rng.uniform(0.78, 0.96))
        wall = _hsv(h, rng.uniform(0.45, 0.95), rng.uniform(0.2, 0.6))
        lumen = _hsv(h, rng.uniform(0.3, 0.6), rng.uniform(0.5, 0.85))
    elif kind == "phase":
        bg = rng.uniform(80, 150) * tint(0.03)
        wall, lumen = bg * rng.uniform(0.2, 0.5), bg * rng.uniform(0.6, 0.9)
        halo = rng.uniform(40, 100)
    else:  # agar plate: pale, fuzzy colony on a tinted medium (mostly amber, sometimes chromogenic)
        h = rng.uniform(0.06, 0.14) if rng.random() < 0.7 else rng.random()
        bg = _hsv(h, rng.uniform(0.25, 0.75), rng.uniform(0.45, 0.9))
        wall = rng.uniform(200, 250) * tint(0.04)
        lumen, opacity, soften = wall * rng.uniform(0.85, 1.0), rng.uniform(0.6, 0.95), rng.uniform(0.3, 0.9) * u
    return Style(kind=kind, background=bg, wall=wall, lumen=lumen, opacity=float(opacity),
                 texture=rng.uniform(0.0, 0.08), texture_cells=int(rng.integers(3, 11)), halo=float(halo),
                 soften=float(soften), blur=float(rng.uniform(0.3, 1.7) * u if rng.random() < 0.6 else 0.0),
                 noise=rng.uniform(1.0, 10.0), gradient=rng.uniform(0.0, 0.5), gradient_angle=rng.uniform(0, 2 * np.pi),
                 vignette=rng.uniform(0.0, 0.6), specks=int(rng.poisson(rng.uniform(0, 25))),
                 fibres=int(rng.poisson(rng.uniform(0, 1.5))), debris_alpha=rng.uniform(0.4, 0.9))


def _white_style(rng: np.random.Generator, u: float) -> Style:
    """Flat, saturated colour of any hue on a white page, little optics: a drawing, not a micrograph."""
    colour = _hsv(rng.random(), rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return Style(kind="white", background=np.full(3, rng.uniform(238.0, 255.0)), wall=colour, lumen=colour,
                 opacity=float(rng.uniform(0.7, 1.0)), texture=0.0, texture_cells=3, halo=0.0, soften=0.0,
                 blur=float(rng.uniform(0.3, 1.0) * u if rng.random() < 0.3 else 0.0),
                 noise=float(rng.uniform(0.0, 3.0)), gradient=0.0, gradient_angle=0.0, vignette=0.0,
                 specks=0, fibres=0, debris_alpha=0.0)


@functools.lru_cache(maxsize=8)
def _field_coordinates(size: int) -> tuple[np.ndarray, np.ndarray]:
    """x and y in [-0.5, 0.5] over the image, (size, size) float32 each."""
    t = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    return np.meshgrid(t, t)


def _background(rng, style: Style, size: int) -> np.ndarray:
    """The medium with low-frequency mottling, (H, W, 3) float32."""
    coarse = rng.standard_normal((style.texture_cells, style.texture_cells)).astype(np.float32)
    mottle = np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BICUBIC))
    return (1.0 + style.texture * mottle)[..., None] * style.background.astype(np.float32)


def _illumination(style: Style, size: int) -> np.ndarray:
    x, y = _field_coordinates(size)
    ramp = np.cos(style.gradient_angle) * x + np.sin(style.gradient_angle) * y
    return 1.0 + style.gradient * ramp - style.vignette * (x * x + y * y)


def compose_realistic(rng, mask: Image.Image, debris: Image.Image, style: Style, size: int) -> np.ndarray:
    """Paint the coverage masks with the style: walls and lumens, halo, debris, optics, noise."""
    if style.soften > 0:
        mask = mask.filter(ImageFilter.GaussianBlur(style.soften))
    body = np.asarray(mask, dtype=np.float32) / 255.0
    inner = np.asarray(mask.filter(ImageFilter.MinFilter(3)), dtype=np.float32) / 255.0
    fg = (body - inner)[..., None] * style.wall.astype(np.float32) + inner[..., None] * style.lumen.astype(np.float32)
    img = _background(rng, style, size) * (1.0 - style.opacity * body)[..., None] + style.opacity * fg
    if style.halo > 0:
        glow = mask.filter(ImageFilter.GaussianBlur(2.5 * size / REFERENCE_SIZE))
        spread = np.asarray(glow, dtype=np.float32) / 255.0
        img += style.halo * np.clip(spread - body, 0.0, None)[..., None]
    dirt = (np.asarray(debris, dtype=np.float32) * (style.debris_alpha / 255.0))[..., None]
    img = img * (1.0 - dirt) + dirt * style.wall.astype(np.float32)
    img *= _illumination(style, size)[..., None]
    if style.blur > 0:
        blurred = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).filter(ImageFilter.GaussianBlur(style.blur))
        img = np.asarray(blurred, dtype=np.float32)
    img += rng.standard_normal((size, size, 1), dtype=np.float32) * np.float32(style.noise)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)


def compose_flat(mask: Image.Image, colour: tuple[int, int, int]) -> np.ndarray:
    """Flat anti-aliased colour on white, like a matplotlib drawing."""
    body = np.asarray(mask, dtype=np.float32)[..., None] / 255.0
    img = 255.0 - body * (255.0 - np.asarray(colour, dtype=np.float32))
    return np.clip(img + 0.5, 0, 255).astype(np.uint8)
