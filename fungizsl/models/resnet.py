"""CLIP's modified ResNet image tower (Radford et al. 2021, "Learning Transferable Visual Models
From Natural Language Supervision", section 2.4), with the published RN50 ... RN50x64 sizes.

Three changes to a torchvision-style ResNet, all reproduced here:

* a stem of three 3x3 convolutions (the first strided) followed by a 2x2 average pool, instead
  of one 7x7 convolution and a max pool;
* anti-aliased strided bottlenecks (Zhang 2019): every stride-2 block downsamples with an
  average pool after its 3x3 convolution, and its shortcut is an average pool then a 1x1 conv;
* attention pooling: the [H*W] feature map plus its mean, with a learned position table, goes
  through one multi-head attention whose query is the mean token; its output projection
  (`c_proj`) maps straight into the joint CLIP space, so a two-tower model built on this tower
  has no separate visual projection.

Parameter names follow open_clip's `ModifiedResNet` (`conv1`, `bn1`, `layer1_0/...`,
`attnpool/q_proj`, ...), so `fungizsl.weights.open_clip` converts by renaming. Inputs are NHWC
float images, normalised. Another resolution than `image_size` works when it is a multiple of
32: the attention-pool position table is then resampled bicubically (open_clip does not resample
and needs the native size; at the native size the two agree exactly).

BatchNorm. Running statistics live in the `batch_stats` collection (PyTorch's running_mean /
running_var; momentum 0.1 in PyTorch is `momentum=0.9` here, eps 1e-5). With `train=True` a
block normalises with the batch's statistics and updates the running ones (apply with
`mutable=["batch_stats"]`); with `train=False` it uses the running ones.

* Sharded training: the trainer's step is one `jax.jit` over a device mesh with the batch
  sharded by `NamedSharding`. The program is written for the GLOBAL batch, so the batch mean
  and variance are global: XLA inserts the cross-device reductions itself. Statistics are
  therefore synchronised across devices (SyncBatchNorm) with no `axis_name`. `axis_name` is
  only needed where the step is written per device (`jax.shard_map`, `pmap`); set
  `ResNetConfig.batch_norm_axis_name` to the mesh axis there.
* Fine-tuning: `frozen_batch_norm=True` always normalises with the running statistics and never
  updates them, like open_clip's `lock_image_tower(freeze_bn_stats=True)`; the BatchNorm scale
  and bias stay trainable unless the optimizer freezes them too (`config.optim.frozen`).
  Useful when the per-device batch is small, or when fine-tuning OpenAI's RN50 on a few
  thousand images would otherwise drift its statistics.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import layers, posemb

EXPANSION = 4  # bottleneck output channels = 4 x its inner width


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
    layers: tuple[int, int, int, int]  # bottleneck blocks per stage
    width: int  # stem output channels; stage i has inner width width * 2**i
    heads: int  # attention-pool heads (open_clip: width * 32 // 64)
    output_dim: int  # attention-pool output = the joint CLIP space
    image_size: int  # native resolution (sets the attention-pool position table)
    batch_norm_momentum: float = 0.9  # Flax convention: PyTorch's momentum 0.1
    batch_norm_eps: float = 1e-5
    frozen_batch_norm: bool = False  # always use running statistics (fine-tuning)
    batch_norm_axis_name: str | None = None  # only for per-device code (shard_map / pmap)
    dtype: str = "float32"  # conv/matmul dtype; parameters and statistics stay float32

    def __post_init__(self):
        if len(self.layers) != 4 or min(self.layers) < 1:
            raise ValueError(f"ResNetConfig.layers must be four positive block counts, got {self.layers}")
        if self.image_size % 32:
            raise ValueError(f"ResNetConfig.image_size {self.image_size} is not a multiple of 32")
        if (self.width * 32) % self.heads:
            raise ValueError(f"ResNetConfig: feature width {self.width * 32} is not divisible by "
                             f"heads {self.heads}")

    @property
    def embed_dim(self) -> int:
        """Channels of the last stage (what the attention pool attends over)."""
        return self.width * 8 * EXPANSION

    @property
    def grid(self) -> int:
        return self.image_size // 32


def _rn(layers, width, image_size, output_dim):
    return dict(layers=tuple(layers), width=width, heads=width * 32 // 64, image_size=image_size,
                output_dim=output_dim)


# The OpenAI checkpoints' sizes (open_clip's RN*.json) and a CPU-sized tower for 96 px renders.
VARIANTS: dict[str, dict[str, Any]] = {
    "rn50": _rn((3, 4, 6, 3), 64, 224, 1024),
    "rn101": _rn((3, 4, 23, 3), 64, 224, 512),
    "rn50x4": _rn((4, 6, 10, 6), 80, 288, 640),
    "rn50x16": _rn((6, 8, 18, 8), 96, 384, 768),
    "rn50x64": _rn((3, 15, 36, 10), 128, 448, 1024),
    # 1.3 M parameters; feature width 512 with 8 attention-pool heads of 64.
    "rn_tiny": _rn((1, 1, 1, 1), 16, 96, 32),
}


def resnet_config(variant: str, **overrides) -> ResNetConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ResNet variant {variant!r}; known: {sorted(VARIANTS)}")
    return ResNetConfig(**{**VARIANTS[variant], **overrides})


def avg_pool(x: jax.Array, size: int) -> jax.Array:
    """PyTorch's AvgPool2d(size): non-overlapping windows, no padding."""
    if size == 1:
        return x
    return nn.avg_pool(x, (size, size), strides=(size, size), padding="VALID")


def _conv(features: int, kernel: int, name: str, dtype, stride: int = 1) -> nn.Conv:
    pad = kernel // 2
    return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                   use_bias=False, dtype=dtype, name=name)


class Bottleneck(nn.Module):
    config: ResNetConfig
    planes: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array, train: bool) -> jax.Array:
        cfg, out_channels = self.config, self.planes * EXPANSION
        out = nn.relu(layers.batch_norm(cfg, train, "bn1")(_conv(self.planes, 1, "conv1", cfg.dtype)(x)))
        out = nn.relu(layers.batch_norm(cfg, train, "bn2")(_conv(self.planes, 3, "conv2", cfg.dtype)(out)))
        out = avg_pool(out, self.stride)
        # A zero-initialised last scale makes every block start as its shortcut (as open_clip does).
        out = layers.batch_norm(cfg, train, "bn3", zero_scale=True)(_conv(out_channels, 1, "conv3", cfg.dtype)(out))
        identity = x
        if self.stride > 1 or x.shape[-1] != out_channels:
            identity = _conv(out_channels, 1, "downsample_conv", cfg.dtype)(avg_pool(x, self.stride))
            identity = layers.batch_norm(cfg, train, "downsample_bn")(identity)
        return nn.relu(out + identity)


class AttentionPool(nn.Module):
    """Multi-head attention of the mean token over [mean, H*W tokens], then `c_proj`."""

    config: ResNetConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        cfg = self.config
        batch, height, width, channels = x.shape
        tokens = x.reshape(batch, height * width, channels)
        tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
        table = self.param("positional_embedding", nn.initializers.normal(channels ** -0.5),
                           (cfg.grid ** 2 + 1, channels))
        grid_pos = posemb.resample_grid(table[1:].reshape(cfg.grid, cfg.grid, channels), (height, width))
        pos = jnp.concatenate([table[:1], grid_pos.reshape(-1, channels)], axis=0)
        tokens = tokens + pos.astype(tokens.dtype)
        init = nn.initializers.normal(channels ** -0.5)
        dense = lambda name, features=channels: nn.Dense(features, dtype=cfg.dtype, kernel_init=init, name=name)
        head_dim = channels // cfg.heads
        split = lambda t: t.reshape(t.shape[:-1] + (cfg.heads, head_dim))
        # Only the mean token's output is kept, so only its query is computed.
        q = split(dense("q_proj")(tokens[:, :1]))
        k, v = split(dense("k_proj")(tokens)), split(dense("v_proj")(tokens))
        logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) * head_dim ** -0.5
        weights = jax.nn.softmax(logits, axis=-1).astype(cfg.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v).reshape(batch, channels)
        return dense("c_proj", cfg.output_dim)(out)


class ModifiedResNet(nn.Module):
    """Returns `pooled` [B, output_dim] (attention-pooled, already in the joint space) and
    `feature_map` [B, H/32, W/32, embed_dim]."""

    config: ResNetConfig

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        cfg = self.config
        layers.check_image_batch(images, 32)
        x = images.astype(cfg.dtype)
        stem = ((cfg.width // 2, 2), (cfg.width // 2, 1), (cfg.width, 1))
        for i, (features, stride) in enumerate(stem, start=1):
            x = _conv(features, 3, f"conv{i}", cfg.dtype, stride=stride)(x)
            x = nn.relu(layers.batch_norm(cfg, train, f"bn{i}")(x))
        x = avg_pool(x, 2)
        for stage, blocks in enumerate(cfg.layers):
            planes = cfg.width * 2 ** stage
            for block in range(blocks):
                stride = 2 if stage > 0 and block == 0 else 1
                x = Bottleneck(cfg, planes, stride, name=f"layer{stage + 1}_{block}")(x, train)
        return {"feature_map": x, "pooled": AttentionPool(cfg, name="attnpool")(x)}
