"""Two-tower CLIP (Radford et al. 2021) as fine-tuned by FungalZSL (Rani, Arroyo, Durdevic 2025).

An image tower (`vit.py`, CLIP flavour) and a text tower (`clip_text.py`), each followed by a
bias-free linear projection into the joint space, and a learnable log logit scale initialised
at log(1/0.07) and clamped at log(100) as in CLIP training. `encode_image` / `encode_text`
return unnormalised projected features (as Hugging Face's get_image_features); `__call__`
returns both, L2-normalised, and the similarity logits.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import clip_text, vit

MAX_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    vision: vit.ViTConfig
    text: clip_text.ClipTextConfig
    projection_dim: int = 512
    logit_scale_init: float = math.log(1 / 0.07)


ARCHITECTURES = {
    # arch: (vision variant, text variant, projection dim), the OpenAI checkpoints' sizes.
    "b32": ("clip_b32", "clip_b", 512),
    "b16": ("clip_b16", "clip_b", 512),
    "l14": ("clip_l14", "clip_l", 768),
    "l14_336": ("clip_l14_336", "clip_l", 768),
    "tiny": ("clip_tiny", "clip_tiny", 32),  # tests and CPU runs
}


def clip_config(arch: str, dtype: str = "float32", scan: bool = False, remat: bool = False) -> ClipConfig:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown CLIP architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    vision, text, dim = ARCHITECTURES[arch]
    runtime = dict(dtype=dtype, scan=scan, remat=remat)
    return ClipConfig(vit.vit_config(vision, **runtime), clip_text.clip_text_config(text, **runtime), dim)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class ClipModel(nn.Module):
    config: ClipConfig

    def setup(self):
        cfg = self.config
        self.vision_model = vit.VisionTransformer(cfg.vision)
        self.text_model = clip_text.ClipTextTransformer(cfg.text)
        self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=cfg.vision.dtype)
        self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=cfg.text.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init), ())

    def encode_image(self, images: jax.Array) -> jax.Array:
        return self.visual_projection(self.vision_model(images)["pooled"]).astype(jnp.float32)

    def encode_text(self, input_ids: jax.Array) -> jax.Array:
        return self.text_projection(self.text_model(input_ids)["pooled"]).astype(jnp.float32)

    def temperature_scale(self) -> jax.Array:
        """exp(logit_scale), with the log scale clamped at log(100) as CLIP does."""
        return jnp.exp(jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE))

    def __call__(self, images: jax.Array, input_ids: jax.Array) -> dict[str, jax.Array]:
        zimg = l2_normalize(self.encode_image(images))
        ztxt = l2_normalize(self.encode_text(input_ids))
        logits_per_image = self.temperature_scale() * zimg @ ztxt.T
        return {"zimg": zimg, "ztxt": ztxt, "logits_per_image": logits_per_image,
                "logits_per_text": logits_per_image.T}
