"""XLA:CPU compiler options for the project's jitted steps: `jit` is `jax.jit` with them on CPU.

On CPU, jaxlib 0.10 hands every convolution to a YNNPACK fusion, which runs it on one thread:
measured alone (batch 32, 3x3, fp32, 2 cores) the weight gradient of a 48x48x32->32 layer took
41 ms on 1.05 cores, the forward 8.9 ms on 1.0. With convolutions left out of YNNPACK
(`xla_cpu_experimental_ynn_fusion_type=-individual_convolution`) XLA runs them through its Eigen
kernels on every core: 15 ms and 6.0 ms, and the `cnn_tiny` train step went from 170 to 115 ms
(1.47x; docs/benchmarks.md). YNNPACK keeps the dots, reductions and element-wise fusions, where
it is faster than XLA's own emitters (turning those off too made the step slower: 171-176 ms).

The options are passed per compilation (`jax.jit(..., compiler_options=...)`), so they apply only
to the functions compiled through `jit` here, only on the CPU backend, and never override the
user: a flag already named in `XLA_FLAGS` wins. GPU and TPU compilations get no options.
JAX accepts compiler options on a top-level jit only: to trace a function from `jit` inside
another transformation (`jax.make_jaxpr`, an outer `jax.jit`), use `unwrapped(fn)`.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax

# XLA's default YNNPACK fusion types less INDIVIDUAL_CONVOLUTION, written out: per-compilation
# options take full enum names, not XLA_FLAGS' "+"/"-" edits of the default list. The compiled
# cnn_tiny and tiny train steps are the same HLO, byte for byte, as with
# XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-individual_convolution.
YNN_FUSION_TYPES = ("INDIVIDUAL_DOT", "DOT", "REDUCE")
CPU_OPTIONS: dict[str, str] = {
    "xla_cpu_experimental_ynn_fusion_type": ",".join(f"LIBRARY_FUSION_TYPE_{t}" for t in YNN_FUSION_TYPES)}


def compiler_options(backend: str | None = None, xla_flags: str | None = None) -> dict[str, str] | None:
    """The options for `backend` (default: JAX's default backend), leaving out every option that
    `xla_flags` (default: the environment's `XLA_FLAGS`) sets itself; None when nothing is left."""
    backend = jax.default_backend() if backend is None else backend
    if backend != "cpu":
        return None
    flags = os.environ.get("XLA_FLAGS", "") if xla_flags is None else xla_flags
    named = {flag.split("=", 1)[0].lstrip("-") for flag in flags.split()}
    options = {name: value for name, value in CPU_OPTIONS.items() if name not in named}
    return options or None


def jit(fun: Callable, **kwargs: Any) -> Callable:
    """`jax.jit(fun, **kwargs)` compiled with `compiler_options()`."""
    return jax.jit(fun, compiler_options=compiler_options(), **kwargs)


def unwrapped(fn: Callable) -> Callable:
    """The Python function under a `jit` (itself for anything else), for tracing inside another
    transformation."""
    return getattr(fn, "__wrapped__", fn)
