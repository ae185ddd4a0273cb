"""Geometry and rasterisation primitives for the synthetic fungal renderer (`fungizsl.data.synthetic`).

Everything here works in output-pixel coordinates (floats, origin top-left, x to the right, y down)
and is vectorised with numpy: a whole generation of branches, a whole field of spores or a whole
set of conidial chains is produced by a handful of array operations.  Only the final hand-off to
PIL's rasteriser loops in Python, one `ImageDraw` call per filament or cell.

Shapes come in two kinds:

* `Polylines`: filaments (hyphae, germ tubes, stalks, fibres) as an array of points (n, k, 2) with
  one stroke width per filament;
* polygons: cells (spores, conidia, debris) as an array of vertices (m, v, 2), always filled.

A `Morphology` (sampled per image by a preset in `synthetic`) fully describes what a stage looks
like; `build_scene` turns it into a `Scene` of shapes and `rasterise` paints the scene as a coverage
mask.  Hyphae and mycelium share one builder, so the two differ only through their morphology
parameters, which is what lets the overlap knob make them indistinguishable.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from PIL import Image, ImageDraw

TWO_PI = 2.0 * np.pi


@dataclasses.dataclass(frozen=True)
class Polylines:
    """n filaments of k points each, with one stroke width (pixels) per filament."""

    points: np.ndarray  # (n, k, 2) float
    widths: np.ndarray  # (n,) float
    generations: np.ndarray | None = None  # (n,) int: branching generation of each filament, if grown

    @staticmethod
    def empty(k: int = 2) -> "Polylines":
        return Polylines(np.zeros((0, k, 2)), np.zeros((0,)))

    def __len__(self) -> int:
        return len(self.points)


@dataclasses.dataclass(frozen=True)
class BranchSpec:
    """How one recursively branching network grows (FungalZSL: depth, initial branches, 3-5 splits).

    `depth` generations are grown; generation 0 has `initial_branches` branches per origin, and
    every branch of generation g < depth-1 splits into `children` (inclusive range) branches of
    generation g+1.  Branch lengths are `length * length_decay**g` times a Normal(1, length_jitter)
    factor, as in the paper (Normal(1, 0.2)).

    Growth cap.  Splitting into 3-5 children for 10 generations means 14 * 4**9 (about 3.7 million)
    branches for the paper's mycelium: far more than a 224 px image can show (every pixel would be
    painted hundreds of times) and minutes of drawing per image.  So at most `max_tips` branches of
    any generation stay alive (a uniformly random subset, leading branches first in the `lateral`
    style) and growth stops once `max_segments` branches exist.  All `depth` generations are still
    grown, so the network keeps its fine terminal branching and fills its area densely, while the
    cost per image is bounded by `max_segments` draw calls.
    """

    depth: int
    initial_branches: int
    length: float
    length_decay: float = 0.8
    length_jitter: float = 0.2
    children: tuple[int, int] = (3, 5)
    spread: float = np.radians(40.0)  # largest angle between a child and its parent's heading
    style: str = "fan"  # "fan": children fan out from the tip; "lateral": leader + side branches
    curvature: float = 0.0  # std (radians) of the heading change per sub-step
    substeps: int = 1  # points per branch - 1; >1 gives curved filaments
    width: float = 2.0
    width_decay: float = 0.9
    min_width: float = 1.0
    width_jitter: float = 0.0
    max_tips: int = 400
    max_segments: int = 2500
    origin_scatter: float = 0.0  # std (px) of where initial branches start around their origin


def grow_network(rng: np.random.Generator, origins: np.ndarray, spec: BranchSpec) -> Polylines:
    """Grow branching filaments from every origin; returns all branches of all generations."""
    origins = np.asarray(origins, dtype=np.float64).reshape(-1, 2)
    if len(origins) == 0 or spec.depth <= 0 or spec.initial_branches <= 0:
        return Polylines.empty(spec.substeps + 1)
    start, heading = _initial_branches(rng, origins, spec.initial_branches)
    if spec.origin_scatter > 0:  # a colony seen off-centre: many hyphae, no single hub
        start = start + rng.normal(0.0, spec.origin_scatter, start.shape)
    pieces, widths, generations, total = [], [], [], 0
    for generation in range(spec.depth):
        points, headings = _extend(rng, start, heading, spec, generation)
        pieces.append(points)
        widths.append(_branch_widths(rng, len(points), spec, generation))
        generations.append(np.full(len(points), generation))
        total += len(points)
        if generation == spec.depth - 1 or total >= spec.max_segments:
            break
        budget = min(spec.max_tips, spec.max_segments - total)
        start, heading = _spawn_children(rng, points, headings, spec, budget)
        if len(start) == 0:
            break
    return Polylines(np.concatenate(pieces), np.concatenate(widths), np.concatenate(generations))


def _initial_branches(rng, origins, per_origin):
    """Evenly spaced headings around each origin, randomly rotated and jittered."""
    m = len(origins)
    start = np.repeat(origins, per_origin, axis=0)
    base = np.tile(np.arange(per_origin) * (TWO_PI / per_origin), m)
    heading = np.repeat(rng.uniform(0.0, TWO_PI, m), per_origin) + base
    heading = heading + rng.normal(0.0, 0.6 / per_origin, m * per_origin)
    return start, heading


def _extend(rng, start, heading, spec, generation):
    """One generation of branches as (n, substeps+1, 2) points and their (n, substeps) headings."""
    n, k = len(start), spec.substeps
    scale = np.clip(rng.normal(1.0, spec.length_jitter, n), 0.25, None)
    length = spec.length * spec.length_decay**generation * scale
    turns = rng.normal(0.0, spec.curvature, (n, k)) if spec.curvature > 0 else np.zeros((n, k))
    headings = heading[:, None] + np.cumsum(turns, axis=1)
    steps = np.stack([np.cos(headings), np.sin(headings)], axis=-1) * (length / k)[:, None, None]
    points = np.concatenate([start[:, None, :], start[:, None, :] + np.cumsum(steps, axis=1)], axis=1)
    return points, headings


def _branch_widths(rng, n, spec, generation):
    width = max(spec.width * spec.width_decay**generation, spec.min_width)
    if spec.width_jitter > 0:
        return np.maximum(width * rng.uniform(1 - spec.width_jitter, 1 + spec.width_jitter, n), spec.min_width)
    return np.full(n, width)


def _spawn_children(rng, points, headings, spec, budget):
    """Split every branch into 3-5 (spec.children) children, keeping at most `budget` of them."""
    n, k = len(points), spec.substeps
    lo, hi = spec.children
    counts = rng.integers(lo, hi + 1, n)
    parent = np.repeat(np.arange(n), counts)
    rank = np.arange(len(parent)) - np.repeat(np.cumsum(counts) - counts, counts)
    siblings = counts[parent]
    if spec.style == "fan":
        frac = np.where(siblings > 1, 2.0 * rank / np.maximum(siblings - 1, 1) - 1.0, 0.0)
        offset = spec.spread * frac + rng.normal(0.0, 0.15 * spec.spread, len(parent))
        at = np.full(len(parent), k)
        leading = np.zeros(len(parent), dtype=bool)
    else:  # lateral: child 0 continues the parent, the others leave sideways from along its length
        leading = rank == 0
        side = np.where(rank % 2 == 1, 1.0, -1.0) * np.repeat(rng.choice([-1.0, 1.0], n), counts)
        lateral = side * rng.uniform(0.45 * spec.spread, spec.spread, len(parent))
        offset = np.where(leading, rng.normal(0.0, 0.12, len(parent)), lateral)
        at = np.where(leading, k, rng.integers(1, k + 1, len(parent)))
    start = points[parent, at]
    heading = headings[parent, at - 1] + offset
    if len(parent) > budget:
        priority = rng.random(len(parent)) - leading
        keep = np.sort(np.argsort(priority, kind="stable")[:budget])
        start, heading = start[keep], heading[keep]
    return start, heading


def ellipse_polygons(centres, semi_major, semi_minor, angle, vertices: int = 16) -> np.ndarray:
    """Rotated ellipses as (m, vertices, 2) polygons."""
    t = np.linspace(0.0, TWO_PI, vertices, endpoint=False)
    a = np.asarray(semi_major, dtype=np.float64)[:, None]
    b = np.asarray(semi_minor, dtype=np.float64)[:, None]
    ca, sa = np.cos(angle)[:, None], np.sin(angle)[:, None]
    x, y = a * np.cos(t), b * np.sin(t)
    centres = np.asarray(centres, dtype=np.float64).reshape(-1, 2)
    return np.stack([centres[:, :1] + ca * x - sa * y, centres[:, 1:] + sa * x + ca * y], axis=-1)


def blob_polygons(rng, centres, radius, vertices: int = 7, roughness: float = 0.35) -> np.ndarray:
    """Irregular lumps (debris) as (m, vertices, 2) polygons."""
    m = len(centres)
    t = np.linspace(0.0, TWO_PI, vertices, endpoint=False)[None, :] + rng.uniform(0, TWO_PI, (m, 1))
    r = np.asarray(radius, dtype=np.float64)[:, None] * rng.uniform(1 - roughness, 1 + roughness, (m, vertices))
    return np.stack([centres[:, :1] + r * np.cos(t), centres[:, 1:] + r * np.sin(t)], axis=-1)


def random_walks(rng, starts, headings, length, substeps: int, curvature: float, widths) -> Polylines:
    """Single curved filaments (germ tubes, stalks, fibres): one per start point."""
    n = len(starts)
    turns = rng.normal(0.0, curvature, (n, substeps))
    h = np.asarray(headings, dtype=np.float64)[:, None] + np.cumsum(turns, axis=1)
    steps = np.stack([np.cos(h), np.sin(h)], axis=-1) * (np.asarray(length) / substeps).reshape(-1, 1, 1)
    starts = np.asarray(starts, dtype=np.float64).reshape(-1, 2)
    points = np.concatenate([starts[:, None, :], starts[:, None, :] + np.cumsum(steps, axis=1)], axis=1)
    return Polylines(points, np.broadcast_to(np.asarray(widths, dtype=np.float64), (n,)).copy())


def spore_chains(rng, anchors, headings, n_chains, chain_length, radius, fan: float) -> np.ndarray:
    """Conidial heads: from each anchor, `n_chains` chains of `chain_length` round conidia fanning out.

    Returns the conidia as (m, 12, 2) polygons.  Conidia shrink slightly towards the chain tip
    (the youngest conidium sits at the phialide in basipetal chains, but the sizes are close).
    """
    anchors = np.asarray(anchors, dtype=np.float64).reshape(-1, 2)
    h = len(anchors)
    if h == 0:
        return np.zeros((0, 12, 2))
    frac = np.linspace(-1.0, 1.0, n_chains) if n_chains > 1 else np.zeros(1)
    chain_heading = headings[:, None] + fan * frac[None, :] + rng.normal(0, 0.12, (h, n_chains))
    pos = np.arange(chain_length)
    sizes = radius * (1.0 - 0.25 * pos / max(chain_length - 1, 1))  # (L,)
    dist = np.cumsum(2.0 * sizes) - sizes + radius * 1.2
    cx = anchors[:, None, None, 0] + np.cos(chain_heading)[..., None] * dist
    cy = anchors[:, None, None, 1] + np.sin(chain_heading)[..., None] * dist
    centres = np.stack([cx, cy], axis=-1).reshape(-1, 2)
    r = np.broadcast_to(sizes, (h, n_chains, chain_length)).reshape(-1)
    return ellipse_polygons(centres, r, r * 0.92, rng.uniform(0, np.pi, len(r)), vertices=12)


def draw_polylines(draw: ImageDraw.ImageDraw, lines: Polylines, scale: float, canvas: int, fill: int = 255) -> None:
    """Stroke every filament; filaments entirely off the canvas are skipped."""
    if len(lines) == 0:
        return
    pts = lines.points * scale
    widths = np.maximum(1, np.rint(lines.widths * scale)).astype(int)
    visible = _on_canvas(pts, widths, canvas)
    pts, widths = pts[visible], widths[visible]
    for xy, w in zip(pts.reshape(len(pts), pts.shape[1] * 2).tolist(), widths.tolist()):
        draw.line(xy, fill=fill, width=w)


def draw_polygons(draw: ImageDraw.ImageDraw, polygons: np.ndarray, scale: float, canvas: int, fill: int = 255) -> None:
    """Fill every polygon; polygons entirely off the canvas are skipped."""
    if len(polygons) == 0:
        return
    pts = polygons * scale
    pts = pts[_on_canvas(pts, np.zeros(len(pts)), canvas)]
    for xy in pts.reshape(len(pts), pts.shape[1] * 2).tolist():
        draw.polygon(xy, fill=fill)


def _on_canvas(pts: np.ndarray, margin: np.ndarray, canvas: int) -> np.ndarray:
    lo, hi = pts.min(axis=1), pts.max(axis=1)
    return np.all((hi > -margin[:, None]) & (lo < canvas + margin[:, None]), axis=1)


# ----------------------------------------------------------------------------------------------
# Stage morphology -> scene of shapes -> coverage mask
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Morphology:
    """Everything that decides a stage's shapes in one image; lengths in output pixels."""

    size: int
    # spores (spore, germinating_spore; also the spores that hyphae grow from)
    spore_count: int = 0
    spore_radius: float = 4.0  # semi-major axis
    spore_aspect: tuple[float, float] = (0.6, 1.0)  # semi-minor / semi-major: round to elliptical
    arrangement: str = "scattered"  # "scattered" | "clustered" | "chains"
    # germ tubes (germinating_spore)
    germ_fraction: float = 0.0
    germ_length: float = 3.0  # in spore radii
    # branching networks (hyphae, mycelium, sporulating_hyphae)
    network: BranchSpec | None = None
    n_origins: int = 0
    origin_margin: float = 0.2  # origins uniform in [margin, 1 - margin] * size
    origin_spore_prob: float = 1.0  # chance that an origin shows the spore it grew from
    # conidiophores (sporulating_hyphae)
    heads: int = 0
    stalk_length: float = 20.0
    stalk_width: float = 1.5
    chains: int = 5
    chain_length: int = 5
    conidium_radius: float = 1.8
    # how the image was sampled (read by scene descriptions only, not by the shape builders)
    magnification: float = 1.0


@dataclasses.dataclass(frozen=True)
class Scene:
    """The shapes of one image, plus `facts`: counts of what was drawn (for scene descriptions)."""

    lines: tuple[Polylines, ...] = ()
    cells: tuple[np.ndarray, ...] = ()
    facts: dict = dataclasses.field(default_factory=dict)


def build_scene(rng: np.random.Generator, stage: str, morph: Morphology) -> Scene:
    """The shapes of one image of `stage`."""
    return _BUILDERS[stage](rng, morph)


def rasterise(scene: Scene, size: int, supersample: int = 1) -> Image.Image:
    """Paint a scene as an 8-bit coverage mask ("L" image, size x size), anti-aliased by supersampling."""
    canvas = size * supersample
    mask = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(mask)
    for lines in scene.lines:
        draw_polylines(draw, lines, supersample, canvas)
    for cells in scene.cells:
        draw_polygons(draw, cells, supersample, canvas)
    return mask.reduce(supersample) if supersample > 1 else mask


def spore_cells(rng: np.random.Generator, morph: Morphology, count: int):
    """Spore polygons plus their centres, semi-axes and orientations."""
    centres, angle = _spore_layout(rng, morph, count)
    major = morph.spore_radius * rng.uniform(0.8, 1.2, count)
    minor = major * rng.uniform(*morph.spore_aspect, count)
    return ellipse_polygons(centres, major, minor, angle), centres, major, minor, angle


def _spore_layout(rng, morph, count):
    s = morph.size
    angle = rng.uniform(0.0, np.pi, count)
    if morph.arrangement == "clustered":
        k = int(rng.integers(1, 5))
        hubs = rng.uniform(0.15 * s, 0.85 * s, (k, 2))
        spread = s * rng.uniform(0.05, 0.14)
        return hubs[rng.integers(0, k, count)] + rng.normal(0.0, spread, (count, 2)), angle
    if morph.arrangement == "chains":  # short chains of touching spores, as shed from a conidiophore
        per = int(rng.integers(3, 8))
        n_chains = -(-count // per)
        starts = rng.uniform(0.05 * s, 0.95 * s, (n_chains, 2))
        heading = rng.uniform(0.0, TWO_PI, n_chains)
        along = np.arange(per) * 2.1 * morph.spore_radius
        wobble = np.cumsum(rng.normal(0.0, 0.15, (n_chains, per)), axis=1)
        h = heading[:, None] + wobble
        xy = starts[:, None, :] + along[None, :, None] * np.stack([np.cos(h), np.sin(h)], axis=-1)
        return xy.reshape(-1, 2)[:count], h.reshape(-1)[:count]
    return rng.uniform(0.0, s, (count, 2)), angle


def _in_view(points: np.ndarray, size: int) -> np.ndarray:
    """Which points (..., 2) lie inside the field of view."""
    return np.all((points >= 0.0) & (points < size), axis=-1)


def _spore_facts(morph, centres, major, minor) -> dict:
    """Counts and mean shape (minor / major axis) and size (semi-major, px) of the spores in view."""
    seen = _in_view(centres, morph.size)
    return {"spores": int(seen.sum()),
            "spore_aspect": float(np.mean(minor[seen] / major[seen])) if seen.any() else 0.0,
            "spore_radius": float(np.mean(major[seen])) if seen.any() else 0.0}


def _build_spores(rng, morph):
    cells, centres, major, minor, _ = spore_cells(rng, morph, morph.spore_count)
    return Scene(cells=(cells,), facts=_spore_facts(morph, centres, major, minor))


def _build_germinating(rng, morph):
    cells, centres, major, minor, angle = spore_cells(rng, morph, morph.spore_count)
    germinated = rng.random(len(centres)) < morph.germ_fraction
    second = germinated & (rng.random(len(centres)) < 0.2)  # some spores germinate at both poles
    idx = np.concatenate([np.flatnonzero(germinated), np.flatnonzero(second)])
    pole = np.concatenate([np.zeros(germinated.sum()), np.full(second.sum(), np.pi)])
    heading = angle[idx] + pole + rng.normal(0.0, 0.3, len(idx))
    starts = centres[idx] + 0.8 * major[idx, None] * np.stack([np.cos(heading), np.sin(heading)], axis=-1)
    length = morph.germ_length * major[idx] * rng.uniform(0.5, 1.5, len(idx))
    tubes = random_walks(rng, starts, heading, length, 5, 0.18, minor[idx] * rng.uniform(0.35, 0.6, len(idx)))
    seen = _in_view(centres, morph.size)
    facts = dict(_spore_facts(morph, centres, major, minor), germinated=int((germinated & seen).sum()),
                 germ_tubes=int((germinated & seen).sum() + (second & seen).sum()))
    return Scene(lines=(tubes,), cells=(cells,), facts=facts)


def _build_network(rng, morph):
    s, margin = morph.size, morph.origin_margin
    origins = rng.uniform(margin * s, (1.0 - margin) * s, (morph.n_origins, 2))
    lines = grow_network(rng, origins, morph.network)
    shown = origins[rng.random(len(origins)) < morph.origin_spore_prob]
    major = morph.spore_radius * rng.uniform(0.85, 1.15, len(shown))
    minor = major * rng.uniform(*morph.spore_aspect, len(shown))
    cells = ellipse_polygons(shown, major, minor, rng.uniform(0.0, np.pi, len(shown)))
    return Scene(lines=(lines,), cells=(cells,), facts=_network_facts(morph, lines, shown, major, minor))


def _network_facts(morph, lines: Polylines, shown, major, minor) -> dict:
    """What a viewer can count in a network image: spores at the colony origins, branching
    generations grown, filaments in view, colonies."""
    spec = morph.network
    grown = int(lines.generations.max()) + 1 if len(lines) and lines.generations is not None else 0
    return dict(_spore_facts(morph, shown, major, minor), colonies=int(morph.n_origins), branch_depth=grown,
                initial_branches=int(spec.initial_branches), branches=len(lines),
                branches_in_view=int(_in_view(lines.points, morph.size).any(axis=1).sum()) if len(lines) else 0,
                filament_width=float(spec.width))


def _build_sporulating(rng, morph):
    base = _build_network(rng, morph)
    hyphae = base.lines[0]
    if len(hyphae) == 0 or morph.heads <= 0:
        return base
    # conidiophores rise sideways from random points of the hyphae and end in chains of conidia
    seg = rng.integers(0, len(hyphae), morph.heads)
    at = rng.integers(1, hyphae.points.shape[1], morph.heads)
    anchor = hyphae.points[seg, at]
    delta = hyphae.points[seg, at] - hyphae.points[seg, at - 1]
    side = rng.choice([-1.0, 1.0], morph.heads) * rng.uniform(1.0, 1.9, morph.heads)
    heading = np.arctan2(delta[:, 1], delta[:, 0]) + side
    length = morph.stalk_length * rng.uniform(0.7, 1.3, morph.heads)
    stalks = random_walks(rng, anchor, heading, length, 4, 0.08, morph.stalk_width)
    tip, before = stalks.points[:, -1], stalks.points[:, -2]
    tip_heading = np.arctan2(tip[:, 1] - before[:, 1], tip[:, 0] - before[:, 0])
    r = morph.conidium_radius
    vesicles = ellipse_polygons(tip, np.full(len(tip), 1.6 * r), np.full(len(tip), 1.4 * r), tip_heading)
    conidia = spore_chains(rng, tip, tip_heading, morph.chains, morph.chain_length, r, fan=1.1)
    facts = dict(base.facts, conidiophores=int(_in_view(tip, morph.size).sum()), chains=int(morph.chains),
                 chain_length=int(morph.chain_length))
    return Scene(lines=base.lines + (stalks,), cells=base.cells + (vesicles, conidia), facts=facts)


_BUILDERS = {
    "spore": _build_spores,
    "germinating_spore": _build_germinating,
    "hyphae": _build_network,
    "mycelium": _build_network,
    "sporulating_hyphae": _build_sporulating,
}


def debris_scene(rng: np.random.Generator, size: int, specks: int, fibres: int, scale: float) -> Scene:
    """Dust, crystals and fibres: clutter that belongs to no stage."""
    centres = rng.uniform(0.0, size, (specks, 2))
    radius = scale * rng.gamma(2.0, 0.6, specks) + 0.4
    lumps = blob_polygons(rng, centres, radius)
    starts = rng.uniform(0.0, size, (fibres, 2))
    length = size * rng.uniform(0.05, 0.25, fibres)
    heading, width = rng.uniform(0.0, TWO_PI, fibres), scale * rng.uniform(0.6, 1.2, fibres)
    strands = random_walks(rng, starts, heading, length, 6, 0.25, width)
    return Scene(lines=(strands,), cells=(lumps,))
