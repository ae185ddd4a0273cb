"""BatchNorm of the convolutional towers with a hand-written gradient, the variables of Flax's.

`BatchNorm` keeps `nn.BatchNorm`'s variables (`params/scale`, `params/bias`,
`batch_stats/mean`, `batch_stats/var`), its statistics (biased variance as E[x^2] - E[x]^2,
clipped at 0) and its running-average update, so checkpoints and the PyTorch loaders are
unchanged. In training it normalises through `normalize`, whose backward pass is the closed form
dx = scale * rstd * (dy - mean(dy) - xhat * mean(dy * xhat)): two per-channel sums in one pass
and one element-wise pass, where the automatic gradient of Flax's version differentiates
through both statistics separately. Measured on the cnn_tiny train step in docs/benchmarks.md.
With `axis_name` (per-device code under shard_map or pmap) it is Flax's `nn.BatchNorm`.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def _statistics(x: jax.Array, axes: tuple[int, ...]) -> tuple[jax.Array, jax.Array]:
    mean = jnp.mean(x, axes)
    var = jnp.maximum(0.0, jnp.mean(jnp.square(x), axes) - jnp.square(mean))
    return mean, var


def _normalize_fwd(x, scale, bias, epsilon):
    mean, var = _statistics(x, tuple(range(x.ndim - 1)))
    rstd = jax.lax.rsqrt(var + epsilon)
    y = (x - mean) * (scale * rstd) + bias
    return (y, mean, var), (x, scale, mean, rstd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def normalize(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float):
    """(y, batch mean, batch variance) of x [..., C] over every axis but the last."""
    return _normalize_fwd(x, scale, bias, epsilon)[0]


def _normalize_bwd(epsilon, residuals, cotangents):
    del epsilon  # already in rstd
    x, scale, mean, rstd = residuals
    dy = cotangents[0]  # the statistics only feed the running averages: no gradient through them
    axes = tuple(range(x.ndim - 1))
    xhat = (x - mean) * rstd
    dbias = jnp.sum(dy, axes)
    dscale = jnp.sum(dy * xhat, axes)
    n = x.size // x.shape[-1]
    dx = (scale * rstd) * (dy - dbias / n - xhat * (dscale / n))
    return dx, dscale, dbias


normalize.defvjp(_normalize_fwd, _normalize_bwd)


class BatchNorm(nn.Module):
    use_running_average: bool
    momentum: float = 0.9
    epsilon: float = 1e-5
    scale_init: Callable[..., Any] = nn.initializers.ones

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((features,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((features,), jnp.float32))
        scale = self.param("scale", self.scale_init, (features,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros, (features,), jnp.float32)
        if self.use_running_average:
            return (x - ra_mean.value) * (scale * jax.lax.rsqrt(ra_var.value + self.epsilon)) + bias
        y, mean, var = normalize(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
