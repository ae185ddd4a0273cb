"""CLIP's text transformer (Radford et al. 2021): causal pre-norm blocks, end-of-text pooling.

The pooled text feature is the final-layer-normed hidden state at the first end-of-text token.
We locate that token by id, never as "last non-pad": Hugging Face pads CLIP text with the
end-of-text id itself, open_clip with 0, and the first occurrence is right for both.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import layers


@dataclasses.dataclass(frozen=True)
class ClipTextConfig:
    vocab_size: int = 49408
    context_length: int = 77
    width: int = 512
    depth: int = 12
    heads: int = 8
    mlp_dim: int = 2048
    mlp_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5
    eot_token_id: int = 49407
    dtype: str = "float32"
    scan: bool = False
    remat: bool = False


VARIANTS = {
    "clip_b": dict(width=512, depth=12, heads=8, mlp_dim=2048),  # ViT-B/32 and B/16
    "clip_l": dict(width=768, depth=12, heads=12, mlp_dim=3072),  # ViT-L/14, L/14@336, RN50x16
    "clip_rn50x4": dict(width=640, depth=12, heads=10, mlp_dim=2560),
    "clip_rn50x64": dict(width=1024, depth=12, heads=16, mlp_dim=4096),
    "clip_tiny": dict(width=64, depth=2, heads=4, mlp_dim=256, context_length=16, vocab_size=1000,
                      eot_token_id=999),
}


def clip_text_config(variant: str, **overrides) -> ClipTextConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown CLIP text variant {variant!r}; known: {sorted(VARIANTS)}")
    return ClipTextConfig(**{**VARIANTS[variant], **overrides})


def eot_positions(input_ids: jax.Array, eot_token_id: int) -> jax.Array:
    """Index of the first end-of-text token per row (0 if a row has none)."""
    return jnp.argmax(input_ids == eot_token_id, axis=-1)


class ClipTextTransformer(nn.Module):
    """Returns `last_hidden_state` (after the final layer norm) and `pooled` (at end-of-text)."""

    config: ClipTextConfig

    @nn.compact
    def __call__(self, input_ids: jax.Array) -> dict[str, jax.Array]:
        cfg = self.config
        length = input_ids.shape[-1]
        if length > cfg.context_length:
            raise ValueError(f"text length {length} exceeds the context length {cfg.context_length}")
        token = nn.Embed(cfg.vocab_size, cfg.width, embedding_init=nn.initializers.normal(0.02),
                         name="token_embedding")
        position = self.param("position_embedding", nn.initializers.normal(0.01),
                              (cfg.context_length, cfg.width))
        x = (token(input_ids) + position[:length]).astype(cfg.dtype)
        causal = nn.make_causal_mask(input_ids, dtype=jnp.bool_)
        block = dict(num_heads=cfg.heads, mlp_dim=cfg.mlp_dim, mlp_act=cfg.mlp_act,
                     layer_norm_eps=cfg.layer_norm_eps, pre_norm=True, dtype=cfg.dtype)
        x = layers.Encoder(cfg.depth, block, scan=cfg.scan, remat=cfg.remat, name="encoder")(x, causal)
        x = layers.layer_norm(cfg.layer_norm_eps, "final_layer_norm")(x)
        pooled = jnp.take_along_axis(x, eot_positions(input_ids, cfg.eot_token_id)[:, None, None], axis=1)
        return {"last_hidden_state": x, "pooled": pooled[:, 0]}
