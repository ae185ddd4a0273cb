"""Contrastive losses for fine-tuning CLIP on fungal growth stages.

FungalZSL (Rani, Arroyo, Durdevic 2025, "FungalZSL: Zero-Shot Fungal Classification with Image
Captioning Using a Synthetic Data Approach") fine-tunes CLIP (Radford et al. 2021,
https://arxiv.org/abs/2103.00020) with the symmetric cross-modal contrastive loss
`L_total = L_image + L_text`: a cross-entropy over the image->text similarity logits with the
paired caption as target, plus the same over text->image.

* `clip_loss` is that loss on L2-normalised embeddings. Called under `jax.jit` with the batch
  sharded over a mesh, `zimg @ ztxt.T` is the similarity matrix of the *global* batch: every
  device's embeddings are negatives for every other device's, and XLA inserts the all-gathers.
* `clip_loss_sharded(mesh)` computes the same value with the collective written out
  (`jax.shard_map` + `all_gather` over the batch axes): each device scores its own rows against
  the gathered embeddings of the whole batch, and the per-row losses are summed with `psum`.
* `class_aware_clip_loss` is a variant for FungalZSL's setting, where captions describe a
  *class* (a growth stage), not one image: two items of the same class are not pushed apart;
  every same-class item is a positive with equal share of a soft target. With all labels
  distinct it is exactly `clip_loss`. `contrastive_loss(..., instance_weight=w)` adds `w` times
  `clip_loss` to it, so each image is also pulled to its own caption (instance retrieval).

`scale` is the multiplier of the cosine similarities, i.e. `exp(logit_scale) = 1 / temperature`
(what `ClipModel.temperature_scale()` returns). Everything is computed in float32.

The two directions are averaged by default (`combine="mean"`, CLIP's and open_clip's
convention); `combine="sum"` is the paper's `L_image + L_text`, twice as large with the same
minimiser.
"""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, PartitionSpec as P

from fungizsl.placement import BATCH_AXES  # the batch is split over both mesh axes

LossOutput = tuple[jax.Array, dict[str, jax.Array]]


def _soft_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Per-row cross-entropy -sum_j t_ij log softmax(logits)_ij; targets rows sum to 1."""
    return -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)


def _diagonal_targets(rows: int, cols: int, offset: jax.Array | int = 0) -> jax.Array:
    """One-hot rows: row r's positive is column offset + r."""
    return jax.nn.one_hot(jnp.arange(rows) + offset, cols, dtype=jnp.float32)


def _same_class_targets(row_labels: jax.Array, col_labels: jax.Array) -> jax.Array:
    """Row-normalised indicator of equal labels: each same-class column gets an equal share."""
    same = (row_labels[:, None] == col_labels[None, :]).astype(jnp.float32)
    return same / jnp.sum(same, axis=-1, keepdims=True)


def _row_losses(zimg_rows, ztxt_rows, zimg_all, ztxt_all, scale, targets_rows):
    """Per-row image->text and text->image losses and top-1 hits for a block of rows.

    `targets_rows[r, j]` is the target weight of column j for row r; the relation is symmetric
    (pairs i<->i, or same class), so one block serves both directions.
    """
    scale = jnp.asarray(scale, jnp.float32)
    logits_i2t = scale * zimg_rows.astype(jnp.float32) @ ztxt_all.astype(jnp.float32).T
    logits_t2i = scale * ztxt_rows.astype(jnp.float32) @ zimg_all.astype(jnp.float32).T
    l_image = _soft_cross_entropy(logits_i2t, targets_rows)
    l_text = _soft_cross_entropy(logits_t2i, targets_rows)
    # A row is "correct" when its best-scoring column is a positive (ties: lowest index).
    hit_i2t = jnp.take_along_axis(targets_rows, jnp.argmax(logits_i2t, -1)[:, None], -1)[:, 0] > 0
    hit_t2i = jnp.take_along_axis(targets_rows, jnp.argmax(logits_t2i, -1)[:, None], -1)[:, 0] > 0
    return l_image, l_text, hit_i2t.astype(jnp.float32), hit_t2i.astype(jnp.float32)


def _combine(l_image, l_text, hit_i2t, hit_t2i, combine: str) -> LossOutput:
    if combine == "mean":
        loss = 0.5 * (l_image + l_text)
    elif combine == "sum":
        loss = l_image + l_text
    else:
        raise ValueError(f"combine must be 'mean' or 'sum', got {combine!r}")
    metrics = {"loss": loss, "l_image": l_image, "l_text": l_text,
               "i2t_top1": hit_i2t, "t2i_top1": hit_t2i}
    return loss, metrics


def _check(zimg, ztxt, labels=None):
    if zimg.ndim != 2 or zimg.shape != ztxt.shape:
        raise ValueError(f"zimg and ztxt must both be [batch, dim] and paired row by row; got "
                         f"{zimg.shape} and {ztxt.shape}")
    if labels is not None and labels.shape != zimg.shape[:1]:
        raise ValueError(f"labels must be [batch]={zimg.shape[:1]}, got {labels.shape}")


def clip_loss(zimg: jax.Array, ztxt: jax.Array, scale: jax.Array | float,
              combine: str = "mean") -> LossOutput:
    """Symmetric InfoNCE of CLIP over the (global) batch.

    Args:
      zimg: [B, D] L2-normalised image embeddings; row i is paired with ztxt row i.
      ztxt: [B, D] L2-normalised text embeddings.
      scale: scalar multiplier of the cosine similarities, exp(logit_scale) = 1/temperature.
      combine: "mean" -> (L_image + L_text) / 2 (CLIP); "sum" -> L_image + L_text (FungalZSL).

    Returns:
      (loss, metrics): scalar float32 loss and a dict of scalars: loss, l_image (image->text
      cross-entropy), l_text (text->image), i2t_top1 / t2i_top1 (in-batch top-1 accuracy).
    """
    _check(zimg, ztxt)
    batch = zimg.shape[0]
    targets = _diagonal_targets(batch, batch)
    parts = _row_losses(zimg, ztxt, zimg, ztxt, scale, targets)
    return _combine(*(jnp.mean(p) for p in parts), combine)


def class_aware_clip_loss(zimg: jax.Array, ztxt: jax.Array, scale: jax.Array | float,
                          labels: jax.Array, combine: str = "mean") -> LossOutput:
    """CLIP loss in which same-class items are positives, not negatives (multi-positive).

    For image i the target over texts is uniform over {j : labels[j] == labels[i]} (which
    includes i), and likewise for text->image. This suits FungalZSL, whose captions describe a
    growth stage rather than one image: a batch holding two "hyphae" images and their captions
    would otherwise push each image away from a correct description. With all labels distinct the
    targets are the identity and the value equals `clip_loss`. Being a soft-target
    cross-entropy, its minimum is the targets' entropy (log of the class count per row), not 0.

    Args:
      labels: [B] integer class ids of the pairs (image i and text i share labels[i]).
      Other arguments and the return value as in `clip_loss`.
    """
    labels = jnp.asarray(labels)
    _check(zimg, ztxt, labels)
    targets = _same_class_targets(labels, labels)
    parts = _row_losses(zimg, ztxt, zimg, ztxt, scale, targets)
    return _combine(*(jnp.mean(p) for p in parts), combine)


def contrastive_loss(zimg, ztxt, scale, labels=None, class_aware: bool = False,
                     combine: str = "mean", instance_weight: float = 0.0) -> LossOutput:
    """The trainer's switch: `class_aware=False` -> `clip_loss`; True -> `class_aware_clip_loss`.

    With `class_aware=True` and `instance_weight` w > 0 the loss is
    `class_aware_clip_loss + w * clip_loss`: the class-aware term makes same-stage pairs positives
    (the zero-shot target is a class), the instance term still pulls each image to its *own*
    caption (per-image scene captions describe one image: instance retrieval). The metrics are the
    class-aware term's, plus `l_class` and `l_instance` (each term's value) and the instance
    term's in-batch `instance_i2t_top1` / `instance_t2i_top1`; `loss` is the total.
    """
    if instance_weight < 0:
        raise ValueError(f"instance_weight must be >= 0, got {instance_weight}")
    if class_aware:
        if labels is None:
            raise ValueError("class_aware=True needs the batch's class labels")
        loss, metrics = class_aware_clip_loss(zimg, ztxt, scale, labels, combine)
        if instance_weight > 0:
            l_inst, inst = clip_loss(zimg, ztxt, scale, combine)
            metrics = dict(metrics, l_class=loss, l_instance=l_inst, instance_i2t_top1=inst["i2t_top1"],
                           instance_t2i_top1=inst["t2i_top1"])
            loss = loss + instance_weight * l_inst
            metrics["loss"] = loss
        return loss, metrics
    return clip_loss(zimg, ztxt, scale, combine)


def clip_loss_sharded(mesh: Mesh, class_aware: bool = False, combine: str = "mean",
                      batch_axes: Sequence[str] = BATCH_AXES) -> Callable[..., LossOutput]:
    """`clip_loss` (or the class-aware variant) with the cross-device collective explicit.

    Returns `loss_fn(zimg, ztxt, scale[, labels]) -> (loss, metrics)` for batch-sharded global
    arrays (leading axis split over `batch_axes`, as `fungizsl.placement.shard_batch`
    places them); call it under `jax.jit`. Inside `jax.shard_map` every device all-gathers the
    image and text embeddings (and labels) of the whole batch, scores its own B/n rows against
    all B columns in both directions, and the per-row sums are `psum`-ed over the mesh. The
    value, and the gradients (all_gather transposes to a reduce-scatter), equal `clip_loss` on
    the unsharded batch.
    """
    axes = tuple(a for a in batch_axes if a in mesh.axis_names)
    if not axes:
        raise ValueError(f"mesh axes {mesh.axis_names} contain none of the batch axes {batch_axes}")
    row_spec = P(axes)

    def per_device(zimg, ztxt, scale, labels):
        rows = zimg.shape[0]
        zimg_all = jax.lax.all_gather(zimg, axes, tiled=True)
        ztxt_all = jax.lax.all_gather(ztxt, axes, tiled=True)
        global_batch = zimg_all.shape[0]
        if class_aware:
            labels_all = jax.lax.all_gather(labels, axes, tiled=True)
            targets = _same_class_targets(labels, labels_all)
        else:
            # all_gather over a tuple of axes concatenates the shards in the same row-major
            # order that axis_index over that tuple counts in, and that P(axes) places them in.
            offset = jax.lax.axis_index(axes) * rows
            targets = _diagonal_targets(rows, global_batch, offset)
        parts = _row_losses(zimg, ztxt, zimg_all, ztxt_all, scale, targets)
        means = [jax.lax.psum(jnp.sum(p), axes) / global_batch for p in parts]
        return _combine(*means, combine)

    mapped = jax.shard_map(per_device, mesh=mesh, in_specs=(row_spec, row_spec, P(), row_spec),
                           out_specs=(P(), P()))

    def loss_fn(zimg, ztxt, scale, labels=None):
        _check(zimg, ztxt, labels)
        if class_aware and labels is None:
            raise ValueError("class_aware=True needs the batch's class labels")
        if labels is None:
            labels = jnp.zeros(zimg.shape[:1], jnp.int32)  # unused placeholder, sharded like rows
        return mapped(zimg, ztxt, jnp.asarray(scale, jnp.float32), labels)

    return loss_fn


# ---------------------------------------------------------------------------------------------
# Few-shot FungiCLEF 2025: supervised contrastive loss and the Dynamic Weighting Contrastive Loss
# ---------------------------------------------------------------------------------------------
#
# Lu et al., "Few-Shot Classification of Fungi Species Using Contrastive Representation Learning
# and Multimodal Fusion" (FungiCLEF 2025, 2nd place), equation (3):
#
#   L = 1 / sum_{i in A} w_i * sum_{i in A} w_i * 1/|P(i)| * sum_{j in P(i)}
#           -log( exp(S_ij / tau) / sum_{k not in F(i)} exp(S_ik / tau) )
#
# with S = cosine similarities of the L2-normalised features, P(i) = {j != i : y_j = y_i} the
# positives, F(i) = {i} + {k : mask_k = 0} the excluded columns, A the anchors with enough
# positives, and w_i = sigmoid(H(p_i)) an entropy weight. With all w_i equal it is the
# supervised contrastive loss L_out of Khosla et al. 2020 ("Supervised Contrastive Learning").
#
# The paper writes A = {i : |P(i)| >= 2}. Read literally, an anchor needs three rows of its class
# in the batch; the class-balanced sampler gives a class max(min(n_c, 4), 2) rows, so every class
# with 1 or 2 training images (1,241 of the 2,427 real training classes; 1,186 have 3 or more)
# would never be an anchor, while the same section tops small classes up "to form valid pairs":
# one positive makes a valid anchor. `min_positives` defaults to 1; 2 is the literal reading.


def entropy_weights(class_logits: jax.Array) -> jax.Array:
    """w_i = sigmoid(H(softmax(class_logits_i))), with no gradient flowing through it.

    H is the Shannon entropy in nats, so w lies in [0.5, 1): confident predictions get 0.5,
    uncertain ones approach 1 (for C classes, sigmoid(log C) at the uniform distribution)."""
    logp = jax.nn.log_softmax(class_logits.astype(jnp.float32), axis=-1)
    entropy = -jnp.sum(jnp.exp(logp) * logp, axis=-1)
    return jax.lax.stop_gradient(jax.nn.sigmoid(entropy))


def dwcl_loss(features: jax.Array, labels: jax.Array, weights: jax.Array | None = None,
              mask: jax.Array | None = None, temperature: float = 0.07,
              min_positives: int = 1) -> LossOutput:
    """Dynamic Weighting Contrastive Loss, equation (3) of Lu et al. (FungiCLEF 2025).

    Args:
      features: [N, D] features z_i (normalised here, equation (1)).
      labels: [N] integer classes; rows of one class (augmented copies included) are positives.
      weights: [N] anchor weights w_i (e.g. `entropy_weights(...)`); None -> all 1 (SupCon).
        Used as given: pass stop-gradient weights.
      mask: [N] bool, False for padding rows; they are neither anchors, positives nor part of any
        denominator. None -> all rows valid.
      temperature: tau.
      min_positives: an anchor enters A only with at least this many positives.

    Returns:
      (loss, metrics): the scalar loss (0 when no row is a valid anchor) and metrics
      `num_anchors`, `mean_positives`, `mean_weight` (over the anchors).
    """
    features = jnp.asarray(features, jnp.float32)
    n = features.shape[0]
    if features.ndim != 2 or labels.shape != (n,):
        raise ValueError(f"features must be [N, D] with labels [N]; got {features.shape} and {labels.shape}")
    valid = jnp.ones((n,), bool) if mask is None else jnp.asarray(mask, bool)
    w = jnp.ones((n,), jnp.float32) if weights is None else jnp.asarray(weights, jnp.float32)
    z = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-12)
    logits = (z @ z.T) / temperature
    not_self = ~jnp.eye(n, dtype=bool)
    columns = not_self & valid[None, :]  # k not in F(i)
    # A large finite negative, not -inf: rows with no column left (padding) must keep finite
    # gradients, which jnp.where would otherwise turn into 0 * nan.
    log_denominator = jax.nn.logsumexp(jnp.where(columns, logits, -1e9), axis=-1)
    positives = columns & (labels[:, None] == labels[None, :])
    num_pos = positives.sum(-1)
    log_prob = logits - log_denominator[:, None]
    per_anchor = -jnp.sum(jnp.where(positives, log_prob, 0.0), -1) / jnp.maximum(num_pos, 1)
    anchors = valid & (num_pos >= min_positives) & (num_pos > 0)
    anchor_w = jnp.where(anchors, w, 0.0)
    total_w = anchor_w.sum()
    loss = jnp.where(total_w > 0, jnp.sum(anchor_w * jnp.where(anchors, per_anchor, 0.0))
                     / jnp.where(total_w > 0, total_w, 1.0), 0.0)
    count = anchors.sum()
    safe = jnp.maximum(count, 1)
    metrics = {"loss": loss, "num_anchors": count.astype(jnp.float32),
               "mean_positives": jnp.sum(jnp.where(anchors, num_pos, 0)) / safe,
               "mean_weight": jnp.sum(jnp.where(anchors, w, 0.0)) / safe}
    return loss, metrics


def supcon_loss(features, labels, mask=None, temperature: float = 0.07, min_positives: int = 1) -> LossOutput:
    """Supervised contrastive loss (Khosla et al. 2020, L_out): `dwcl_loss` with equal weights."""
    return dwcl_loss(features, labels, None, mask, temperature, min_positives)
