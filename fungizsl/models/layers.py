"""Building blocks shared by the towers: the transformer blocks of CLIP ViT and text, DINOv2 and
BERT, the input check of every image tower (ViT, CLIP ResNet, the plain conv tower), and the
BatchNorm of the convolutional ones.

One `EncoderBlock` covers the three upstream block layouts:

* CLIP (Radford et al. 2021): pre-norm, QuickGELU MLP.
* DINOv2 (Oquab et al. 2023): pre-norm, GELU or SwiGLU MLP, LayerScale on both branches.
* BERT (Devlin et al. 2019): post-norm, GELU MLP.

Sub-module names are our own canonical ones (`attn/{query,key,value,out}`, `norm1`, `norm2`,
`mlp/...`, `layer_scale1`); `fungizsl.weights` maps them to each checkpoint's names with a short
table per model. Parameters are kept in `param_dtype` (fp32) while matmuls run in `dtype`
(bf16 on accelerators); softmax and layer norms are computed in fp32. The dense layers are
`matmul.Dense` (`nn.Dense`'s parameters), whose bf16 matmuls accumulate in fp32 on CPU.
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from fungizsl.models import batch_norm as batch_norm_lib
from fungizsl.models import matmul

Dtype = Any


def check_image_batch(images: jax.Array, multiple: int, unit: str = "") -> None:
    """An image tower's input: NHWC with 3 channels, height and width divisible by `multiple`
    (`unit` names what it is in the error, e.g. "patch size ")."""
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected NHWC images with 3 channels, got shape {images.shape}")
    if images.shape[1] % multiple or images.shape[2] % multiple:
        raise ValueError(f"image size {images.shape[1:3]} is not a multiple of {unit}{multiple}")


def batch_norm(cfg, train: bool, name: str, zero_scale: bool = False) -> Callable[[jax.Array], jax.Array]:
    """BatchNorm of a convolutional tower (CLIP ResNet, plain conv tower), computed in fp32 and
    cast back to `cfg.dtype`. `cfg` carries `frozen_batch_norm`, `batch_norm_momentum`,
    `batch_norm_eps`, `batch_norm_axis_name` and `dtype`; parameters `scale`, `bias`, statistics
    `mean`, `var` in `batch_stats`. Call inside the owning module's compact method."""
    if cfg.batch_norm_axis_name is None:
        norm = batch_norm_lib.BatchNorm(use_running_average=not train or cfg.frozen_batch_norm,
                                        momentum=cfg.batch_norm_momentum, epsilon=cfg.batch_norm_eps,
                                        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
                                        name=name)
        return lambda x: norm(x.astype(jnp.float32)).astype(cfg.dtype)
    norm = nn.BatchNorm(use_running_average=not train or cfg.frozen_batch_norm,
                        momentum=cfg.batch_norm_momentum, epsilon=cfg.batch_norm_eps,
                        axis_name=cfg.batch_norm_axis_name, dtype=jnp.float32,
                        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
                        name=name)
    return lambda x: norm(x.astype(jnp.float32)).astype(cfg.dtype)


def quick_gelu(x: jax.Array) -> jax.Array:
    """OpenAI CLIP's sigmoid approximation of GELU."""
    return x * jax.nn.sigmoid(1.702 * x)


def exact_gelu(x: jax.Array) -> jax.Array:
    """GELU with the exact erf, x * (1 + erf(x / sqrt 2)) / 2, the form PyTorch computes.
    `jax.nn.gelu(approximate=False)` uses the erfc form instead, which XLA:CPU runs about 1.3x
    slower (a branchy erfc; measured alone on DINOv2-S's MLP activations, 1 thread); the two
    agree to 1.1e-6 (float32, |x| < 15)."""
    return x * (0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(0.7071067811865476, x.dtype)))


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu,
    "gelu": exact_gelu,
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def layer_norm(epsilon: float, name: str, param_dtype: Dtype = jnp.float32) -> nn.Module:
    # A plain nn.LayerNorm keeps the parameter path short (`norm1/scale`); computing in fp32
    # matches PyTorch, which upcasts inside its fused kernel.
    return nn.LayerNorm(epsilon=epsilon, dtype=jnp.float32, param_dtype=param_dtype, name=name)


class _ProjectionWeights(nn.Module):
    """The kernel and bias of one `nn.Dense(width)`, under the same names and initialisers, handed
    back unapplied so that SelfAttention can fuse query/key/value into one matmul."""

    features: int
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, in_features: int) -> tuple[jax.Array, jax.Array]:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (in_features, self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        return kernel, bias


def _use_fused_attention_kernel(dtype) -> bool:
    """On GPUs in half precision, `jax.nn.dot_product_attention` picks cuDNN's fused kernel."""
    return jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)


class SelfAttention(nn.Module):
    """Multi-head self-attention. Parameters are stored as the upstream checkpoints store them
    (separate `query`, `key`, `value`, `out` Dense layers), so weights load without splitting a
    fused matrix; the computation is arranged for speed (measured with `python -m fungizsl.bench`
    on XLA's CPU backend, ViT-tiny at 96 px, interleaved A/B in one process):

    * query/key/value as ONE matmul against the concatenated kernels (one pass over the
      activations instead of three);
    * the 1/sqrt(head_dim) scale applied to q [b,h,t,d] rather than to the logits [b,h,t,t];
    * softmax normalisation deferred past the attention-weighted sum (as flash attention does):
      out = (exp(l - max l) @ v) / sum exp(l - max l), so the division touches [b,h,t,d], not
      [b,h,t,t], and the normalised weights are never materialised;
    * heads-major [b, h, t, d] layout, which the CPU backend runs much faster than heads last;
    * on GPUs in bf16/fp16, `jax.nn.dot_product_attention` (cuDNN fused attention where it applies).

    Together about 1.15x on the whole tiny-CLIP train step; the result equals the textbook
    softmax(q k^T / sqrt(d)) v to float rounding (parity tests, 1e-4).
    """

    num_heads: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        width = x.shape[-1]
        if width % self.num_heads:
            raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
        head_dim = width // self.num_heads
        projections = [_ProjectionWeights(width, self.param_dtype, name=n)(width)
                       for n in ("query", "key", "value")]
        kernel = jnp.concatenate([k for k, _ in projections], axis=1)
        bias = jnp.concatenate([b for _, b in projections])  # matmul.dense casts (bf16 on CPU: adds in fp32)
        qkv = matmul.dense(x.astype(self.dtype), kernel, bias)
        if _use_fused_attention_kernel(self.dtype):
            heads_last = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, head_dim))
            q, k, v = (heads_last(t) for t in jnp.split(qkv, 3, axis=-1))
            out = jax.nn.dot_product_attention(q, k, v, mask=mask)  # cuDNN flash attention where it applies
            out = out.reshape(x.shape[:-1] + (width,))
            return matmul.Dense(width, self.dtype, self.param_dtype, name="out")(out)
        split = lambda t: t.reshape(t.shape[:-1] + (self.num_heads, head_dim)).swapaxes(-2, -3)
        q, k, v = (split(t) for t in jnp.split(qkv, 3, axis=-1))
        q = q * jnp.asarray(head_dim ** -0.5, q.dtype)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k, preferred_element_type=jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        # The max is a constant shift of each row: no gradient flows through it.
        unnormalised = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
        total = jnp.sum(unnormalised, axis=-1, keepdims=True)
        out = jnp.einsum("bhqk,bhkd->bhqd", unnormalised.astype(self.dtype), v,
                         preferred_element_type=jnp.float32)
        out = (out / total).astype(self.dtype).swapaxes(-2, -3).reshape(x.shape[:-1] + (width,))
        return matmul.Dense(width, self.dtype, self.param_dtype, name="out")(out)


class Mlp(nn.Module):
    """Two-layer MLP (`fc1` -> activation -> `fc2`)."""

    hidden_dim: int
    act: str
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        width = x.shape[-1]
        h = matmul.Dense(self.hidden_dim, self.dtype, self.param_dtype, name="fc1")(x)
        h = activation(self.act)(h)
        return matmul.Dense(width, self.dtype, self.param_dtype, name="fc2")(h)


class SwiGluMlp(nn.Module):
    """SwiGLU feed-forward of DINOv2 ViT-g: out(silu(gate) * up), where gate and up are the two
    halves of one fused `weights_in` projection, as the checkpoints store them."""

    hidden_dim: int
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        dense = lambda features, name: matmul.Dense(features, self.dtype, self.param_dtype, name=name)
        gate, up = jnp.split(dense(2 * self.hidden_dim, "weights_in")(x), 2, axis=-1)
        return dense(x.shape[-1], "weights_out")(jax.nn.silu(gate) * up)


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (CaiT / DINOv2); the parameter is named as upstream."""

    init_value: float = 1.0
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        lambda1 = self.param("lambda1", nn.initializers.constant(self.init_value), (x.shape[-1],),
                             self.param_dtype)
        return x * lambda1.astype(x.dtype)


class EncoderBlock(nn.Module):
    """One transformer block; `pre_norm=False` gives BERT's post-norm layout."""

    num_heads: int
    mlp_dim: int
    mlp_act: str  # an ACTIVATIONS name, or "swiglu"
    layer_norm_eps: float
    pre_norm: bool = True
    layer_scale_init: float | None = None  # None: no LayerScale (CLIP, BERT)
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
        attn = SelfAttention(self.num_heads, name="attn", **kw)
        if self.mlp_act == "swiglu":
            mlp = SwiGluMlp(self.mlp_dim, name="mlp", **kw)
        else:
            mlp = Mlp(self.mlp_dim, self.mlp_act, name="mlp", **kw)
        norm1 = layer_norm(self.layer_norm_eps, "norm1", self.param_dtype)
        norm2 = layer_norm(self.layer_norm_eps, "norm2", self.param_dtype)

        def scaled(branch_out, name):
            if self.layer_scale_init is None:
                return branch_out
            return LayerScale(self.layer_scale_init, self.param_dtype, name=name)(branch_out)

        if self.pre_norm:
            x = x + scaled(attn(norm1(x).astype(self.dtype), mask), "layer_scale1")
            x = x + scaled(mlp(norm2(x).astype(self.dtype)), "layer_scale2")
            return x
        x = norm1(x + attn(x, mask)).astype(self.dtype)
        return norm2(x + mlp(x)).astype(self.dtype)


class _ScannedBlock(EncoderBlock):
    """EncoderBlock with the (carry, x) -> (carry, y) signature nn.scan wants."""

    @nn.compact
    def __call__(self, x, mask):  # type: ignore[override]
        return super().__call__(x, mask), None


class Encoder(nn.Module):
    """A stack of `num_layers` EncoderBlocks.

    `scan=True` stacks the layers' parameters along a leading axis under `layers/` (one compiled
    block body: faster compiles for 24- and 40-layer models); otherwise they are `layers_0`,
    `layers_1`, ... `fungizsl.weights` converts between the two layouts. `remat=True` recomputes
    each block's activations in the backward pass to save memory.
    """

    num_layers: int
    block: dict  # EncoderBlock keyword arguments
    scan: bool = False
    remat: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        if self.scan:
            block_cls = nn.remat(_ScannedBlock) if self.remat else _ScannedBlock
            stack = nn.scan(block_cls, variable_axes={"params": 0}, split_rngs={"params": True},
                            in_axes=nn.broadcast, length=self.num_layers)
            x, _ = stack(**self.block, name="layers")(x, mask)
            return x
        block_cls = nn.remat(EncoderBlock) if self.remat else EncoderBlock
        for i in range(self.num_layers):
            x = block_cls(**self.block, name=f"layers_{i}")(x, mask)
        return x
