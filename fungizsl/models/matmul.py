"""The dense layers' matmul: `lax.dot_general`, except bf16 x bf16 on CPU, where it accumulates
and returns in fp32 and casts the result back, forward and backward.

On a CPU with AMX (Intel Sapphire Rapids and later), XLA:CPU hands a dot to YNNPACK, which runs
bf16 x bf16 on the AMX tiles only when the dot's result is fp32: a [1600, 768] x [768, 3072]
matmul (ViT-B/32's fc1 at batch 32) ran at 1,581 GFLOP/s as bf16 -> fp32 and at 261 GFLOP/s as
bf16 -> bf16, no faster than fp32 x fp32 (264 GFLOP/s; 2 cores, jaxlib 0.10.2). A plain
`preferred_element_type=float32` fixes the forward only: autodiff's transposed dots take the
fp32 cotangent against a bf16 operand and fall back to the slow path. So `dense`
has its own gradient: both transposed matmuls are bf16 x bf16 -> fp32, cast to the operands'
dtype, which is what the automatic gradient of a bf16 matmul returns too. The bias is added to the
fp32 result before the cast: its gradient is then a sum over an fp32 cotangent, which YNNPACK
reduces; the sum of a bf16 cotangent, as `nn.Dense` adds the bias, became a tree of
`reduce-window`s that took 30 ms per fc1 bias on ViT-B/32, 2 s of a 3.3 s step in all.

The ViT-B/32 train step in bf16 (batch 32, 2 cores) went from 7.16 s to 3.26 s with the fp32
matmuls and to 2.58 s with the bias inside; the attention's small batched matmuls ([50, 64] per
head) gained 2 % (2.58 -> 2.53 s, within noise) from the same treatment and keep `jnp.einsum`.
Parameters, names and the fp32 path are unchanged; GPUs and TPUs, whose bf16 matmuls accumulate in
fp32 already, keep plain `lax.dot_general`.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

def _dense_dims(ndim: int):
    """Dense's contraction: the last axis of an ndim input with the first of a 2-D kernel."""
    return ((ndim - 1,), (0,)), ((), ())


@jax.custom_vjp
def _half_dense(x: jax.Array, kernel: jax.Array) -> jax.Array:
    """x @ kernel in fp32 for bf16 operands."""
    return lax.dot_general(x, kernel, _dense_dims(x.ndim), preferred_element_type=jnp.float32)


def _half_dense_fwd(x, kernel):
    return _half_dense(x, kernel), (x, kernel)


def _half_dense_bwd(residuals, g):
    x, kernel = residuals
    g = g.astype(x.dtype)
    dx = lax.dot_general(g, kernel, (((g.ndim - 1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    rows = tuple(range(x.ndim - 1))
    dkernel = lax.dot_general(x, g, ((rows, rows), ((), ())), preferred_element_type=jnp.float32)
    return dx.astype(x.dtype), dkernel.astype(kernel.dtype)


_half_dense.defvjp(_half_dense_fwd, _half_dense_bwd)


def accumulates_in_fp32(dtype, backend: str | None = None) -> bool:
    """Whether `dense` takes the fp32-accumulating path for operands of `dtype`."""
    backend = jax.default_backend() if backend is None else backend
    return backend == "cpu" and jnp.dtype(dtype) == jnp.bfloat16


def dense(x: jax.Array, kernel: jax.Array, bias: jax.Array | None = None) -> jax.Array:
    """x @ kernel (+ bias) over x's last axis, in x's dtype, as `nn.Dense` computes it; bf16 on CPU
    goes through fp32 (module docstring). `kernel` and `bias` are cast to x's dtype."""
    if not accumulates_in_fp32(x.dtype):
        out = lax.dot_general(x, kernel.astype(x.dtype), _dense_dims(x.ndim))
        return out if bias is None else out + bias.astype(x.dtype)
    out = _half_dense(x, kernel.astype(x.dtype))
    return (out if bias is None else out + bias.astype(jnp.float32)).astype(x.dtype)


class Dense(nn.Module):
    """`nn.Dense` (same parameters, names and initialisers) computed by `dense`."""

    features: int
    dtype: Any = jnp.float32
    param_dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features),
                            self.param_dtype)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), self.param_dtype)
        return dense(x.astype(self.dtype), kernel, bias)
