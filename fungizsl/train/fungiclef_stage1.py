"""Stage 1 of the FungiCLEF 2025 system (Lu et al., sec. 3.2): a Transformer layer over frozen
token features trained with the Dynamic Weighting Contrastive Loss (or SupCon).

The loss of one step, on the global batch drawn by `fungiclef.sampler.ClassBalancedSampler`:

* feature-level augmentation of the rows marked `augmented` (copies that give a lone instance a
  positive): token dropout (each non-CLS token kept with probability 1 - `token_drop`, at least
  one kept) and Gaussian noise of `noise_std` times the token's RMS; view mixing happens on the
  host, where the other test-time views are (`mix_views`);
* the encoder's CLS embedding enters `losses.dwcl_loss` with padding rows masked;
* `p_i` of the entropy weight comes from an auxiliary cosine classifier over all classes, fed
  the stop-gradient embedding and trained by its own cross-entropy (`aux_weight`), so the weights
  reflect how ambiguous each sample currently is; `w_i` carries no gradient.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fungizsl import losses


def augment_tokens(tokens, augmented, rng, token_drop: float = 0.25, noise_std: float = 0.1,
                   first_kept: int = 1):
    """(tokens, token_mask) with dropout and noise on the `augmented` rows only."""
    k_drop, k_noise = jax.random.split(rng)
    b, t = tokens.shape[:2]
    keep = jax.random.uniform(k_drop, (b, t)) >= token_drop
    keep = keep.at[:, :first_kept].set(True)  # the tower's CLS (and registers) stay
    augmented = augmented.astype(bool)
    token_mask = jnp.where(augmented[:, None], keep, True)
    rms = jnp.sqrt(jnp.mean(jnp.square(tokens.astype(jnp.float32)), -1, keepdims=True))
    noise = noise_std * rms * jax.random.normal(k_noise, tokens.shape)
    tokens = jnp.where(augmented[:, None, None], tokens + noise, tokens)
    return tokens, token_mask


def make_stage1_loss(model, loss: str = "dwcl", temperature: float = 0.07, aux_weight: float = 1.0,
                     min_positives: int = 1, token_drop: float = 0.25, noise_std: float = 0.1,
                     first_kept: int = 1):
    if loss not in ("dwcl", "supcon"):
        raise ValueError(f"stage-1 loss must be 'dwcl' or 'supcon', got {loss!r}")

    def loss_fn(params, extra, batch, rng):
        tokens, token_mask = augment_tokens(batch["tokens"].astype(jnp.float32), batch["augmented"], rng,
                                            token_drop, noise_std, first_kept)
        out = model.apply({"params": params}, tokens, token_mask)
        valid = batch["valid"].astype(bool)
        labels = batch["label"]
        weights = losses.entropy_weights(out["aux_logits"]) if loss == "dwcl" else None
        contrastive, m = losses.dwcl_loss(out["embedding"], labels, weights, valid, temperature, min_positives)
        ce = optax.softmax_cross_entropy_with_integer_labels(out["aux_logits"], jnp.maximum(labels, 0))
        aux = jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(valid.sum(), 1)
        metrics = {"contrastive": contrastive, "aux_ce": aux, "num_anchors": m["num_anchors"],
                   "mean_weight": m["mean_weight"]}
        return contrastive + aux_weight * aux, (metrics, extra)

    return loss_fn


def mix_views(views: np.ndarray, rng: np.random.Generator, mix: bool) -> np.ndarray:
    """One row's token features from its test-time views [V, T, D]: a random view, or (mix) a
    convex mixture of two random views (view mixing for augmented copies)."""
    a = views[rng.integers(len(views))].astype(np.float32)
    if not mix or len(views) < 2:
        return a
    b = views[rng.integers(len(views))].astype(np.float32)
    lam = rng.uniform(0.5, 1.0)
    return lam * a + (1 - lam) * b
