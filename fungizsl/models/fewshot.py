"""The two models of the FungiCLEF 2025 few-shot system (Lu et al., 2nd place).

* `TokenEncoder` (stage 1): frozen image-tower tokens [B, T, D] -> a linear projection to
  `width` (2048 in the paper), a learnable CLS token, `depth` Transformer encoder layers (1 layer,
  16 heads in the paper) and a final LayerNorm. Its CLS output is the embedding trained with the
  Dynamic Weighting Contrastive Loss; its token outputs feed stage 2. `token_mask` drops tokens
  (feature-level augmentation; padding). `CosineClassifier` is the auxiliary head whose softmax
  gives the p_i of DWCL's entropy weight.
* `FusionClassifier` (stage 2): the stage-1 tokens (a `TokenEncoder` inside when it is tuned; with
  `encoded_tokens` the frozen encoder's outputs, computed once, come in the batch),
  metadata tokens (BERT token states of the rendered sentence, and/or one embedding per categorical
  field plus a projection of numeric features) and a `QFormer`; the mean of the query outputs goes
  to a linear classifier trained with cross-entropy. Either modality may be absent: `use_visual`
  False is the metadata-only model.
* `ResidualFusion`: a `FusionClassifier` plus log-score inputs added to its logits, each with a
  learned scale: the count-based metadata prior (`prior`; the metadata-only model and stage 2)
  and the stage-1 prototype classifier (`proto`; stage 2).
* `classifier_parts`: how both trainers of these classifiers initialise and train them
  (dropout key, cross-entropy, the `train_top1` metric).
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from fungizsl.models import layers
from fungizsl.models.qformer import QFormer


class TokenEncoder(nn.Module):
    width: int = 2048
    depth: int = 1
    num_heads: int = 16
    mlp_ratio: int = 4
    dtype: str = "float32"

    @nn.compact
    def __call__(self, tokens: jax.Array, token_mask: jax.Array | None = None) -> dict[str, jax.Array]:
        x = nn.Dense(self.width, dtype=self.dtype, name="proj")(tokens.astype(self.dtype))
        cls = self.param("cls", nn.initializers.normal(0.02), (1, 1, self.width))
        x = jnp.concatenate([jnp.broadcast_to(cls, (x.shape[0], 1, self.width)).astype(x.dtype), x], 1)
        mask = None
        if token_mask is not None:
            keep = jnp.concatenate([jnp.ones((x.shape[0], 1), bool), token_mask.astype(bool)], 1)
            mask = keep[:, None, None, :]
        block = dict(num_heads=self.num_heads, mlp_dim=self.mlp_ratio * self.width, mlp_act="gelu",
                     layer_norm_eps=1e-6, pre_norm=True, dtype=self.dtype)
        x = layers.Encoder(self.depth, block, name="encoder")(x, mask)
        x = layers.layer_norm(1e-6, "norm")(x)
        return {"embedding": x[:, 0], "tokens": x}


class CosineClassifier(nn.Module):
    """Logits = scale * cos(feature, class weight)."""

    num_classes: int
    scale: float = 16.0

    @nn.compact
    def __call__(self, features: jax.Array) -> jax.Array:
        w = self.param("weights", nn.initializers.normal(1.0), (features.shape[-1], self.num_classes))
        f = features / jnp.maximum(jnp.linalg.norm(features, axis=-1, keepdims=True), 1e-6)
        w = w / jnp.maximum(jnp.linalg.norm(w, axis=0, keepdims=True), 1e-6)
        return self.scale * f.astype(jnp.float32) @ w


class Stage1Model(nn.Module):
    """TokenEncoder + the auxiliary cosine classifier (whose entropy weighs DWCL's anchors)."""

    num_classes: int
    width: int = 2048
    depth: int = 1
    num_heads: int = 16
    dtype: str = "float32"

    def setup(self):
        self.encoder = TokenEncoder(self.width, self.depth, self.num_heads, dtype=self.dtype)
        self.aux_classifier = CosineClassifier(self.num_classes)

    def __call__(self, tokens, token_mask=None):
        out = self.encoder(tokens, token_mask)
        out["aux_logits"] = self.aux(out["embedding"])
        return out

    def encode(self, tokens, token_mask=None):
        return self.encoder(tokens, token_mask)

    def aux(self, embedding):
        """The auxiliary logits of embeddings (the gradient stops at the embedding)."""
        return self.aux_classifier(jax.lax.stop_gradient(embedding))


class FusionClassifier(nn.Module):
    num_classes: int
    use_visual: bool = True
    use_text: bool = True  # BERT token states of the metadata sentence
    field_sizes: Sequence[int] = ()  # one embedding table per categorical field (empty: none)
    num_numeric: int = 0
    encoder_width: int = 2048
    encoder_depth: int = 1
    encoder_heads: int = 16
    width: int = 256
    depth: int = 2
    num_heads: int = 8
    num_queries: int = 8
    dropout: float = 0.1
    fusion: str = "cross"  # the Q-Former's: "cross" or "self" (the paper; models/qformer.py)
    dtype: str = "float32"
    # True: batch["tokens"] are already the visual encoder's output tokens [B, 1 + T, encoder_width]
    # (stage 2 with stage 1 frozen: no encoder here, no backward pass through it)
    encoded_tokens: bool = False

    @nn.compact
    def __call__(self, batch: dict, train: bool = False) -> dict[str, jax.Array]:
        memories, masks = {}, {}
        if self.use_visual:
            if self.encoded_tokens:  # the frozen stage-1 encoder's outputs, computed once beforehand
                visual = batch["tokens"].astype(self.dtype)
            else:
                visual = TokenEncoder(self.encoder_width, self.encoder_depth, self.encoder_heads, dtype=self.dtype,
                                      name="visual_encoder")(batch["tokens"], batch.get("token_mask"))["tokens"]
            memories["visual"] = nn.Dense(self.width, dtype=self.dtype, name="visual_proj")(visual)
            vmask = jnp.ones(visual.shape[:2], bool)
            if "token_mask" in batch:
                vmask = vmask.at[:, 1:].set(batch["token_mask"].astype(bool))
            masks["visual"] = vmask
        meta, meta_mask = [], []
        if self.use_text:
            text = batch["text_states"]
            meta.append(nn.Dense(self.width, dtype=self.dtype, name="text_proj")(text.astype(self.dtype)))
            meta_mask.append(batch["text_mask"].astype(bool))
        if self.field_sizes:
            ids = batch["field_ids"]
            for j, size in enumerate(self.field_sizes):
                emb = nn.Embed(size, self.width, embedding_init=nn.initializers.normal(0.02),
                               name=f"field_{j}")(ids[:, j])
                meta.append(emb[:, None])
                meta_mask.append(ids[:, j:j + 1] > 0)
        if self.num_numeric:
            numeric = nn.Dense(self.width, dtype=self.dtype, name="numeric_proj")(batch["numeric"])
            meta.append(numeric[:, None])
            meta_mask.append(jnp.ones((numeric.shape[0], 1), bool))
        if meta:
            memories["text"] = jnp.concatenate(meta, 1)
            masks["text"] = jnp.concatenate(meta_mask, 1)
            if "has_metadata" in batch:  # observations without any metadata
                masks["text"] = masks["text"] & batch["has_metadata"].astype(bool)[:, None]
        if not memories:
            raise ValueError("FusionClassifier needs at least one input: use_visual, use_text, fields or numeric")
        sources = tuple(s for s in ("visual", "text") if s in memories)
        q = QFormer(self.num_queries, self.width, self.depth, self.num_heads, sources=sources,
                    fusion=self.fusion, dtype=self.dtype, name="qformer")(memories, masks)
        pooled = q.mean(1)
        pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        # zero kernel: the classifier starts at its bias, so a ResidualFusion starts exactly at its
        # residual inputs (the stage-1 prototype scores, the prior) instead of adding noise to them
        logits = nn.Dense(self.num_classes, dtype=jnp.float32, kernel_init=nn.initializers.zeros,
                          name="classifier")(pooled)
        return {"logits": logits, "pooled": pooled}


class ResidualFusion(nn.Module):
    """FusionClassifier logits + exp(learned log-scale) x the log-softmax of each log-score input
    named in `residuals` (`batch[name]` [B, C]; parameter `<name>_log_scale`, initialised to 0 so
    the scale starts at 1). An input missing from the batch adds nothing and has no parameter."""

    fusion: FusionClassifier
    residuals: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, batch, train: bool = False):
        out = self.fusion(batch, train)
        for name in self.residuals:
            if name in batch:
                scale = jnp.exp(self.param(f"{name}_log_scale", nn.initializers.zeros, ()))
                out["logits"] = out["logits"] + scale * jax.nn.log_softmax(batch[name].astype(jnp.float32), -1)
        return out


def classifier_parts(model: nn.Module, inputs_of: Callable[[dict], dict], example: dict):
    """(init_variables, loss_fn) for `fungizsl.train.core.Task` of a classifier whose `apply`
    returns {"logits": ...}: `inputs_of(batch)` picks the model's inputs from a batch (with
    "label"), `example` is a batch to initialise from. The loss is the mean cross-entropy with
    dropout on; the step also reports `train_top1`."""
    example = inputs_of(example)

    def init_variables(rng):
        return model.init({"params": rng, "dropout": rng}, example)

    def loss_fn(params, extra, batch, rng):
        logits = model.apply({"params": params}, inputs_of(batch), train=True, rngs={"dropout": rng})["logits"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, ({"train_top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}, extra)

    return init_variables, loss_fn
