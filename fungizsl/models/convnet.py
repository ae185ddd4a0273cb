"""A plain convolutional image tower for FungalZSL runs on a few CPU cores (not a CLIP architecture).

CLIP's towers (`vit.py`, `resnet.py`) are what pretrained checkpoints come in. Trained from
scratch on 2 CPU cores for a few minutes, on 96 px renders whose hyphae are filaments 1-2 px
wide, a VGG-style stack learns the growth stages faster per second than CLIP's modified ResNet
at a CPU size (docs/results.md, tower ablation):

* a first 3x3 convolution with stride 2, then 3x3 convolution -> BatchNorm -> ReLU layers, each
  but the first and the last followed by a 2x2 max pool. The likely reasons it learns faster
  (not measured one by one): max pooling keeps the strongest response to a thin filament where
  CLIP's anti-aliasing average pools dilute it, and the first layers have 32 channels where the
  CPU-sized ResNet's stem has 8, which also runs more efficiently on the CPU;
* global average pooling and a bias-free linear projection into the joint CLIP space
  (`proj`), so a two-tower model built on it, like one on the ResNet, has no separate visual
  projection;
* optionally (on in `cnn_tiny`), each image standardised per channel over its own pixels before
  the first convolution. In the `realistic` renders the background, palette, illumination and
  exposure are drawn independently of the stage, and faint hyphae on dark fields were read as
  spores; standardising removes that nuisance before any learning (val zero-shot 0.948 vs 0.943
  in the same recipe).

BatchNorm follows `resnet.py`: running statistics in the `batch_stats` collection, global batch
statistics in the sharded step (XLA inserts the cross-device reduction), and
`frozen_batch_norm=True` to always use the running ones. There is no Hugging Face or open_clip
format for this tower: a trained run is loaded from its workdir (`fungizsl.fungalzsl.load`).
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import layers

STANDARDIZE_EPS = 1e-2  # added to each image's per-channel variance before the square root


@dataclasses.dataclass(frozen=True)
class ConvNetConfig:
    widths: tuple[int, ...]  # output channels of each 3x3 convolution layer
    output_dim: int  # the joint CLIP space
    image_size: int  # nominal resolution; any size divisible by 2 ** (len(widths) - 1) works
    batch_norm_momentum: float = 0.9  # Flax convention: PyTorch's momentum 0.1
    batch_norm_eps: float = 1e-5
    frozen_batch_norm: bool = False
    standardize_input: bool = False  # per image and channel: zero mean, unit variance over H, W
    batch_norm_axis_name: str | None = None  # only for per-device code (shard_map / pmap)
    dtype: str = "float32"  # conv/matmul dtype; parameters and statistics stay float32

    def __post_init__(self):
        if len(self.widths) < 2 or min(self.widths) < 1:
            raise ValueError(f"ConvNetConfig.widths must be at least two positive channel counts, "
                             f"got {self.widths}")
        if self.image_size % self.downsampling:
            raise ValueError(f"ConvNetConfig.image_size {self.image_size} is not a multiple of "
                             f"{self.downsampling} (the stride-2 stem and {len(self.widths) - 2} max pools)")

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.widths) - 1)


VARIANTS = {
    # 0.4 M parameters; 96 px -> 48 (stem) -> 24 -> 12 -> 6 before the global pool.
    "cnn_tiny": dict(widths=(32, 32, 64, 128, 256), image_size=96, standardize_input=True),
}


def convnet_config(variant: str, **overrides) -> ConvNetConfig:
    if variant not in VARIANTS:
        raise ValueError(f"unknown ConvNet variant {variant!r}; known: {sorted(VARIANTS)}")
    return ConvNetConfig(**{**VARIANTS[variant], **overrides})


def _windows(x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c)


def _first_max_mask(windows: jax.Array, pooled: jax.Array) -> jax.Array:
    """True at the first maximum of each 2x2 window (row-major: top left, top right, bottom left,
    bottom right), False elsewhere."""
    hit = windows == pooled[:, :, None, :, None, :]
    tl, tr, bl, br = hit[:, :, 0, :, 0], hit[:, :, 0, :, 1], hit[:, :, 1, :, 0], hit[:, :, 1, :, 1]
    tr = tr & ~tl
    bl = bl & ~(tl | tr)
    br = br & ~(tl | tr | bl)
    top = jnp.stack([tl, tr], axis=3)  # [b, h/2, w/2, 2 (column), c]
    bottom = jnp.stack([bl, br], axis=3)
    return jnp.stack([top, bottom], axis=2)  # [b, h/2, 2 (row), w/2, 2 (column), c]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pooling with stride 2 of NHWC activations: the values of
    `nn.max_pool(x, (2, 2), strides=(2, 2))`, and the gradient of PyTorch's `max_pool2d`: all of a
    window's gradient goes to its first maximum (row-major).

    Written as a reshape and a max with its own gradient because XLA:CPU is slow at both others:
    `nn.max_pool`'s gradient is a select-and-scatter, and the automatic gradient of the reshape's
    max splits ties among the maxima through a count (a compare, a convert, a reduction and a
    division over the whole activation). Here the backward pass is one element-wise select.
    Measured on the cnn_tiny train step (batch 32, fp32, 2 quiet cores, convolutions on Eigen as
    `fungizsl.xla_options` sets): select-and-scatter 187 ms before that; reshape + max with the
    automatic gradient 122 ms, with this gradient 115 ms (docs/benchmarks.md)."""
    return _windows(x).max(axis=(2, 4))


def _max_pool_fwd(x):
    pooled = _windows(x).max(axis=(2, 4))
    return pooled, (x, pooled)


def _max_pool_bwd(residuals, grad):
    x, pooled = residuals
    mask = _first_max_mask(_windows(x), pooled)
    dx = jnp.where(mask, grad[:, :, None, :, None, :], jnp.zeros((), grad.dtype))
    return (dx.reshape(x.shape),)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


class ConvNet(nn.Module):
    """Returns `pooled` [B, output_dim] (already in the joint space) and `feature_map`
    [B, H/2**(n-1), W/2**(n-1), widths[-1]]."""

    config: ConvNetConfig

    @nn.compact
    def __call__(self, images: jax.Array, train: bool = False) -> dict[str, jax.Array]:
        cfg = self.config
        layers.check_image_batch(images, cfg.downsampling)
        x = images.astype(jnp.float32)
        if cfg.standardize_input:
            mean = x.mean(axis=(1, 2), keepdims=True)
            x = (x - mean) * jax.lax.rsqrt(x.var(axis=(1, 2), keepdims=True) + STANDARDIZE_EPS)
        x = x.astype(cfg.dtype)
        last = len(cfg.widths) - 1
        for i, features in enumerate(cfg.widths):
            stride = 2 if i == 0 else 1
            x = nn.Conv(features, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                        use_bias=False, dtype=cfg.dtype, name=f"conv{i}")(x)
            x = nn.relu(layers.batch_norm(cfg, train, f"bn{i}")(x))
            if 0 < i < last:
                x = max_pool_2x2(x)
        pooled = nn.Dense(cfg.output_dim, use_bias=False, dtype=cfg.dtype, name="proj")(
            x.astype(jnp.float32).mean(axis=(1, 2)).astype(cfg.dtype))
        return {"feature_map": x, "pooled": pooled}
