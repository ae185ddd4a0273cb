"""Q-Former fusion of visual tokens and metadata tokens (Lu et al., FungiCLEF 2025, sec. 3.1).

The paper fuses stage-1 visual tokens with BERT-encoded metadata through a Q-Former (Li et al.
2023, BLIP-2): a set of learnable query tokens that attend to each other and, in every layer,
cross-attend to the other modalities. Our layer (pre-norm) is

    q = q + SelfAttention(norm(q))                       # queries among themselves
    q = q + CrossAttention(norm(q), visual, visual_mask)  # the image's tokens
    q = q + CrossAttention(norm(q), text, text_mask)      # metadata tokens (BERT, field embeddings)
    q = q + MLP(norm(q))

A cross-attention whose keys are all masked (an image without metadata; the metadata-only model
without an image) contributes exactly zero for that row, so a missing modality never injects an
average of padding.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import layers


class CrossAttention(nn.Module):
    """Multi-head attention of queries [B, Q, W] over keys/values [B, K, Wk] with a key mask [B, K]."""

    num_heads: int
    dtype: str = "float32"

    @nn.compact
    def __call__(self, queries: jax.Array, keys: jax.Array, key_mask: jax.Array | None = None) -> jax.Array:
        width = queries.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"Q-Former width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        dense = lambda name: nn.Dense(width, dtype=self.dtype, name=name)
        split = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, head_dim)).swapaxes(-2, -3)
        q = split(dense("query")(queries))
        k, v = split(dense("key")(keys)), split(dense("value")(keys))
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32) * head_dim ** -0.5
        if key_mask is not None:
            key_mask = key_mask.astype(bool)
            logits = jnp.where(key_mask[:, None, None, :], logits, -1e9)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bhkd->bhqd", weights, v).swapaxes(-2, -3).reshape(queries.shape[:-1] + (width,))
        out = dense("out")(out)
        if key_mask is not None:  # no key at all -> no contribution
            out = out * key_mask.any(-1)[:, None, None].astype(out.dtype)
        return out


class QFormerLayer(nn.Module):
    num_heads: int
    mlp_dim: int
    sources: tuple[str, ...] = ("visual", "text")
    dtype: str = "float32"

    @nn.compact
    def __call__(self, queries, memories: dict, masks: dict):
        norm = lambda name: layers.layer_norm(1e-6, name)
        q = queries
        q = q + layers.SelfAttention(self.num_heads, dtype=self.dtype, name="self_attn")(
            norm("norm_self")(q).astype(self.dtype))
        for source in self.sources:
            if source not in memories:
                continue
            q = q + CrossAttention(self.num_heads, self.dtype, name=f"cross_{source}")(
                norm(f"norm_{source}")(q).astype(self.dtype), memories[source], masks.get(source))
        q = q + layers.Mlp(self.mlp_dim, "gelu", dtype=self.dtype, name="mlp")(norm("norm_mlp")(q).astype(self.dtype))
        return q


class QFormer(nn.Module):
    """`num_queries` learnable queries refined by `depth` QFormerLayers; returns [B, Q, width]."""

    num_queries: int = 8
    width: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_ratio: int = 4
    sources: tuple[str, ...] = ("visual", "text")
    dtype: str = "float32"

    @nn.compact
    def __call__(self, memories: dict, masks: dict) -> jax.Array:
        unknown = set(memories) - set(self.sources)
        if unknown:
            raise ValueError(f"Q-Former got memories {sorted(unknown)} it has no cross-attention for; "
                             f"its sources are {self.sources}")
        batch = next(iter(memories.values())).shape[0]
        queries = self.param("queries", nn.initializers.normal(0.02), (self.num_queries, self.width))
        q = jnp.broadcast_to(queries, (batch,) + queries.shape).astype(self.dtype)
        for i in range(self.depth):
            q = QFormerLayer(self.num_heads, self.mlp_ratio * self.width, self.sources, self.dtype,
                             name=f"layers_{i}")(q, memories, masks)
        return layers.layer_norm(1e-6, "norm")(q)
