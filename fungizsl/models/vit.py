"""Vision Transformer image towers in two flavours, with a variant table of published sizes.

* `clip`: OpenAI CLIP's ViT (Radford et al. 2021, "Learning Transferable Visual Models From
  Natural Language Supervision"): bias-free patch conv, class embedding, `pre_layrnorm`,
  pre-norm QuickGELU blocks, `post_layernorm` on the class token. The projection into the joint
  space belongs to the two-tower model (`two_towers.py`), as in Hugging Face's CLIPModel.
* `dinov2`: DINOv2 (Oquab et al. 2023) and DINOv2 with registers (Darcet et al. 2024, "Vision
  Transformers Need Registers"): patch conv with bias, LayerScale, optional register tokens,
  SwiGLU MLP for ViT-g, final LayerNorm over every token.

Embedding parameters keep their Hugging Face names and shapes so that conversion is a rename;
inputs are NHWC float images already normalised. Any input resolution divisible by the patch
size works: the position table is resampled as upstream does (see `posemb.py`).
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import layers, posemb


@dataclasses.dataclass(frozen=True)
class ViTConfig:
    flavour: str  # "clip" | "dinov2"
    image_size: int
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_dim: int
    mlp_act: str  # "quick_gelu" | "gelu" | "swiglu"
    layer_norm_eps: float
    num_registers: int = 0
    layer_scale_init: float = 1.0  # dinov2 only
    dtype: str = "float32"  # matmul dtype; parameters stay float32
    scan: bool = False
    remat: bool = False

    def __post_init__(self):
        if self.flavour not in ("clip", "dinov2"):
            raise ValueError(f"ViTConfig.flavour must be 'clip' or 'dinov2', got {self.flavour!r}")
        if self.image_size % self.patch_size:
            raise ValueError(f"ViTConfig.image_size {self.image_size} is not a multiple of "
                             f"patch_size {self.patch_size}")
        if self.num_registers and self.flavour != "dinov2":
            raise ValueError("ViTConfig.num_registers is only supported by the dinov2 flavour")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


def _dinov2_swiglu_hidden(width: int, mlp_ratio: float = 4.0) -> int:
    # Upstream keeps two thirds of the MLP width, rounded up to a multiple of 8.
    return (int(int(width * mlp_ratio) * 2 / 3) + 7) // 8 * 8


def _clip(image_size, patch, width, depth, heads):
    return dict(flavour="clip", image_size=image_size, patch_size=patch, width=width, depth=depth,
                heads=heads, mlp_dim=4 * width, mlp_act="quick_gelu", layer_norm_eps=1e-5)


def _dinov2(width, depth, heads, registers=0, swiglu=False):
    mlp = dict(mlp_dim=_dinov2_swiglu_hidden(width), mlp_act="swiglu") if swiglu else dict(
        mlp_dim=4 * width, mlp_act="gelu")
    return dict(flavour="dinov2", image_size=518, patch_size=14, width=width, depth=depth,
                heads=heads, layer_norm_eps=1e-6, num_registers=registers, **mlp)


# Exact sizes of the published checkpoints (OpenAI CLIP, facebook/dinov2-*), plus tiny ones
# for tests and CPU smoke runs.
VARIANTS: dict[str, dict[str, Any]] = {
    "clip_b32": _clip(224, 32, 768, 12, 12),
    "clip_b16": _clip(224, 16, 768, 12, 12),
    "clip_l14": _clip(224, 14, 1024, 24, 16),
    "clip_l14_336": _clip(336, 14, 1024, 24, 16),
    "clip_tiny": _clip(32, 8, 64, 2, 4),
    "dinov2_s14": _dinov2(384, 12, 6),
    "dinov2_b14": _dinov2(768, 12, 12),
    "dinov2_l14": _dinov2(1024, 24, 16),
    "dinov2_g14": _dinov2(1536, 40, 24, swiglu=True),
    "dinov2_tiny": dict(_dinov2(64, 2, 4), image_size=28),
}
for _name in ("s14", "b14", "l14", "g14", "tiny"):
    VARIANTS[f"dinov2_{_name}_reg"] = dict(VARIANTS[f"dinov2_{_name}"], num_registers=4)


def vit_config(variant: str, **overrides) -> ViTConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ViT variant {variant!r}; known: {sorted(VARIANTS)}")
    return ViTConfig(**{**VARIANTS[variant], **overrides})


class ClipEmbeddings(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        patches = nn.Conv(cfg.width, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2,
                          padding="VALID", use_bias=False, dtype=cfg.dtype, name="patch_embedding")(images)
        grid = patches.shape[1:3]
        patches = patches.reshape(patches.shape[0], -1, cfg.width)
        cls = self.param("class_embedding", nn.initializers.normal(cfg.width ** -0.5), (cfg.width,))
        table = nn.Embed(cfg.grid ** 2 + 1, cfg.width, name="position_embedding",
                         embedding_init=nn.initializers.normal(0.02)).embedding
        patch_pos = posemb.resample_grid(table[1:].reshape(cfg.grid, cfg.grid, cfg.width), grid)
        pos = jnp.concatenate([table[:1], patch_pos.reshape(-1, cfg.width)], axis=0)
        cls = jnp.broadcast_to(cls.astype(patches.dtype), (patches.shape[0], 1, cfg.width))
        return jnp.concatenate([cls, patches], axis=1) + pos.astype(patches.dtype)


class Dinov2PatchEmbeddings(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array) -> jax.Array:
        cfg = self.config
        return nn.Conv(cfg.width, (cfg.patch_size,) * 2, strides=(cfg.patch_size,) * 2,
                       padding="VALID", dtype=cfg.dtype, name="projection")(images)


class Dinov2Embeddings(nn.Module):
    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array, masked_patches: jax.Array | None = None) -> jax.Array:
        cfg = self.config
        patches = Dinov2PatchEmbeddings(cfg, name="patch_embeddings")(images)
        grid = patches.shape[1:3]
        batch = patches.shape[0]
        patches = patches.reshape(batch, -1, cfg.width)
        init = nn.initializers.normal(0.02)
        cls = self.param("cls_token", init, (1, 1, cfg.width))
        # Only used for masked-image modelling, but every upstream checkpoint carries it.
        mask_token = self.param("mask_token", nn.initializers.zeros, (1, cfg.width))
        table = self.param("position_embeddings", init, (1, cfg.grid ** 2 + 1, cfg.width))
        if masked_patches is not None:
            patches = jnp.where(masked_patches[..., None], mask_token.astype(patches.dtype), patches)
        # The registers checkpoints were resampled with antialias=True upstream.
        patch_pos = posemb.resample_grid(table[0, 1:].reshape(cfg.grid, cfg.grid, cfg.width), grid,
                                         antialias=cfg.num_registers > 0)
        pos = jnp.concatenate([table[0, :1], patch_pos.reshape(-1, cfg.width)], axis=0)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(patches.dtype), (batch, 1, cfg.width)),
                             patches], axis=1) + pos.astype(patches.dtype)
        if cfg.num_registers:
            registers = self.param("register_tokens", nn.initializers.zeros,
                                   (1, cfg.num_registers, cfg.width))
            registers = jnp.broadcast_to(registers.astype(x.dtype), (batch,) + registers.shape[1:])
            x = jnp.concatenate([x[:, :1], registers, x[:, 1:]], axis=1)
        return x


class VisionTransformer(nn.Module):
    """Returns `last_hidden_state` [B, tokens, width] and `pooled` [B, width], as Hugging Face
    defines them for each flavour (CLIP: the encoder output before `post_layernorm`, pooled =
    post_layernorm(class token); DINOv2: layernorm over all tokens, pooled = its class token).
    Token order is [class, registers..., patches...]."""

    config: ViTConfig

    @nn.compact
    def __call__(self, images: jax.Array, masked_patches: jax.Array | None = None) -> dict[str, jax.Array]:
        cfg = self.config
        layers.check_image_batch(images, cfg.patch_size, unit="patch size ")
        images = images.astype(cfg.dtype)
        clip = cfg.flavour == "clip"
        if clip:
            x = ClipEmbeddings(cfg, name="embeddings")(images)
            x = layers.layer_norm(cfg.layer_norm_eps, "pre_layrnorm")(x).astype(cfg.dtype)
        else:
            x = Dinov2Embeddings(cfg, name="embeddings")(images, masked_patches)
        block = dict(num_heads=cfg.heads, mlp_dim=cfg.mlp_dim, mlp_act=cfg.mlp_act,
                     layer_norm_eps=cfg.layer_norm_eps, pre_norm=True, dtype=cfg.dtype,
                     layer_scale_init=None if clip else cfg.layer_scale_init)
        x = layers.Encoder(cfg.depth, block, scan=cfg.scan, remat=cfg.remat, name="encoder")(x)
        if clip:
            pooled = layers.layer_norm(cfg.layer_norm_eps, "post_layernorm")(x[:, 0])
            return {"last_hidden_state": x, "pooled": pooled}
        x = layers.layer_norm(cfg.layer_norm_eps, "layernorm")(x)
        return {"last_hidden_state": x, "pooled": x[:, 0]}
