"""Two-tower CLIP (Radford et al. 2021) as fine-tuned by FungalZSL (Rani, Arroyo, Durdevic 2025).

An image tower and a text tower (`clip_text.py`) mapped into one joint space, and a learnable log logit scale initialised
at log(1/0.07) and clamped at log(100) as in CLIP training. `encode_image` / `encode_text`
return unnormalised projected features (as Hugging Face's get_image_features); `__call__`
returns both, L2-normalised, and the similarity logits.

The image tower is either CLIP's ViT (`vit.py`), followed like the text tower by a bias-free
linear projection, or CLIP's modified ResNet (`resnet.py`), whose attention pool projects into
the joint space itself, or the plain CPU-sized `convnet.py` (not a CLIP architecture), which
also projects itself. The convolutional towers carry BatchNorm statistics in the `batch_stats`
collection: pass `train=True` (and `mutable=["batch_stats"]`) in the training step.
"""

import dataclasses
import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import clip_text, convnet, resnet, vit

MAX_LOGIT_SCALE = math.log(100.0)


@dataclasses.dataclass(frozen=True)
class ClipConfig:
    vision: vit.ViTConfig | resnet.ResNetConfig | convnet.ConvNetConfig
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
    # CLIP's modified ResNets (open_clip's RN*.json); the projection dim is the attention pool's output.
    "rn50": ("rn50", "clip_b", 1024),
    "rn101": ("rn101", "clip_b", 512),
    "rn50x4": ("rn50x4", "clip_rn50x4", 640),
    "rn50x16": ("rn50x16", "clip_l", 768),
    "rn50x64": ("rn50x64", "clip_rn50x64", 1024),
    "rn_tiny": ("rn_tiny", "clip_tiny", 32),  # CPU runs at 96 px
    # Not a CLIP architecture: a plain conv tower, the 2-core default (models/convnet.py says why).
    "cnn_tiny": ("cnn_tiny", "clip_tiny", 32),
}


def is_resnet(config: ClipConfig) -> bool:
    return isinstance(config.vision, resnet.ResNetConfig)


def is_convnet(config: ClipConfig) -> bool:
    return isinstance(config.vision, convnet.ConvNetConfig)


def tower_projects_itself(config: ClipConfig) -> bool:
    """The convolutional towers end in the joint space (attention pool / linear projection)."""
    return is_resnet(config) or is_convnet(config)


def clip_config(arch: str, dtype: str = "float32", scan: bool = False, remat: bool = False) -> ClipConfig:
    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown CLIP architecture {arch!r}; known: {sorted(ARCHITECTURES)}")
    vision, text, dim = ARCHITECTURES[arch]
    runtime = dict(dtype=dtype, scan=scan, remat=remat)
    if vision in resnet.VARIANTS:
        vision_config = resnet.resnet_config(vision, output_dim=dim, dtype=dtype)
    elif vision in convnet.VARIANTS:
        vision_config = convnet.convnet_config(vision, output_dim=dim, dtype=dtype)
    else:
        vision_config = vit.vit_config(vision, **runtime)
    return ClipConfig(vision_config, clip_text.clip_text_config(text, **runtime), dim)


def l2_normalize(x: jax.Array, eps: float = 1e-12) -> jax.Array:
    x = x.astype(jnp.float32)
    return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


class ClipModel(nn.Module):
    config: ClipConfig

    def setup(self):
        cfg = self.config
        if tower_projects_itself(cfg):
            if cfg.vision.output_dim != cfg.projection_dim:
                raise ValueError(f"{type(cfg.vision).__name__} output_dim {cfg.vision.output_dim} "
                                 f"differs from projection_dim {cfg.projection_dim}")
            self.vision_model = (resnet.ModifiedResNet(cfg.vision) if is_resnet(cfg)
                                 else convnet.ConvNet(cfg.vision))
        else:
            self.vision_model = vit.VisionTransformer(cfg.vision)
            self.visual_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=cfg.vision.dtype)
        self.text_model = clip_text.ClipTextTransformer(cfg.text)
        self.text_projection = nn.Dense(cfg.projection_dim, use_bias=False, dtype=cfg.text.dtype)
        self.logit_scale = self.param("logit_scale", nn.initializers.constant(cfg.logit_scale_init), ())

    def encode_image(self, images: jax.Array, train: bool = False) -> jax.Array:
        """`train` only matters for a convolutional tower: normalise with the batch's statistics."""
        if tower_projects_itself(self.config):
            return self.vision_model(images, train=train)["pooled"].astype(jnp.float32)
        return self.visual_projection(self.vision_model(images)["pooled"]).astype(jnp.float32)

    def encode_text(self, input_ids: jax.Array) -> jax.Array:
        return self.text_projection(self.text_model(input_ids)["pooled"]).astype(jnp.float32)

    def temperature_scale(self) -> jax.Array:
        """exp(logit_scale), with the log scale clamped at log(100) as CLIP does."""
        return jnp.exp(jnp.minimum(self.logit_scale, MAX_LOGIT_SCALE))

    def __call__(self, images: jax.Array, input_ids: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        zimg = l2_normalize(self.encode_image(images, train=train))
        ztxt = l2_normalize(self.encode_text(input_ids))
        logits_per_image = self.temperature_scale() * zimg @ ztxt.T
        return {"zimg": zimg, "ztxt": ztxt, "logits_per_image": logits_per_image,
                "logits_per_text": logits_per_image.T}
