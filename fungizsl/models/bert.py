"""BERT text encoder (Devlin et al. 2019), enough for bert-base and MiniLM (all-MiniLM-L6-v2).

The FungiCLEF 2025 system (Lu et al., "Few-Shot Classification of Fungi Species Using
Contrastive Representation Learning and Multimodal Fusion") encodes each observation's metadata
sentence with BERT before Q-Former fusion. Post-norm blocks with exact GELU, token-type
embeddings, an attention mask over padding and the optional tanh pooler on [CLS].
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import layers


@dataclasses.dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    width: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    mlp_act: str = "gelu"
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    with_pooler: bool = True
    dtype: str = "float32"
    scan: bool = False
    remat: bool = False


VARIANTS = {
    "bert_base": dict(),
    "minilm_l6": dict(width=384, depth=6, heads=12, mlp_dim=1536),
    "bert_tiny": dict(vocab_size=1000, width=64, depth=2, heads=4, mlp_dim=128, max_positions=64),
}


def bert_config(variant: str, **overrides) -> BertConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown BERT variant {variant!r}; known: {sorted(VARIANTS)}")
    return BertConfig(**{**VARIANTS[variant], **overrides})


def mean_pool(hidden: jax.Array, attention_mask: jax.Array) -> jax.Array:
    """Average of the token states that the mask keeps (sentence-transformers' pooling)."""
    mask = attention_mask[..., None].astype(hidden.dtype)
    return (hidden * mask).sum(axis=1) / jnp.maximum(mask.sum(axis=1), 1e-9)


class BertEmbeddings(nn.Module):
    config: BertConfig

    @nn.compact
    def __call__(self, input_ids, token_type_ids, position_ids):
        cfg = self.config
        embed = lambda n, size: nn.Embed(size, cfg.width, embedding_init=nn.initializers.normal(0.02), name=n)
        x = (embed("word_embeddings", cfg.vocab_size)(input_ids)
             + embed("position_embeddings", cfg.max_positions)(position_ids)
             + embed("token_type_embeddings", cfg.type_vocab_size)(token_type_ids))
        return layers.layer_norm(cfg.layer_norm_eps, "LayerNorm")(x)


class BertModel(nn.Module):
    """Returns `last_hidden_state` [B, L, width] and, with the pooler, `pooled` [B, width]."""

    config: BertConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array, attention_mask: jax.Array | None = None,
                 token_type_ids: jax.Array | None = None) -> dict[str, jax.Array]:
        cfg = self.config
        batch, length = input_ids.shape
        if length > cfg.max_positions:
            raise ValueError(f"text length {length} exceeds max_positions {cfg.max_positions}")
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        position_ids = jnp.broadcast_to(jnp.arange(length), (batch, length))
        x = BertEmbeddings(cfg, name="embeddings")(input_ids, token_type_ids, position_ids)
        mask = attention_mask.astype(jnp.bool_)[:, None, None, :]  # keys only, as upstream
        block = dict(num_heads=cfg.heads, mlp_dim=cfg.mlp_dim, mlp_act=cfg.mlp_act,
                     layer_norm_eps=cfg.layer_norm_eps, pre_norm=False, dtype=cfg.dtype)
        x = layers.Encoder(cfg.depth, block, scan=cfg.scan, remat=cfg.remat, name="encoder")(
            x.astype(cfg.dtype), mask)
        out = {"last_hidden_state": x}
        if cfg.with_pooler:
            dense = nn.Dense(cfg.width, dtype=cfg.dtype, name="pooler")
            out["pooled"] = jnp.tanh(dense(x[:, 0]))
        return out
