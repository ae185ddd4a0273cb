"""Resampling of ViT position embeddings to another patch grid, matching PyTorch numerically.

Hugging Face's CLIP and DINOv2 resize the patch-position table with
`torch.nn.functional.interpolate(mode="bicubic", align_corners=False)`; the DINOv2-with-registers
model additionally passes `antialias=True`, which switches PyTorch to a different cubic kernel
(Keys a=-0.5, window truncated at the borders and renormalised, widened when shrinking) instead
of the plain one (a=-0.75, border pixels repeated). `jax.image.resize` implements neither, so we
build the two 1-D interpolation matrices in numpy (shapes are static) and apply them with einsum.
"""

import functools

import jax.numpy as jnp
import numpy as np


def _cubic(x: np.ndarray, a: float) -> np.ndarray:
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


@functools.lru_cache(maxsize=64)
def bicubic_matrix(in_size: int, out_size: int, antialias: bool = False) -> np.ndarray:
    """[out_size, in_size] weights reproducing PyTorch's 1-D bicubic resize (align_corners=False)."""
    scale = in_size / out_size
    weights = np.zeros((out_size, in_size), np.float64)
    if not antialias:
        for i in range(out_size):
            src = scale * (i + 0.5) - 0.5
            base = int(np.floor(src))
            t = src - base
            for offset, w in zip(range(-1, 3), _cubic(np.arange(-1, 3) - t, -0.75)):
                weights[i, min(max(base + offset, 0), in_size - 1)] += w
        return weights
    support = 2.0 * max(scale, 1.0)
    inv_scale = 1.0 / max(scale, 1.0)
    for i in range(out_size):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) * inv_scale, -0.5)
        weights[i, lo:hi] = taps / taps.sum()
    return weights


def resample_grid(table: jnp.ndarray, new_grid: tuple[int, int], antialias: bool = False) -> jnp.ndarray:
    """Resize a [H, W, D] table of patch-position embeddings to [new_h, new_w, D]."""
    old_h, old_w, _ = table.shape
    if (old_h, old_w) == tuple(new_grid):
        return table
    rows = jnp.asarray(bicubic_matrix(old_h, new_grid[0], antialias), jnp.float32)
    cols = jnp.asarray(bicubic_matrix(old_w, new_grid[1], antialias), jnp.float32)
    out = jnp.einsum("ih,hwd->iwd", rows, table.astype(jnp.float32))
    return jnp.einsum("jw,iwd->ijd", cols, out).astype(table.dtype)
