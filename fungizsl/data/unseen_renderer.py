"""An independent growth-stage generator, for evaluation only: the "unseen generator" number.

Issue 21 (part 3): a model that scores 0.955 on its own renderer's test split fell to chance on
images drawn by someone else's generator. The robustness splits of :mod:`fungizsl.data.robustness`
re-render the training renderer's scenes, so they cannot see that. This module is a second
renderer, written apart from the training one and sharing none of its code:

* other drawing code: shapes are capsules (segments with a radius running from one end to the
  other) rasterised here from their signed distance with analytic anti-aliasing, in numpy; no
  PIL drawing, no supersampling (the training renderer fills PIL polygons and lines);
* another way to grow (:mod:`fungizsl.data.unseen_growth`): young hyphae as persistent random
  walks with lateral branches and septa, mycelium by space colonisation with pipe-model widths and
  anastomoses (the training renderer splits branches recursively into fans);
* other spores: fusiform, curved septate, clavate, and chains (the training renderer draws
  ellipses);
* other looks (:data:`STYLES`): fluorescence (glowing walls on black), DIC relief (embossed on
  grey), ink sketch (outlines and hatching on paper), and flat vector art; colour never depends on
  the stage.

The stages mean the same: ``spore`` shows spores only; ``hyphae`` a few young filaments growing
from spores, sparsely branched; ``mycelium`` a dense, interconnected network over the field.
``germinating_spore`` and ``sporulating_hyphae`` exist so five-class runs can be evaluated too.

It never feeds training or selection: only :mod:`fungizsl.data.robustness` imports it, for the
``test_unseen*`` splits, which the trainer evaluates once after training (tests/test_generators.py
checks the import graph). An image is a pure function of (stage, index, seed, config), from a
random stream of its own (never the training renderer's). Magnification is drawn from one uniform
number, so the zoom conditions show the same scenes at other scales.
"""

from __future__ import annotations

import colorsys
import dataclasses
import math
import zlib
from collections.abc import Sequence

import numpy as np
from PIL import Image

from fungizsl.data import unseen_growth as growth
from fungizsl.data.scene_params import SceneParams, colour_name

STAGES = ("spore", "hyphae", "mycelium")
ALL_STAGES = STAGES + ("germinating_spore", "sporulating_hyphae")
STYLES = ("fluorescence", "dic", "sketch", "vector")
CAPTION_BACKGROUND = {"fluorescence": "darkfield", "dic": "phase", "sketch": "white", "vector": "white"}
MAGNIFICATION = (0.75, 1.4)  # its own default range (the training renderer draws 0.6 .. 1.7)
REFERENCE_SIZE = 224.0  # lengths are in pixels of a 224 px image at magnification 1
FAR = 3.0  # px: signed distances beyond this are not recorded (the styles read them only near edges)


@dataclasses.dataclass(frozen=True)
class UnseenConfig:
    image_size: int = 224
    stages: tuple[str, ...] = STAGES
    magnification: tuple[float, float] = MAGNIFICATION

    def __post_init__(self):
        object.__setattr__(self, "stages", tuple(self.stages))
        bad = [s for s in self.stages if s not in ALL_STAGES]
        if bad or not self.stages:
            raise ValueError(f"unseen generator: unknown stage(s) {bad}; valid stages: {', '.join(ALL_STAGES)}")
        if self.image_size < 16:
            raise ValueError(f"image_size must be at least 16, got {self.image_size}")
        lo, hi = self.magnification
        if not 0.0 < lo <= hi:
            raise ValueError(f"magnification must be (low, high) with 0 < low <= high, got {self.magnification}")


def unseen_rng(stage: str, index: int, seed: int) -> np.random.Generator:
    for name, value in (("index", index), ("seed", seed)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
            raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return np.random.default_rng([int(seed), zlib.crc32(f"unseen/{stage}".encode()), int(index), 21])


# ----------------------------------------------------------------------------------------------
# Rasterising capsules from their signed distance
# ----------------------------------------------------------------------------------------------


def rasterise(caps: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(coverage, signed distance) of the union of ``caps`` on a size x size grid, float32 each.

    Coverage is ``clip(0.5 - d, 0, 1)`` per capsule (d in px), combined by maximum; a capsule
    thinner than a pixel is drawn one pixel wide at its width's fraction of full strength.
    Capsules are evaluated in buckets of equal bounding-box size, all of a bucket at once.
    """
    cover = np.zeros(size * size, np.float32)
    dist = np.full(size * size, np.float32(FAR))
    if len(caps) == 0:
        return cover.reshape(size, size), dist.reshape(size, size)
    a, b, r0, r1 = caps[:, 0:2], caps[:, 2:4], caps[:, 4], caps[:, 5]
    reach = np.maximum(np.maximum(r0, r1), 0.5) + 1.5
    lo = np.floor(np.minimum(a, b) - reach[:, None]).astype(int)
    side = np.ceil(np.abs(a - b).max(1) + 2 * reach).astype(int) + 1
    keep = np.all(lo < size, axis=1) & np.all(lo + side[:, None] > 0, axis=1)
    bucket = np.maximum(3, np.ceil(np.log2(np.maximum(side, 1)))).astype(int)
    for level in np.unique(bucket[keep]):
        idx = np.flatnonzero(keep & (bucket == level))
        s = min(2 ** int(level), 2 * size)
        for chunk in np.array_split(idx, max(1, len(idx) * s * s // 400_000 + 1)):
            _splat(caps[chunk], lo[chunk], s, size, cover, dist)
    return cover.reshape(size, size), dist.reshape(size, size)


def _splat(caps, lo, s, size, cover, dist) -> None:
    grid = np.arange(s, dtype=np.float32) + 0.5
    px = lo[:, 0, None, None] + grid[None, None, :]  # (n, 1, s)
    py = lo[:, 1, None, None] + grid[None, :, None]  # (n, s, 1)
    ax, ay, bx, by = (caps[:, i, None, None].astype(np.float32) for i in range(4))
    r0, r1 = caps[:, 4, None, None].astype(np.float32), caps[:, 5, None, None].astype(np.float32)
    dx, dy = bx - ax, by - ay
    t = np.clip(((px - ax) * dx + (py - ay) * dy) / np.maximum(dx * dx + dy * dy, 1e-9), 0.0, 1.0)
    radius = r0 + t * (r1 - r0)
    centre = np.hypot(px - (ax + t * dx), py - (ay + t * dy))
    d = centre - radius
    thin = np.minimum(1.0, 2.0 * np.maximum(radius, 0.0))
    c = np.clip(0.5 - (centre - np.maximum(radius, 0.5)), 0.0, 1.0) * thin
    ix, iy = np.broadcast_arrays(px.astype(int), py.astype(int))
    ok = (ix >= 0) & (ix < size) & (iy >= 0) & (iy < size) & (d < FAR)
    flat = (iy * size + ix)[ok]
    np.maximum.at(cover, flat, c[ok])
    np.minimum.at(dist, flat, d[ok])


def blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of a 2-D or 3-D (H, W, C) float array, edges clamped."""
    if sigma <= 0.05:
        return image
    radius = max(1, int(math.ceil(3 * sigma)))
    x = np.arange(-radius, radius + 1, dtype=np.float32)
    kernel = np.exp(-0.5 * (x / sigma) ** 2)
    kernel /= kernel.sum()
    out = image
    for axis in (0, 1):
        pad = [(0, 0)] * image.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="edge")
        out = sum(w * np.take(padded, np.arange(i, i + image.shape[axis]), axis=axis) for i, w in enumerate(kernel))
    return out.astype(np.float32)


def smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """Low-frequency noise in about [-1, 1], (size, size) float32."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    return np.asarray(Image.fromarray(coarse, mode="F").resize((size, size), Image.BILINEAR))


# ----------------------------------------------------------------------------------------------
# Scenes: what each stage shows, as capsules
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Scene:
    body: np.ndarray  # capsules of cells and filaments
    walls: np.ndarray  # septa (cross walls)
    facts: dict


def _spore_centres(rng, n: int, size: int, margin: float = 0.04) -> tuple[np.ndarray, str]:
    if rng.random() < 0.6:
        return rng.uniform(margin * size, (1 - margin) * size, (n, 2)), "scattered"
    hubs = rng.uniform(0.2 * size, 0.8 * size, (int(rng.integers(1, 4)), 2))
    spread = size * rng.uniform(0.06, 0.14)
    return hubs[rng.integers(0, len(hubs), n)] + rng.normal(0, spread, (n, 2)), "clustered"


def _spores(rng, size, scale, density, mag):
    kind = growth.SPORE_KINDS[int(rng.integers(len(growth.SPORE_KINDS)))]
    n = int(np.clip(round(density * rng.uniform(10, 34) / mag ** 2 / (5 if kind == "chain" else 1)), 2, 120))
    centres, arrangement = _spore_centres(rng, n, size)
    body, walls, facts = growth.spore_cells(rng, kind, centres, scale)
    facts["arrangement"] = "chains" if kind == "chain" else arrangement
    return body, walls, facts, kind


def _walk_args(rng, scale, steps):
    return dict(steps=steps, step=max(2.4 * scale, 0.8), turn=rng.uniform(0.07, 0.2),
                branch_rate=rng.uniform(0.02, 0.06), radius=rng.uniform(0.9, 1.5) * scale,
                septum_every=int(rng.integers(5, 10)))


def build_scene(rng: np.random.Generator, stage: str, size: int, mag: float) -> Scene:
    scale = size / REFERENCE_SIZE * mag
    density = float(np.exp(rng.uniform(math.log(0.7), math.log(1.4))))
    if stage == "spore":
        body, walls, facts, _ = _spores(rng, size, scale, density, mag)
        return Scene(body, walls, facts)
    if stage in ("hyphae", "germinating_spore", "sporulating_hyphae"):
        kind = growth.SPORE_KINDS[int(rng.integers(3))]  # germlings grow from single spores, not chains
        n = int(np.clip(round(density * rng.uniform(1.5, 5.5) / mag ** 2), 1, 10))
        if stage == "germinating_spore":
            n = int(np.clip(round(density * rng.uniform(6, 18) / mag ** 2), 2, 60))
        centres = rng.uniform(0.15 * size, 0.85 * size, (n, 2))
        spores, spore_walls, facts = growth.spore_cells(rng, kind, centres, scale)
        tubes = rng.integers(1, 3, n)
        starts = np.repeat(centres, tubes, axis=0)
        headings = rng.uniform(0, 2 * math.pi, len(starts))
        steps = int(rng.integers(3, 9)) if stage == "germinating_spore" else int(rng.integers(18, 42))
        args = _walk_args(rng, scale, steps)
        if stage == "germinating_spore":
            args.update(branch_rate=0.0, septum_every=0, radius=args["radius"] * 0.8)
        fil, walls, grown = growth.persistent_walks(rng, starts, headings, max_tips=max(8, 3 * n), **args)
        facts.update(colonies=n, initial=int(tubes.max()), depth=grown["depth"], segments=grown["segments"],
                     tips=grown["filaments"],
                     width=2 * args["radius"], germ_tubes=len(starts) if stage == "germinating_spore" else 0)
        parts = [spores, fil]
        if stage == "sporulating_hyphae":
            parts.append(_conidiophores(rng, fil, scale, facts))
        return Scene(growth.stack(parts), growth.stack([spore_walls, walls]), facts)
    if stage == "mycelium":
        n_food = int(np.clip(density * rng.uniform(260, 520) / mag ** 2, 150, 550))
        if rng.random() < 0.35:  # patchy: the network thins out between a few dense areas
            hubs = rng.uniform(0.15 * size, 0.85 * size, (int(rng.integers(2, 5)), 2))
            food = hubs[rng.integers(0, len(hubs), n_food)] + rng.normal(0, size * rng.uniform(0.18, 0.3), (n_food, 2))
        else:
            food = rng.uniform(-0.05 * size, 1.05 * size, (n_food, 2))
        roots = rng.uniform(0.0, size, (int(rng.integers(2, 7)), 2))
        shown = rng.random() < 0.5  # some networks still show the spores they grew from
        kind = growth.SPORE_KINDS[int(rng.integers(3))]
        spores, spore_walls, facts = growth.spore_cells(rng, kind, roots, scale)
        step = max(3.0 * scale, 1.6)
        nodes, parent = growth.colonise(rng, roots, food, step=step, reach=rng.uniform(18, 32) * max(scale, 0.35),
                                        eat=max(3.5 * scale, 1.9))
        tip = rng.uniform(0.55, 0.9) * scale
        radii = growth.pipe_radii(parent, tip)
        net = growth.network_capsules(nodes, parent, radii)
        fused = growth.anastomoses(rng, nodes, parent, tip, within=6 * max(scale, 0.4), count=int(rng.integers(4, 16)))
        facts = (facts if shown else {}) | {
            "colonies": len(roots), "initial": 1, "segments": len(net) + len(fused),
            "tips": int(np.sum(np.bincount(parent[parent >= 0], minlength=len(parent)) == 0)),
            "depth": int(growth.branch_orders(parent).max()), "width": 2 * tip, "fusions": len(fused)}
        return Scene(growth.stack([net, fused] + [spores] * shown), spore_walls if shown else np.zeros((0, 6)), facts)
    raise ValueError(f"unseen generator: unknown stage {stage!r}; valid stages: {', '.join(ALL_STAGES)}")


def _conidiophores(rng, filaments: np.ndarray, scale: float, facts: dict) -> np.ndarray:
    """Erect stalks from points of the filaments, each ending in a vesicle with radiating chains."""
    if not len(filaments):
        return np.zeros((0, 6))
    heads = int(rng.integers(2, 6))
    base = filaments[rng.integers(0, len(filaments), heads), 0:2]
    stalks, _, grown = growth.persistent_walks(rng, base, rng.uniform(0, 2 * math.pi, heads),
                                               steps=int(rng.integers(5, 10)), step=max(2.4 * scale, 0.8),
                                               turn=0.05, branch_rate=0.0, radius=0.8 * scale, max_tips=heads)
    parts, r = [stalks], 1.1 * scale
    for x, y in grown["ends"]:
        parts.append(growth.capsule(x, y, x, y, 2.4 * scale))
        for angle in rng.uniform(0, 2 * math.pi, int(rng.integers(5, 9))):
            d = 2.4 * scale + r * (1 + 2 * np.arange(int(rng.integers(3, 6))))
            cx, cy = x + d * math.cos(angle), y + d * math.sin(angle)
            parts.append(np.column_stack([cx, cy, cx, cy, np.full(len(d), r), np.full(len(d), r)]))
    facts.update(conidiophores=len(grown["ends"]), chain_length=4)
    return growth.stack(parts)


# ----------------------------------------------------------------------------------------------
# Looks: four styles, none of them the training renderer's
# ----------------------------------------------------------------------------------------------


def _hsv(h: float, s: float, v: float) -> np.ndarray:
    return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))), np.float32)


def paint(rng: np.random.Generator, scene: Scene, size: int, scale: float) -> tuple[np.ndarray, dict]:
    """The image (float RGB in [0, 1]) of a scene in a style drawn here, and what the style was."""
    style = STYLES[int(rng.integers(len(STYLES)))]
    fill, dist = rasterise(scene.body, size)
    septa, _ = rasterise(scene.walls, size)
    septa *= fill
    wall = max(0.8, 0.9 * scale)  # outline thickness, px
    band = np.clip(0.5 + wall / 2 - np.abs(dist + wall / 2), 0.0, 1.0) * (dist < 1.0)
    band = np.maximum(band, np.where(fill > 0, np.minimum(fill, 1.0) * (dist > -wall), 0.0))
    if style == "fluorescence":
        fg = _hsv(rng.choice([0.33, 0.45, 0.55, 0.62, 0.83, 0.0]) + rng.normal(0, 0.02), rng.uniform(0.6, 1.0), 1.0)
        bg = _hsv(float(rng.random()), 0.5, rng.uniform(0.0, 0.08))
        light = 0.35 * fill + 0.65 * np.maximum(band, septa)
        light = light + rng.uniform(0.3, 0.7) * blur(light, rng.uniform(1.2, 2.6) * max(scale, 0.5))
        img = bg + rng.uniform(0.75, 1.0) * light[..., None] * fg
        img += rng.normal(0, 1, img.shape[:2])[..., None] * (0.01 + 0.04 * np.sqrt(np.clip(light, 0, 1)))[..., None]
        look = dict(colour=fg, medium=bg, blur=0.0, noise=6.0)
    elif style == "dic":
        bg = _hsv(float(rng.random()), rng.uniform(0.0, 0.15), rng.uniform(0.42, 0.66))
        height = blur(fill, max(0.6, 0.8 * scale))
        angle = rng.uniform(0, 2 * math.pi)
        ox, oy = int(round(math.cos(angle) * 1.5)) or 1, int(round(math.sin(angle) * 1.5))
        relief = np.roll(height, (oy, ox), axis=(0, 1)) - np.roll(height, (-oy, -ox), axis=(0, 1))
        img = bg * (1 - rng.uniform(0.05, 0.2) * fill)[..., None] + rng.uniform(0.25, 0.45) * relief[..., None]
        img = blur(img, rng.uniform(0.3, 0.7))
        img += rng.normal(0, 0.015, img.shape[:2])[..., None]
        look = dict(colour=bg * 0.6, medium=bg, blur=0.5, noise=4.0)
    elif style == "sketch":
        paper = _hsv(rng.uniform(0.08, 0.14), rng.uniform(0.04, 0.16), rng.uniform(0.9, 0.98))
        ink = _hsv(float(rng.choice([0.6, 0.07, 0.0])), rng.uniform(0.2, 0.7), rng.uniform(0.08, 0.32))
        period = rng.uniform(2.5, 4.5) * max(scale, 0.6)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
        hatch = (np.sin((xx + yy) * 2 * math.pi / period) > 0.55) * fill * (dist < -wall) * rng.uniform(0.0, 0.6)
        pressure = np.clip(0.8 + 0.25 * smooth_noise(rng, size, int(rng.integers(4, 9))), 0.4, 1.0)
        strokes = np.clip(np.maximum(band, septa) + hatch, 0, 1) * pressure
        grain = 1.0 + 0.035 * smooth_noise(rng, size, size // 3) + 0.02 * smooth_noise(rng, size, 6)
        img = paper * grain[..., None] * (1 - strokes[..., None]) + ink * strokes[..., None]
        look = dict(colour=ink, medium=paper, blur=0.0, noise=2.0)
    else:  # vector: flat colour with a dark outline
        bg = _hsv(float(rng.random()), rng.uniform(0.05, 0.25), rng.uniform(0.9, 0.98))
        body = _hsv(float(rng.random()), rng.uniform(0.4, 0.85), rng.uniform(0.45, 0.9))
        line = body * rng.uniform(0.2, 0.45)
        img = bg * (1 - fill[..., None]) + body * fill[..., None]
        edge = np.maximum(band * (dist > -wall), septa)
        img = img * (1 - edge[..., None]) + line * edge[..., None]
        look = dict(colour=body, medium=bg, blur=0.0, noise=0.0)
    look.update(style=style, coverage=float(fill.mean()))
    return np.clip(img, 0.0, 1.0), look


# ----------------------------------------------------------------------------------------------
# Public API
# ----------------------------------------------------------------------------------------------


def render_unseen(stage: str, index: int, seed: int = 0,
                  config: UnseenConfig | None = None) -> tuple[np.ndarray, SceneParams]:
    """One image of ``stage`` (uint8 [H, W, 3]) and its scene; a pure function of the arguments."""
    config = config or UnseenConfig()
    if stage not in ALL_STAGES:
        raise ValueError(f"unseen generator: unknown stage {stage!r}; valid stages: {', '.join(ALL_STAGES)}")
    rng = unseen_rng(stage, index, seed)
    lo, hi = config.magnification
    mag = float(math.exp(math.log(lo) + rng.random() * (math.log(hi) - math.log(lo))))
    size = config.image_size
    scene = build_scene(rng, stage, size, mag)
    image, look = paint(rng, scene, size, size / REFERENCE_SIZE * mag)
    return (image * 255.0 + 0.5).astype(np.uint8), describe(stage, size, mag, scene.facts, look)


def describe(stage: str, size: int, mag: float, facts: dict, look: dict) -> SceneParams:
    """The scene as the captioner reads it (lengths in px of a 224 px image)."""
    u = size / REFERENCE_SIZE
    spores = int(facts.get("spores", 0))
    return SceneParams(
        stage=stage, preset="unseen", image_size=size, magnification=round(mag, 4),
        coverage=round(look["coverage"], 5), spores=spores,
        spore_aspect=round(float(facts.get("spore_aspect", 0.0)), 4),
        spore_size=round(float(facts.get("spore_radius", 0.0)) / u, 3),
        spore_arrangement=facts.get("arrangement", "scattered"),
        germinated=spores if facts.get("germ_tubes") else 0, germ_tubes=int(facts.get("germ_tubes", 0)),
        colonies=int(facts.get("colonies", 0)) if stage != "germinating_spore" else 0,
        branch_depth=int(facts.get("depth", 0)) if stage != "germinating_spore" else 0,
        initial_branches=int(facts.get("initial", 0)) if stage != "germinating_spore" else 0,
        branches=int(facts.get("segments", 0)) if stage != "germinating_spore" else 0,
        branches_in_view=int(facts.get("segments", 0)) if stage != "germinating_spore" else 0,
        filament_width=round(float(facts.get("width", 0.0)) / u, 3),
        conidiophores=int(facts.get("conidiophores", 0)), chain_length=int(facts.get("chain_length", 0)),
        background=CAPTION_BACKGROUND[look["style"]], colour=colour_name(look["colour"] * 255),
        medium_colour=colour_name(look["medium"] * 255), blur=round(look["blur"], 3), noise=look["noise"])


class UnseenSource:
    """Records of the unseen generator, shaped as :class:`~fungizsl.data.sources.RenderedSource`'s:
    record ``i`` is image ``i // C`` of ``stages[i % C]``."""

    def __init__(self, stages: Sequence[str], n_per_stage: int, seed: int, config: UnseenConfig | None = None):
        self.config = dataclasses.replace(config or UnseenConfig(), stages=tuple(stages))
        self.stages, self.n_per_stage, self.seed = self.config.stages, int(n_per_stage), int(seed)
        if self.n_per_stage < 1 or self.seed < 0:
            raise ValueError(f"UnseenSource: n_per_stage must be >= 1 and seed >= 0, got {n_per_stage}, {seed}")

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.stages

    def __len__(self) -> int:
        return len(self.stages) * self.n_per_stage

    def __getitem__(self, index: int) -> dict:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"UnseenSource index {index} out of range [0, {len(self)})")
        label, render_index = index % len(self.stages), index // len(self.stages)
        image, scene = render_unseen(self.stages[label], render_index, self.seed, self.config)
        return {"image": image, "label": label, "stage": self.stages[label], "render_index": render_index,
                "scene": scene.to_json()}

    def __repr__(self) -> str:
        return f"UnseenSource(stages={self.stages}, n_per_stage={self.n_per_stage}, seed={self.seed})"
