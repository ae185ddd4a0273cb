"""The FungalZSL authors' image generator, written anew: the ``paper`` preset of :mod:`.synthetic`.

FungalZSL (Rani, Arroyo, Durdevic 2025, arXiv 2502.19038) trains on images drawn by a short
matplotlib script of theirs. This module draws the same fields with its own code (numpy for the
growth, PIL for the drawing); what it reproduces, and where each fact comes from:

[G] the authors' FungalZSL generator script (``generator.py`` of their "Fungi Growth Image
    Generator", the "Synthetic Fungi Generation" repository that arXiv 2502.19038 links; read from
    a stored public copy whose repository name the code index did not keep) and its README.
[F] ``PetarDurdevic/Funghi``: ``fungi.py`` and ``README.md`` (the same authors' time-aligned
    variant of the generator, arXiv 2501.02855).
[P] the FungalZSL paper as relayed by the project brief (spores round or elliptical; hyphae depth
    3 with 4 initial branches; mycelium depth 10 with 14; splits into 3 to 5; lengths scaled by
    Normal(1, 0.2); line drawings on white, yellow -> orange -> red with the stage).

* Field [G]: a 10 x 10 inch figure, axes [0, 1] x [0, 1] with equal aspect and no axis, saved at
  300 dpi with a tight box: the image is the field, 7.7 inches (2310 px) wide, white. A line
  width of ``w`` points is therefore ``w / 554.4`` of the field (:data:`POINTS_PER_FIELD`).
* Growth centres [G]: every image holds 10 of them (spores, hyphal colonies or mycelial
  colonies), centres uniform in [0.2, 0.8]^2 of the field: many small objects, not one colony.
* Spores [G]: filled circles of radius 0.02 of the field. Circles, although [P] says "round or
  elliptical": the script draws ``Circle`` patches only.
* Hyphae [G]: per centre a dot of radius 0.008 and a branching tree of initial length 0.06,
  depth 3, line width 2 pt, 4 initial branches; in half of the images 1 or 2 extra spores.
* Mycelium [G]: per centre a dot of radius 0.008 and a tree of initial length 0.2, depth 10,
  width 2 pt, 14 initial branches. The stored copy of [G] is cut off just where the mycelium
  image is assembled; by symmetry with the hyphae image we assume half of the images add 1 or 2
  hyphal colonies in the mycelium's colour (its ``include_hyphae`` option).
* Branching [G]: a branch of length L is drawn as a straight segment of length 0.7 L (times a
  Normal(1, 0.2) factor per branch: [F] and both READMEs; the stored copy of [G] has the plain
  0.7, set ``length_jitter=0`` for it) at alpha 0.8; it ends in 3 to 5 children, every child
  heading uniformly at random, with one length factor U(0.4, 0.6) and one width factor
  U(0.6, 1.0) per parent; the initial branches leave the centre at random headings with the
  drawn length, one level shallower. Growth stops at depth 0 or below a length of 0.005, so at
  the mycelium's lengths only 4 or 5 of its 10 levels are ever drawn.
* Colour [G]: per centre, linearly interpolated by the centre's height y in the field (0 at the
  bottom) between the stage's two end colours (:data:`STAGE_COLOURS`): spores mustard yellow ->
  light orange, hyphae light orange -> light red, mycelium orange -> red.
* Drawing (matplotlib's defaults, which [G] keeps): patches under lines (z-order 1 before 2),
  opaque, with a 1 pt edge in their own colour; lines at alpha 0.8 with projecting caps (half a
  width past each end).

What that makes, measured here: a hyphal colony is a cluster about 8 px across at 96 px (median;
5 to 12 px), a mycelium image about 10,000 strokes whose colonies cover much of the field.

Not from the authors: the two extra stages (``germinating_spore``: spores with 1 or 2 germ tubes,
a depth-1 tree; ``sporulating_hyphae``: hyphal colonies with clusters of small conidia at some
branch ends), and one approximation: a colony's strokes are painted as two layers (even and odd
branching levels, so they stack at every junction) where matplotlib stacks every stroke. On 40
images per stage at 96 px the painted fraction (1 - min channel) is 0.0107 / 0.0117 / 0.1325 for
spores / hyphae / mycelium against 0.0105 / 0.0123 / 0.135 for matplotlib renderings of the same
procedure (8 per stage). Shapes are drawn on a canvas of at least :data:`MIN_CANVAS` px and
box-filtered down to the image size, as the authors' 2310 px images are resized to a model's input.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
from PIL import Image, ImageDraw

POINTS_PER_FIELD = 72.0 * 7.7  # the field is 7.7 inches of a 10-inch figure: widths in points -> field units
FIELD_RANGE = (0.2, 0.8)  # centres are uniform in this square of the unit field
CENTRES = 10  # growth centres per image
SPORE_RADIUS = 0.02  # of the field
CENTRE_RADIUS = 0.008  # the dot at a hyphal or mycelial centre
LINE_ALPHA = 0.8
EDGE_WIDTH = 1.0  # points: matplotlib's default patch edge, drawn in the patch's colour around every circle
MIN_LENGTH = 0.005  # a branch shorter than this is not grown
MIN_CANVAS = 800  # px: lines are drawn at least this large, then box-filtered to the image size

# (bottom colour, top colour) per stage, RGB in [0, 1]; the extra stages' are this project's
STAGE_COLOURS = {
    "spore": ((1.0, 0.84, 0.0), (1.0, 0.8, 0.5)),
    "germinating_spore": ((1.0, 0.8, 0.0), (1.0, 0.62, 0.25)),
    "hyphae": ((1.0, 0.7, 0.0), (1.0, 0.4, 0.0)),
    "sporulating_hyphae": ((1.0, 0.6, 0.0), (1.0, 0.3, 0.0)),
    "mycelium": ((1.0, 0.5, 0.0), (1.0, 0.0, 0.0)),
}


@dataclasses.dataclass(frozen=True)
class Tree:
    """One recursive branching call of the authors' script: its first length, depth, width, initial branches."""

    length: float
    depth: int
    width: float  # points
    initial: int


HYPHA = Tree(length=0.06, depth=3, width=2.0, initial=4)
MYCELIUM = Tree(length=0.2, depth=10, width=2.0, initial=14)
GERM_TUBE = Tree(length=0.065, depth=1, width=2.0, initial=0)  # extension: one straight tube


@dataclasses.dataclass
class Field:
    """What one image holds, in field units (y up): cells, and line segments grouped by colony."""

    cells: list = dataclasses.field(default_factory=list)  # (x, y, radius, rgb, kind)
    colonies: list = dataclasses.field(default_factory=list)  # (segments (n, 6): x0 y0 x1 y1 width level, rgb)
    initial_branches: int = 0  # of the stage's main tree
    line_width: float = 0.0  # points, of the first branches
    germ_tubes: bool = False  # the strokes are germ tubes on spores, not colonies
    heads: list = dataclasses.field(default_factory=list)  # (x, y) of conidium clusters


def stage_colour(stage: str, y: float) -> tuple[float, float, float]:
    """The colour of a centre at height ``y`` of the field (interpolated between the stage's end colours)."""
    lo, hi = STAGE_COLOURS[stage]
    return tuple(float(np.clip(a + (b - a) * y, 0.0, 1.0)) for a, b in zip(lo, hi))


def grow(rng: np.random.Generator, x: float, y: float, tree: Tree, length_jitter: float = 0.2) -> np.ndarray:
    """All segments of one branching call from (x, y) as (n, 6) rows: x0, y0, x1, y1, width (pt), level.

    The calls of one depth are grown together, a wave at a time; every call follows the rule of the
    module docstring, so the drawn tree has the script's distribution (not its random sequence).
    """
    # pending calls: x, y, length, heading, depth, width, initial branches, level
    calls = np.array([[x, y, tree.length, rng.uniform(0.0, 2 * math.pi), tree.depth, tree.width, tree.initial, 0]])
    out = []
    while len(calls):
        calls = calls[(calls[:, 4] > 0) & (calls[:, 2] >= MIN_LENGTH)]
        n = len(calls)
        if n == 0:
            break
        factor = 0.7 * (rng.normal(1.0, length_jitter, n) if length_jitter > 0 else np.ones(n))
        drawn = calls[:, 2] * factor
        x0, y0, heading = calls[:, 0], calls[:, 1], calls[:, 3]
        x1, y1 = x0 + drawn * np.cos(heading), y0 + drawn * np.sin(heading)
        out.append(np.stack([x0, y0, x1, y1, calls[:, 5], calls[:, 7]], axis=1))
        kids = rng.integers(3, 6, n)  # 3 to 5 children at the end of every branch
        child_length = drawn * rng.uniform(0.4, 0.6, n)
        child_width = calls[:, 5] * rng.uniform(0.6, 1.0, n)
        parent = np.repeat(np.arange(n), kids)
        children = np.stack([x1[parent], y1[parent], child_length[parent], rng.uniform(0, 2 * math.pi, len(parent)),
                             calls[parent, 4] - 1, child_width[parent], np.zeros(len(parent)),
                             calls[parent, 7] + 1], axis=1)
        first = np.repeat(np.arange(n), calls[:, 6].astype(int))  # initial branches: from the centre again
        initial = np.stack([x0[first], y0[first], drawn[first], rng.uniform(0, 2 * math.pi, len(first)),
                            calls[first, 4] - 1, calls[first, 5], np.zeros(len(first)), calls[first, 7]], axis=1)
        calls = np.concatenate([children, initial])
    return np.concatenate(out) if out else np.zeros((0, 6))


def _centres(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.uniform(*FIELD_RANGE, (n, 2))


def _colonies(rng, field: Field, tree: Tree, n: int, length_jitter: float, colour_stage: str) -> None:
    if not field.colonies:
        field.initial_branches, field.line_width = tree.initial, tree.width
    for x, y in _centres(rng, n):
        rgb = stage_colour(colour_stage, y)
        field.cells.append((x, y, CENTRE_RADIUS, rgb, "centre"))
        field.colonies.append((grow(rng, x, y, tree, length_jitter), rgb))


def _spores(rng, field: Field, n: int, colour_stage: str = "spore") -> None:
    for x, y in _centres(rng, n):
        field.cells.append((x, y, SPORE_RADIUS, stage_colour(colour_stage, y), "spore"))


def build_field(rng: np.random.Generator, stage: str, length_jitter: float = 0.2) -> Field:
    """The growth centres, cells and branch segments of one image of ``stage``."""
    field = Field()
    if stage == "spore":
        _spores(rng, field, CENTRES)
    elif stage == "hyphae":
        _colonies(rng, field, HYPHA, CENTRES, length_jitter, stage)
        if rng.random() < 0.5:  # include_spores
            _spores(rng, field, int(rng.integers(1, 3)))
    elif stage == "mycelium":
        _colonies(rng, field, MYCELIUM, CENTRES, length_jitter, stage)
        if rng.random() < 0.5:  # include_hyphae (assumed, see the module docstring)
            _colonies(rng, field, HYPHA, int(rng.integers(1, 3)), length_jitter, "mycelium")
    elif stage == "germinating_spore":
        for x, y in _centres(rng, CENTRES):
            rgb = stage_colour(stage, y)
            field.cells.append((x, y, SPORE_RADIUS, rgb, "spore"))
            field.line_width, field.germ_tubes = GERM_TUBE.width, True
            tubes = [grow(rng, x, y, GERM_TUBE, length_jitter) for _ in range(int(rng.integers(1, 3)))]
            field.colonies.append((np.concatenate(tubes), rgb))
    elif stage == "sporulating_hyphae":
        _colonies(rng, field, HYPHA, CENTRES, length_jitter, stage)
        for segments, rgb in list(field.colonies):
            tips = segments[rng.choice(len(segments), min(3, len(segments)), replace=False)]
            for x, y in tips[:, 2:4]:
                field.heads.append((x, y))
                for dx, dy in rng.normal(0.0, 0.007, (int(rng.integers(4, 8)), 2)):
                    field.cells.append((x + dx, y + dy, 0.005, rgb, "conidium"))
    else:
        raise ValueError(f"the paper preset has no stage {stage!r}")
    return field


def _box(canvas: int, x: float, y: float, r: float) -> list[float]:
    cx, cy, rr = x * canvas, (1.0 - y) * canvas, r * canvas
    return [cx - rr, cy - rr, cx + rr, cy + rr]


def draw_field(field: Field, size: int, supersample: int = 2) -> tuple[np.ndarray, float]:
    """Paint a field on white: (uint8 [size, size, 3], fraction of the field covered).

    Cells first (matplotlib draws patches, z-order 1, under lines, z-order 2), opaque; then each
    colony's lines as two layers at alpha 0.8. Every layer is drawn on a canvas ``k`` times the
    image and box-filtered down, then composited at the image size.
    """
    k = max(supersample, math.ceil(MIN_CANVAS / size))
    canvas = size * k
    img = np.ones((size, size, 3), np.float32)
    opacity = np.zeros((size, size), np.float32)
    # each colony in two layers, even and odd branching levels: a branch and its children overlap
    # at every junction, and there matplotlib's strokes stack (alpha 0.96 where two meet)
    strokes = [((segments[segments[:, 5] % 2 == parity], rgb), LINE_ALPHA)
               for segments, rgb in field.colonies for parity in (0, 1)]
    for layer, alpha in [(field.cells, 1.0)] + strokes:
        if layer is field.cells:
            a, colour, window = _cell_layer(layer, canvas, k)
        else:
            a, colour, window = _line_layer(*layer, canvas, k) if len(layer[0]) else (None, None, None)
        if a is None:
            continue
        a = a * alpha
        img[window] = img[window] * (1.0 - a[..., None]) + a[..., None] * colour
        opacity[window] = 1.0 - (1.0 - opacity[window]) * (1.0 - a)
    return np.clip(img * 255.0 + 0.5, 0, 255).astype(np.uint8), float(opacity.mean())


def _cell_layer(cells, canvas: int, k: int):
    """Coverage (size, size), colour (size, size, 3) and window of the filled circles, or Nones."""
    if not cells:
        return None, None, None
    mask = Image.new("L", (canvas, canvas), 0)
    colours = Image.new("RGB", (canvas, canvas), (0, 0, 0))
    draw, cdraw = ImageDraw.Draw(mask), ImageDraw.Draw(colours)
    for x, y, r, rgb, _ in cells:
        box = _box(canvas, x, y, r + EDGE_WIDTH / (2 * POINTS_PER_FIELD))  # the patch's edge, same colour
        draw.ellipse(box, fill=255)
        cdraw.ellipse(box, fill=tuple(int(round(255 * c)) for c in rgb))
    a = np.asarray(mask.reduce(k), np.float32) / 255.0
    premultiplied = np.asarray(colours.reduce(k), np.float32) / 255.0
    return a, premultiplied / np.maximum(a, 1e-6)[..., None], (slice(None), slice(None))


def _line_layer(segments: np.ndarray, rgb, canvas: int, k: int):
    """Coverage of one colony's strokes within its bounding box (on the ``k`` grid; colonies are
    small), its colour (3,) and that window of the image, or Nones."""
    size = canvas // k
    width = segments[:, 4] / POINTS_PER_FIELD  # field units
    start, end = segments[:, 0:2], segments[:, 2:4]
    along = (end - start) / np.maximum(np.linalg.norm(end - start, axis=1), 1e-12)[:, None]
    cap = 0.5 * width[:, None] * along  # matplotlib's projecting caps: half a width past each end
    pts = np.concatenate([start - cap, end + cap], axis=1) * canvas
    pts[:, 1], pts[:, 3] = canvas - pts[:, 1], canvas - pts[:, 3]  # y up in the field, down in the image
    widths = np.maximum(1, np.rint(width * canvas)).astype(int)
    pad = int(widths.max()) + 1
    lo = np.floor((pts.reshape(-1, 2).min(0) - pad) / k).astype(int).clip(0, size)
    hi = np.ceil((pts.reshape(-1, 2).max(0) + pad) / k).astype(int).clip(0, size)
    if np.any(hi <= lo):
        return None, None, None
    mask = Image.new("L", tuple(int(v) for v in (hi - lo) * k), 0)
    draw = ImageDraw.Draw(mask)
    offset = np.tile(lo * k, 2)
    for xy, w in zip((pts - offset).tolist(), widths.tolist()):
        draw.line(xy, fill=255, width=w)
    window = (slice(int(lo[1]), int(hi[1])), slice(int(lo[0]), int(hi[0])))
    return np.asarray(mask.reduce(k), np.float32) / 255.0, np.asarray(rgb, np.float32), window


def field_facts(field: Field, size: int) -> dict:
    """What a viewer can count: spore-sized cells and colony dots, colonies, branching levels and
    segments (those in view), in pixels of an image of ``size``."""
    def inside(x, y):
        return 0.0 <= x <= 1.0 and 0.0 <= y <= 1.0

    cells = [c for c in field.cells if c[4] in ("spore", "centre") and inside(c[0], c[1])]
    segments = np.concatenate([s for s, _ in field.colonies]) if field.colonies else np.zeros((0, 6))
    xs, ys = segments[:, 0:4:2], segments[:, 1:4:2]
    in_view = ((xs >= 0) & (xs <= 1) & (ys >= 0) & (ys <= 1)).any(axis=1)
    spores = {"spores": len(cells), "spore_aspect": 1.0 if cells else 0.0,
              "spore_radius": float(np.mean([c[2] for c in cells])) * size if cells else 0.0}
    if field.germ_tubes:
        return spores | {"germinated": len(cells), "germ_tubes": int(in_view.sum())}
    return spores | {
        "conidiophores": sum(1 for x, y in field.heads if inside(x, y)),
        "colonies": sum(1 for c in field.cells if c[4] == "centre"),
        "branch_depth": int(segments[:, 5].max()) + 1 if len(segments) else 0,
        "initial_branches": field.initial_branches, "branches": len(segments),
        "branches_in_view": int(in_view.sum()),
        "filament_width": field.line_width / POINTS_PER_FIELD * size if len(segments) else 0.0}
