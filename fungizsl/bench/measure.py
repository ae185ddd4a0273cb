"""Measurement helpers: interleaved timing, the device's peak FLOP/s, model (matmul) FLOPs from
the jaxpr, compiled memory.

Everything here compares rates measured in the same process, interleaved round by round, so
that background load on a shared machine slows every contender alike.
"""

import math
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Datasheet dense (no sparsity) bf16 tensor-core peaks, FLOP/s, matched on jax's device_kind.
GPU_BF16_PEAK = (
    ("H200", 989.4e12), ("H100 PCIe", 756.0e12), ("H100 NVL", 835.0e12), ("H100", 989.4e12),
    ("GH200", 989.4e12), ("B200", 2250e12), ("A100", 312e12), ("L40S", 362.05e12), ("L4", 121e12),
    ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165.2e12), ("V100", 125e12),
    ("TPU v4", 275e12), ("TPU v5 lite", 197e12), ("TPU v5e", 197e12), ("TPU v5p", 459e12),
    ("TPU v5", 459e12), ("TPU v6 lite", 918e12), ("TPU v6e", 918e12),
)


def block(x):
    return jax.block_until_ready(x)


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                settle_s: float = 0.05) -> dict:
    """Times each contender once per round, alternating the order every round.

    `settle_s` of sleep before each timed call lets the previous contender's worker threads park:
    XLA's and PyTorch's CPU pools spin for a while after their work, and on a 2-core machine a
    spinning pool measurably slows whoever runs next (seen: PyTorch 2-3x slower right after an
    XLA matmul without it).

    Returns {name: {"median_s", "min_s", "max_s", "p25_s", "p75_s", "times_s"}}; every call must
    block until its result is ready (JAX: block_until_ready; torch CPU is synchronous).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times = {name: [] for name in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            time.sleep(settle_s)
            start = time.perf_counter()
            contenders[name]()
            times[name].append(time.perf_counter() - start)
    return {name: summary(t) for name, t in times.items()}


def summary(times: list[float]) -> dict:
    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "min_s": float(t.min()), "max_s": float(t.max()),
            "p25_s": float(np.percentile(t, 25)), "p75_s": float(np.percentile(t, 75)),
            "times_s": [float(x) for x in t]}


def paired_ratio(slow: dict, fast: dict) -> float:
    """Median over rounds of slow_time / fast_time (rounds are interleaved, so each pair saw the
    same background load)."""
    return float(np.median(np.asarray(slow["times_s"]) / np.asarray(fast["times_s"])))


# -- device peak ---------------------------------------------------------------------------------

def device_description() -> dict:
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind,
            "device_count": jax.device_count(), "local_device_count": jax.local_device_count()}


def datasheet_peak(device_kind: str) -> float | None:
    for name, peak in GPU_BF16_PEAK:
        if name.lower() in device_kind.lower():
            return peak
    return None


def matmul_contender(n: int = 4096, dtype=jnp.float32, calls: int = 3):
    """(callable, flops per call) of an n x n x n matmul, compiled. Each round makes `calls`
    calls and reports the fastest (in its "times"), so the recorded peak is the least disturbed
    sample of a shared machine."""
    a = jax.random.normal(jax.random.key(0), (n, n), dtype)
    b = jax.random.normal(jax.random.key(1), (n, n), dtype)
    fn = jax.jit(lambda x, y: x @ y).lower(a, b).compile()
    block(fn(a, b))

    def best_of():
        best = float("inf")
        for _ in range(calls):
            start = time.perf_counter()
            block(fn(a, b))
            best = min(best, time.perf_counter() - start)
        return best

    return best_of, 2.0 * n ** 3


def measured_matmul_peak(n: int = 4096, rounds: int = 3, dtype=jnp.float32) -> float:
    call, flops = matmul_contender(n, dtype)
    return flops / min(call() for _ in range(rounds))


# -- model FLOPs -----------------------------------------------------------------------------------

def _dot_flops(eqn) -> float:
    lhs, rhs = (v.aval.shape for v in eqn.invars[:2])
    (lc, rc), (lb, rb) = eqn.params["dimension_numbers"]
    contract = math.prod(lhs[d] for d in lc)
    batch = math.prod(lhs[d] for d in lb)
    lhs_free = math.prod(s for d, s in enumerate(lhs) if d not in lc and d not in lb)
    rhs_free = math.prod(s for d, s in enumerate(rhs) if d not in rc and d not in rb)
    return 2.0 * batch * lhs_free * rhs_free * contract


def _conv_flops(eqn) -> float:
    out = eqn.outvars[0].aval.shape
    rhs = eqn.invars[1].aval.shape  # kernel; its spec tells which dims are spatial/in/out
    spec = eqn.params["dimension_numbers"].rhs_spec  # (out feature, in feature, *spatial)
    kernel_in = rhs[spec[1]] * math.prod(rhs[d] for d in spec[2:])
    return 2.0 * math.prod(out) * kernel_in


def matmul_flops(jaxpr) -> float:
    """Sum of 2*M*N*K over every dot_general and convolution in a (closed) jaxpr, recursing into
    sub-jaxprs (pjit, remat, custom_jvp/vjp) and multiplying scan bodies by their length."""
    total = 0.0
    for eqn in jaxpr.eqns:
        name = eqn.primitive.name
        if name == "dot_general":
            total += _dot_flops(eqn)
        elif name == "conv_general_dilated":
            total += _conv_flops(eqn)
        times = eqn.params.get("length", 1) if name == "scan" else 1
        for param in eqn.params.values():
            for sub in (param if isinstance(param, (tuple, list)) else (param,)):
                inner = getattr(sub, "jaxpr", None)
                if inner is not None and hasattr(inner, "eqns"):
                    total += times * matmul_flops(inner)
                elif hasattr(sub, "eqns"):
                    total += times * matmul_flops(sub)
    return total


def model_flops(fn, *args) -> float:
    """Matmul FLOPs of fn(*args) (forward + backward when fn is a value_and_grad)."""
    return matmul_flops(jax.make_jaxpr(fn)(*args).jaxpr)


def cost_analysis_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    return float(cost["flops"]) if cost and "flops" in cost else None


def memory(compiled) -> dict:
    """Compile-time buffer sizes of one executable (bytes), per device."""
    m = compiled.memory_analysis()
    if m is None:
        return {}
    out = {k: int(getattr(m, f"{k}_in_bytes")) for k in
           ("argument_size", "output_size", "alias_size", "temp_size", "generated_code_size")
           if hasattr(m, f"{k}_in_bytes")}
    out["peak_estimate"] = out.get("argument_size", 0) + out.get("output_size", 0) \
        - out.get("alias_size", 0) + out.get("temp_size", 0)
    return out


def device_peak_memory() -> int | None:
    stats = jax.devices()[0].memory_stats() or {}
    return stats.get("peak_bytes_in_use")
