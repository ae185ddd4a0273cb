"""Geometry of the evaluation-only generator (:mod:`fungizsl.data.unseen_renderer`): how it grows.

Written apart from the training renderer (:mod:`fungizsl.data.render_shapes`, which splits
branches recursively into fans) and sharing no code with it. Everything here returns *capsules*:
rows ``x0, y0, x1, y1, r0, r1`` (pixels of the output image, y down), a segment whose radius runs
from ``r0`` to ``r1``; a circle is a capsule of zero length.

* :func:`persistent_walks`: young hyphae as tips that advance step by step with a persistent
  heading (a small random turn per step) and now and then leave a lateral branch behind the tip;
  septa (cross walls) at intervals along every filament.
* :func:`colonise`: mycelium by space colonisation (Runions et al. 2005, leaf venation): points
  of "food" fill the field, the nearest node of the network grows one step towards the food it
  sees, food that is reached is eaten; filament radii follow the pipe model (a node's radius grows
  with the number of tips it feeds), and some nearby tips fuse (anastomoses), closing loops.
* :func:`spore_cells`: spores of shapes the training renderer never draws: fusiform (spindle),
  curved septate (banana-shaped, with cross walls), clavate (club-shaped) and catenulate chains.
"""

from __future__ import annotations

import math

import numpy as np

SPORE_KINDS = ("fusiform", "septate", "clavate", "chain")
TWO_PI = 2.0 * math.pi


def capsule(x0, y0, x1, y1, r0, r1=None) -> np.ndarray:
    r1 = r0 if r1 is None else r1
    return np.array([[x0, y0, x1, y1, r0, r1]], dtype=np.float64)


def stack(parts) -> np.ndarray:
    parts = [p for p in parts if len(p)]
    return np.concatenate(parts) if parts else np.zeros((0, 6))


def cross_walls(points: np.ndarray, radius: float, every: int, width: float) -> np.ndarray:
    """Septa across a polyline: a short capsule perpendicular to it at every ``every``-th vertex."""
    if len(points) < 3 or every < 1:
        return np.zeros((0, 6))
    at = np.arange(every, len(points) - 1, every)
    direction = points[at + 1] - points[at - 1]
    direction /= np.maximum(np.linalg.norm(direction, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-direction[:, 1], direction[:, 0]], axis=1) * radius
    a, b = points[at] - normal, points[at] + normal
    return np.column_stack([a, b, np.full(len(at), width), np.full(len(at), width)])


def polyline_capsules(points: np.ndarray, radii: np.ndarray) -> np.ndarray:
    return np.column_stack([points[:-1], points[1:], radii[:-1], radii[1:]])


# ----------------------------------------------------------------------------------------------
# Young hyphae: persistent random walks with lateral branching
# ----------------------------------------------------------------------------------------------


def persistent_walks(rng: np.random.Generator, starts: np.ndarray, headings: np.ndarray, *, steps: int,
                     step: float, turn: float, branch_rate: float, radius: float, max_tips: int = 16,
                     septum_every: int = 0) -> tuple[np.ndarray, np.ndarray, dict]:
    """Grow one filament from every start; returns (capsules, septa capsules, facts).

    Every step a tip turns by Normal(0, ``turn``) radians and advances ``step`` px; with
    probability ``branch_rate`` a live filament starts a lateral two steps behind its tip, at 50 to
    85 degrees to either side, which grows the steps its parent has left times 0.7.
    """
    tips = [dict(path=[np.asarray(s, float)], heading=float(h), left=steps, order=1)
            for s, h in zip(starts, headings)]
    done, branches = [], 0
    while tips:
        grown = []
        for tip in tips:
            if tip["left"] <= 0:
                done.append(tip)
                continue
            tip["heading"] += rng.normal(0.0, turn)
            tip["path"].append(tip["path"][-1] + step * np.array([math.cos(tip["heading"]), math.sin(tip["heading"])]))
            tip["left"] -= 1
            grown.append(tip)
            if len(tip["path"]) > 3 and rng.random() < branch_rate and len(tips) + len(grown) + len(done) < max_tips:
                side = rng.choice([-1.0, 1.0]) * rng.uniform(math.radians(50), math.radians(85))
                origin = tip["path"][-3]
                grown.append(dict(path=[origin], heading=tip["heading"] + side, left=int(tip["left"] * 0.7),
                                  order=tip["order"] + 1))
                branches += 1
        tips = grown
    caps, walls = [], []
    for tip in done:
        pts = np.asarray(tip["path"])
        if len(pts) < 2:
            continue
        taper = np.ones(len(pts)) * radius * (0.85 if tip["order"] > 1 else 1.0)
        taper[-1] *= 0.75  # hyphal tips are a little narrower
        caps.append(polyline_capsules(pts, taper))
        walls.append(cross_walls(pts, taper[0] * 1.05, septum_every, max(0.35, 0.3 * radius)))
    facts = {"filaments": len(done), "laterals": branches, "ends": np.array([t["path"][-1] for t in done]),
             "depth": max((t["order"] for t in done), default=0), "segments": sum(len(c) for c in caps)}
    return stack(caps), stack(walls), facts


# ----------------------------------------------------------------------------------------------
# Mycelium: space colonisation, pipe-model radii, anastomoses
# ----------------------------------------------------------------------------------------------


def colonise(rng: np.random.Generator, roots: np.ndarray, food: np.ndarray, *, step: float, reach: float,
             eat: float, max_nodes: int = 2500, max_rounds: int = 120) -> tuple[np.ndarray, np.ndarray]:
    """Space colonisation: returns nodes (n, 2) and each node's parent index (-1 for a root)."""
    roots, food = np.asarray(roots, float).reshape(-1, 2), np.asarray(food, float).reshape(-1, 2)
    nodes = np.zeros((max_nodes + len(roots), 2))
    parent = np.full(len(nodes), -1)
    nodes[: len(roots)], n = roots, len(roots)
    # the nearest node of every food point, kept up to date as nodes are added
    d = np.linalg.norm(food[:, None, :] - roots[None, :, :], axis=-1)
    nearest, dist = d.argmin(1), d.min(1)
    alive = dist > eat
    for _ in range(max_rounds):
        seen = np.flatnonzero(alive & (dist < reach))
        if not len(seen) or n >= max_nodes:
            break
        vec = food[seen] - nodes[nearest[seen]]
        vec /= np.maximum(np.hypot(vec[:, 0], vec[:, 1]), 1e-9)[:, None]
        owners, slot = np.unique(nearest[seen], return_inverse=True)
        owners, slot = owners[: max_nodes - n], slot
        pull = np.stack([np.bincount(slot, vec[:, 0], len(owners) + 1)[: len(owners)],
                         np.bincount(slot, vec[:, 1], len(owners) + 1)[: len(owners)]], axis=1)
        pull /= np.maximum(np.hypot(pull[:, 0], pull[:, 1]), 1e-9)[:, None]
        pull += rng.normal(0.0, 0.18, pull.shape)  # a little wander
        pull /= np.maximum(np.hypot(pull[:, 0], pull[:, 1]), 1e-9)[:, None]
        new = nodes[owners] + step * pull
        nodes[n: n + len(new)], parent[n: n + len(new)] = new, owners
        live = np.flatnonzero(alive)  # eaten food no longer matters
        gap = food[live, None, :] - new[None, :, :]
        dn = gap[..., 0] ** 2 + gap[..., 1] ** 2
        best = dn.argmin(1)
        closest = np.sqrt(dn[np.arange(len(live)), best])
        closer = closest < dist[live]
        nearest[live] = np.where(closer, n + best, nearest[live])
        dist[live] = np.minimum(dist[live], closest)
        alive[live] = dist[live] > eat
        n += len(new)
    return nodes[:n], parent[:n]


def pipe_radii(parent: np.ndarray, tip_radius: float, exponent: float = 2.5, cap: float = 3.0) -> np.ndarray:
    """Radius of every node: ``tip_radius * tips_fed ** (1 / exponent)``, at most ``cap`` tip radii."""
    n = len(parent)
    fed = np.zeros(n)
    children = np.bincount(parent[parent >= 0], minlength=n)
    fed[children == 0] = 1.0
    for i in range(n - 1, -1, -1):  # children always come after their parent
        if parent[i] >= 0:
            fed[parent[i]] += fed[i]
    return tip_radius * np.minimum(fed ** (1.0 / exponent), cap)


def network_capsules(nodes: np.ndarray, parent: np.ndarray, radii: np.ndarray) -> np.ndarray:
    child = np.flatnonzero(parent >= 0)
    p = parent[child]
    return np.column_stack([nodes[p], nodes[child], radii[p], radii[child]])


def branch_orders(parent: np.ndarray) -> np.ndarray:
    """Branching order of every node: 1 on the main filament from a root, +1 after each fork."""
    n = len(parent)
    children = np.bincount(parent[parent >= 0], minlength=n)
    order = np.ones(n, dtype=int)
    for i in range(n):
        if parent[i] >= 0:
            order[i] = order[parent[i]] + (1 if children[parent[i]] > 1 else 0)
    return order


def anastomoses(rng: np.random.Generator, nodes: np.ndarray, parent: np.ndarray, radius: float,
                within: float, count: int) -> np.ndarray:
    """Fusions: up to ``count`` bridges between tips and other nodes closer than ``within`` px."""
    children = np.bincount(parent[parent >= 0], minlength=len(parent))
    tips = np.flatnonzero(children == 0)
    if len(tips) < 2 or count <= 0:
        return np.zeros((0, 6))
    picked = rng.permutation(tips)[: 4 * count]
    d = np.linalg.norm(nodes[picked][:, None, :] - nodes[None, :, :], axis=-1)
    d[np.arange(len(picked)), picked] = np.inf
    d[np.arange(len(picked)), np.where(parent[picked] >= 0, parent[picked], picked)] = np.inf
    target, gap = d.argmin(1), d.min(1)
    ok = np.flatnonzero((gap < within) & (gap > 0.5 * radius))[:count]
    a, b = nodes[picked[ok]], nodes[target[ok]]
    return np.column_stack([a, b, np.full(len(ok), radius), np.full(len(ok), radius)])


# ----------------------------------------------------------------------------------------------
# Spores
# ----------------------------------------------------------------------------------------------


def spore_cells(rng: np.random.Generator, kind: str, centres: np.ndarray,
                scale: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Spores of ``kind`` (one of :data:`SPORE_KINDS`) at ``centres``; ``scale`` is px per reference px.

    Returns (capsules, septa capsules, facts: count, mean aspect and semi-major axis in px).
    """
    caps, walls, aspects, majors = [], [], [], []
    for cx, cy in centres:
        angle = rng.uniform(0, TWO_PI)
        ax, ay = math.cos(angle), math.sin(angle)
        if kind == "fusiform":  # spindle: two cones meeting at the widest point, pointed ends
            half = scale * rng.uniform(5.0, 9.0)
            r = half * rng.uniform(0.32, 0.45)
            tip = 0.12 * r
            caps.append(capsule(cx - half * ax, cy - half * ay, cx, cy, tip, r))
            caps.append(capsule(cx, cy, cx + half * ax, cy + half * ay, r, tip))
            aspects.append(r / half)
            majors.append(half)
        elif kind == "septate":  # curved, banana-shaped macroconidium with 2 to 5 cross walls
            half, r = scale * rng.uniform(8.0, 14.0), scale * rng.uniform(1.8, 2.8)
            bend = rng.choice([-1, 1]) * rng.uniform(0.25, 0.6)
            t = np.linspace(-1.0, 1.0, 9)
            along, across = t * half, bend * half * (t ** 2 - 1.0) * 0.5
            pts = np.column_stack([cx + along * ax - across * ay, cy + along * ay + across * ax])
            radii = r * np.clip(1.15 - 0.75 * np.abs(t) ** 3, 0.3, None)
            caps.append(polyline_capsules(pts, radii))
            cells = int(rng.integers(3, 7))
            at = np.round(np.linspace(0, 8, cells + 1)[1:-1]).astype(int)
            walls.append(cross_walls(pts, r * 0.95, 1, max(0.35, 0.22 * r))[np.clip(at - 1, 0, 6)])
            aspects.append(r / half)
            majors.append(half)
        elif kind == "clavate":  # club: narrow foot, rounded head, 1 to 3 cross walls
            half, head = scale * rng.uniform(6.0, 10.0), scale * rng.uniform(2.6, 4.2)
            foot = head * rng.uniform(0.3, 0.45)
            x0, y0, x1, y1 = cx - half * ax, cy - half * ay, cx + half * ax, cy + half * ay
            caps.append(capsule(x0, y0, x1, y1, foot, head))
            pts = np.column_stack([np.linspace(x0, x1, 6), np.linspace(y0, y1, 6)])
            walls.append(cross_walls(pts, head * 0.85, int(rng.integers(1, 3)) + 1, max(0.35, 0.2 * head)))
            aspects.append(head / (half + 0.5 * head))
            majors.append(half + 0.5 * head)
        elif kind == "chain":  # catenulate: 4 to 10 round conidia in a gently curving row
            r = scale * rng.uniform(1.5, 2.6)
            n = int(rng.integers(4, 11))
            heading = angle + np.cumsum(rng.normal(0.0, 0.18, n))
            steps = 1.9 * r * np.column_stack([np.cos(heading), np.sin(heading)])
            pts = np.array([cx, cy]) + np.cumsum(steps, axis=0) - steps.sum(0) / 2
            caps.append(np.column_stack([pts, pts, np.full(n, r), np.full(n, r)]))
            aspects.extend([1.0] * n)
            majors.extend([r] * n)
        else:
            raise ValueError(f"unknown spore kind {kind!r}; valid kinds: {', '.join(SPORE_KINDS)}")
    facts = {"spores": len(majors), "spore_aspect": float(np.mean(aspects)) if aspects else 0.0,
             "spore_radius": float(np.mean(majors)) if majors else 0.0}
    return stack(caps), stack(walls), facts
