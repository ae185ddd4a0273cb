"""Optimizer for contrastive fine-tuning: AdamW with warm-up + cosine decay, gradient clipping,
no weight decay on norms, biases and the logit scale, optional frozen tower (LiT, Zhai et al.
2022) and layer-wise learning-rate decay (as in BEiT / ELECTRA fine-tuning).

Parameters are addressed by their '/'-joined path, e.g. `vision_model/encoder/layers_3/attn/query/kernel`
(or `.../encoder/layers/...` with a leading layer axis when the encoder is scanned).
"""

import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fungizsl.errors import ConfigError

# Leaves that get weight decay: matrices and token-embedding tables. Norm scales, biases,
# LayerScale, class/register tokens and the logit scale do not, and neither does any position
# table, whatever layer holds it (CLIP vision keeps its table in an nn.Embed, CLIP text as a bare
# param, BERT in an nn.Embed, DINOv2 as a bare param): one rule for all of them.
DECAYED_LEAVES = ("kernel", "embedding")
POSITION_TABLES = ("position_embedding", "position_embeddings")
_LAYER = re.compile(r"/layers_(\d+)/")


def param_paths(params) -> dict:
    """A tree like `params` whose leaves are their '/'-joined paths."""
    return jax.tree_util.tree_map_with_path(
        lambda path, _: "/".join(str(getattr(k, "key", k)) for k in path), params)


def weight_decay_mask(params):
    def decayed(path: str) -> bool:
        parts = path.split("/")
        return parts[-1] in DECAYED_LEAVES and not any(p in POSITION_TABLES for p in parts)

    return jax.tree.map(decayed, param_paths(params))


def check_steps(total_steps: int, warmup_steps: int, where: str = "config") -> None:
    """The schedule's step counts: ``total_steps`` positive, ``0 <= warmup_steps < total_steps``
    (a :class:`ConfigError` naming the fields of ``where`` otherwise)."""
    if total_steps <= 0:
        raise ConfigError(f"{where}.total_steps={total_steps} must be positive; set --{where}.total_steps")
    if not 0 <= warmup_steps < total_steps:
        raise ConfigError(f"{where}.warmup_steps={warmup_steps} must be at least 0 and below {where}.total_steps="
                          f"{total_steps}; lower --{where}.warmup_steps or raise --{where}.total_steps")


def check_schedules(config, where: str = "config") -> None:
    """:func:`check_steps` on ``config`` and on every block inside it that has both
    ``total_steps`` and ``warmup_steps`` (FungiCLEF's ``stage1``/``stage2``; one with
    ``total_steps=0`` is a stage switched off), before a run does any work: ``fungizsl.main``
    calls it before the trainer starts."""
    if not hasattr(config, "items"):
        return
    if "total_steps" in config and "warmup_steps" in config and (where == "config" or config["total_steps"] > 0):
        check_steps(config["total_steps"], config["warmup_steps"], where)
    for key, value in config.items():
        if hasattr(value, "items"):
            check_schedules(value, f"{where}.{key}")


def lr_schedule(base_lr: float, total_steps: int, warmup_steps: int, end_factor: float = 0.0):
    check_steps(total_steps, warmup_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=base_lr, warmup_steps=warmup_steps, decay_steps=total_steps,
        end_value=base_lr * end_factor)


def _encoder_depths(params) -> dict[str, int]:
    """Number of encoder layers per tower, keyed by the tower's path prefix ("" at the root)."""
    depths: dict[str, int] = {}
    for path, leaf in zip(jax.tree.leaves(param_paths(params)), jax.tree.leaves(params)):
        tower, sep, rest = ("/" + path).partition("/encoder/")
        if not sep:
            continue
        if rest.startswith("layers/"):
            depths[tower] = int(leaf.shape[0])
        elif (m := _LAYER.search("/" + rest)):
            depths[tower] = max(depths.get(tower, 0), int(m[1]) + 1)
    return depths


def layer_decay_multipliers(params, decay: float):
    """Per-leaf learning-rate multipliers, BEiT-style, per tower of depth L: block i gets
    decay**(L - i), the embeddings before the encoder decay**(L + 1), everything after it
    (final norms, projections, logit scale) 1. Scanned leaves get an [L, 1, ...] array."""
    depths = _encoder_depths(params)

    def multiplier(path, leaf):
        full = "/" + path
        towers = [t for t in depths if full.startswith(t + "/")]
        if not towers:
            return np.float32(1.0)
        tower = max(towers, key=len)
        depth = depths[tower]
        inside = full[len(tower):]
        if inside.startswith("/encoder/layers/"):
            scales = decay ** (depth - np.arange(depth, dtype=np.float32))
            return scales.reshape((depth,) + (1,) * (len(leaf.shape) - 1)).astype(np.float32)
        if inside.startswith("/encoder/"):
            return np.float32(decay ** (depth - int(_LAYER.search(inside)[1])))
        before_encoder = inside.startswith(("/embeddings/", "/pre_layrnorm/", "/token_embedding/",
                                            "/position_embedding"))
        return np.float32(decay ** (depth + 1) if before_encoder else 1.0)

    return jax.tree.map(multiplier, param_paths(params), params)


def scale_by_tree(multipliers) -> optax.GradientTransformation:
    def update(updates, state, params=None):
        del params
        return jax.tree.map(lambda u, m: u * jnp.asarray(m, u.dtype), updates, multipliers), state

    return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def make_optimizer(params, *, learning_rate: float, total_steps: int, warmup_steps: int,
                   weight_decay: float = 0.1, b1: float = 0.9, b2: float = 0.98, eps: float = 1e-6,
                   grad_clip_norm: float | None = 1.0, frozen: Sequence[str] = (),
                   layer_decay: float | None = None):
    """AdamW over `params`; `frozen` lists regexes of param paths that stay fixed (e.g.
    `("vision_model/.*", "visual_projection/.*")` for LiT). Returns (optimizer, schedule)."""
    schedule = lr_schedule(learning_rate, total_steps, warmup_steps)
    chain = []
    if grad_clip_norm:
        chain.append(optax.clip_by_global_norm(grad_clip_norm))
    chain.append(optax.scale_by_adam(b1=b1, b2=b2, eps=eps))
    chain.append(optax.add_decayed_weights(weight_decay, mask=weight_decay_mask(params)))
    if layer_decay is not None:
        if not 0 < layer_decay <= 1:
            raise ValueError(f"config.optim.layer_decay must be in (0, 1], got {layer_decay}")
        chain.append(scale_by_tree(layer_decay_multipliers(params, layer_decay)))
    chain.append(optax.scale_by_learning_rate(schedule))
    optimizer = optax.chain(*chain)
    if frozen:
        patterns = [re.compile(p) for p in frozen]
        labels = jax.tree.map(lambda p: "frozen" if any(r.fullmatch(p) for r in patterns) else "train",
                              param_paths(params))
        if "train" not in jax.tree.leaves(labels):
            raise ValueError(f"config.optim.frozen={list(frozen)} freezes every parameter")
        if "frozen" not in jax.tree.leaves(labels):
            raise ValueError(f"config.optim.frozen={list(frozen)} matches no parameter path")
        optimizer = optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
    return optimizer, schedule
