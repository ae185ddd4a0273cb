"""Q-Former fusion of visual tokens and metadata tokens (Lu et al., FungiCLEF 2025, sec. 3.1).

The paper fuses stage-1 visual tokens with BERT-encoded metadata through a Q-Former (Li et al.
2023, BLIP-2): a set of learnable query tokens refined layer by layer. Two layer kinds, chosen by
`fusion`:

"cross" (`QFormerLayer`; the default of the existing presets, whose numbers it keeps), pre-norm:

    q = q + SelfAttention(norm(q))                       # queries among themselves
    q = q + CrossAttention(norm(q), visual, visual_mask)  # the image's tokens
    q = q + CrossAttention(norm(q), text, text_mask)      # metadata tokens (BERT, field embeddings)
    q = q + MLP(norm(q))

"self" (`SelfFusionLayer`; the paper's preset): the text tokens join the queries in one
self-attention, as in BLIP-2's Q-Former (its image-text matching mode, where "queries and texts
can attend to each other"); only the queries cross-attend to the image. The paper: "the
generated text embeddings and the first stage visual features are jointly fed into the Q-Former
module ... Through iterative updates via multi-head self attention, the Q-Former generates query
representations that fuse habitat semantics with visual information" (sec. 3.1), and "Q-Former
performs interactive fusion between the textual and visual features through multi-head self
attention" (sec. 3.2). Pre-norm:

    x = [q; t]                                            # queries, then the text tokens
    x = x + SelfAttention(norm(x), key mask [1..1; text_mask])   # shared by queries and text
    q, t = x[:Q], x[Q:]
    q = q + CrossAttention(norm(q), visual, visual_mask)  # queries only
    q = q + MLP(norm(q))                                  # the queries' feed-forward
    t = t + MLP_text(norm_text(t))                        # the text's own feed-forward

The text tokens are updated through the layers, as in BLIP-2, where they pass through the same
BERT layers as the queries (shared self-attention, a feed-forward of their own): the paper names
BLIP-2's Q-Former [9] and says nothing that departs from it; it speaks of "progressively updating
the query tokens", which the text updates serve. The last layer leaves the text alone (nothing
reads it afterwards), so its text feed-forward is not built. Attention and feed-forward weights
of the queries carry the same names as in "cross", the text tokens share the queries' attention
projections (one self-attention, as in BLIP-2).

A masked key gets weight exactly 0, so a fully masked modality contributes exactly zero: a
cross-attention whose keys are all masked adds nothing for that row (an image without metadata;
the metadata-only model without an image), and in "self" fusion a row whose text is all masked
gives the queries the same numbers as a Q-Former that was never given text.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import layers

FUSIONS = ("cross", "self")


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



class SelfFusionLayer(nn.Module):
    """The "self" fusion layer (see the module docstring): queries and text tokens in one
    self-attention with the text's key mask, then the queries' cross-attention to the image and
    the feed-forwards. Returns (queries, text); text is returned unchanged when `update_text` is
    False or there is none."""

    num_heads: int
    mlp_dim: int
    update_text: bool = True
    dtype: str = "float32"

    @nn.compact
    def __call__(self, queries, memories: dict, masks: dict):
        norm = lambda name: layers.layer_norm(1e-6, name)
        q, text = queries, memories.get("text")
        num_q = q.shape[1]
        x, key_mask = q, None
        if text is not None:
            x = jnp.concatenate([q, text.astype(q.dtype)], 1)
            text_mask = masks.get("text")
            if text_mask is None:
                text_mask = jnp.ones(text.shape[:2], bool)
            key_mask = jnp.concatenate([jnp.ones(q.shape[:2], bool), text_mask.astype(bool)], 1)
            key_mask = key_mask[:, None, None, :]  # [B, heads, queries, keys]
        x = x + layers.SelfAttention(self.num_heads, dtype=self.dtype, name="self_attn")(
            norm("norm_self")(x).astype(self.dtype), key_mask)
        q, text = x[:, :num_q], (x[:, num_q:] if text is not None else None)
        if "visual" in memories:
            q = q + CrossAttention(self.num_heads, self.dtype, name="cross_visual")(
                norm("norm_visual")(q).astype(self.dtype), memories["visual"], masks.get("visual"))
        q = q + layers.Mlp(self.mlp_dim, "gelu", dtype=self.dtype, name="mlp")(norm("norm_mlp")(q).astype(self.dtype))
        if text is not None and self.update_text:
            text = text + layers.Mlp(self.mlp_dim, "gelu", dtype=self.dtype, name="mlp_text")(
                norm("norm_mlp_text")(text).astype(self.dtype))
        return q, (memories.get("text") if text is None else text)


class QFormer(nn.Module):
    """`num_queries` learnable queries refined by `depth` layers; returns [B, Q, width].
    `fusion`: "cross" (`QFormerLayer`: a cross-attention per source) or "self" (`SelfFusionLayer`:
    the text tokens join the queries' self-attention, BLIP-2 style; the paper's preset)."""

    num_queries: int = 8
    width: int = 256
    depth: int = 2
    num_heads: int = 8
    mlp_ratio: int = 4
    sources: tuple[str, ...] = ("visual", "text")
    fusion: str = "cross"
    dtype: str = "float32"

    @nn.compact
    def __call__(self, memories: dict, masks: dict) -> jax.Array:
        if self.fusion not in FUSIONS:
            raise ValueError(f"Q-Former fusion must be one of {FUSIONS}, got {self.fusion!r}")
        unknown = set(memories) - set(self.sources)
        if unknown:
            raise ValueError(f"Q-Former got memories {sorted(unknown)} it has no cross-attention for; "
                             f"its sources are {self.sources}")
        if self.fusion == "self" and set(memories) - {"visual", "text"}:
            raise ValueError(f"'self' fusion takes 'visual' (cross-attended) and 'text' (in the self-attention) "
                             f"memories; got {sorted(memories)}")
        batch = next(iter(memories.values())).shape[0]
        queries = self.param("queries", nn.initializers.normal(0.02), (self.num_queries, self.width))
        q = jnp.broadcast_to(queries, (batch,) + queries.shape).astype(self.dtype)
        memories = dict(memories)
        for i in range(self.depth):
            if self.fusion == "self":
                q, text = SelfFusionLayer(self.num_heads, self.mlp_ratio * self.width, i < self.depth - 1,
                                          self.dtype, name=f"layers_{i}")(q, memories, masks)
                if text is not None:
                    memories["text"] = text
            else:
                q = QFormerLayer(self.num_heads, self.mlp_ratio * self.width, self.sources, self.dtype,
                                 name=f"layers_{i}")(q, memories, masks)
        return layers.layer_norm(1e-6, "norm")(q)
