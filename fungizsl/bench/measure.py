"""Measurement helpers: interleaved timing with a contention record per round, the device's
peak FLOP/s, model (matmul) FLOPs from the jaxpr, compiled memory.

Contenders are timed in the same process, interleaved round by round, and every round records
what other processes took from our cores (/proc/stat busy time minus our own CPU time) beside
the load average; rounds where others used more than `CONTENDED_CORES` are marked contended and
left out of the ratios (`clean_ratio`). Interleaving alone does not make a shared machine fair:
one framework's threads can lose more to the same contention than the other's.
"""

import dataclasses
import math
import os
import time
from collections.abc import Callable

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

CONTENDED_CORES = 0.25  # other processes' CPU per wall second above which a round is contended
CALL_SLACK_TICKS = 2  # per core: /proc/stat's tick granularity, allowed on top for one short call
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def block(x):
    return jax.block_until_ready(x)


def interleaved(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                settle_s: float = 0.05) -> dict:
    """{name: summary of its times over every round} (see `timed_rounds`, which also says which
    rounds were contended)."""
    timing = timed_rounds(contenders, rounds, warmup, settle_s)
    return {name: {k: v for k, v in t.items() if k != "clean"} for name, t in timing["contenders"].items()}


def timed_rounds(contenders: dict[str, Callable[[], object]], rounds: int, warmup: int = 1,
                 settle_s: float = 0.05, contended_cores: float = CONTENDED_CORES) -> dict:
    """Times each contender once per round, alternating the order every round, and watches the
    machine around every round (`MachineSample`): a round in which other processes used more than
    `contended_cores` of this process's cores (per wall second) is marked contended.

    Each call is also watched on its own (`call_record`): a process that takes a core only
    while one contender runs barely moves the round's average but would skew that round's ratio.

    `settle_s` of sleep before each timed call lets the previous contender's worker threads park:
    XLA's and PyTorch's CPU pools spin for a while after their work, and on a 2-core machine a
    spinning pool measurably slows whoever runs next (seen: PyTorch 2-3x slower right after an
    XLA matmul without it).

    Returns {"contenders": {name: summary over all rounds + "cpu_s" per call + "clean": the
    summary over clean rounds or None}, "rounds": [per-round record], "clean_rounds", "cores",
    "contended_cores", "method"}. Every call must block until its result is ready (JAX:
    block_until_ready; torch CPU is synchronous).
    """
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name]()
    times = {name: [] for name in names}
    cpu = {name: [] for name in names}
    records = []
    for r in range(rounds):
        before = MachineSample.now()
        calls = {}
        for name in (names if r % 2 == 0 else names[::-1]):
            time.sleep(settle_s)
            first = MachineSample.now()
            start = time.perf_counter()
            contenders[name]()
            wall = time.perf_counter() - start
            calls[name] = call_record(first, MachineSample.now(), wall, contended_cores)
            times[name].append(wall)
            cpu[name].append(calls[name]["cpu_s"])
        records.append(dict(round_record(before, MachineSample.now(), contended_cores, calls), index=r))
    clean = [i for i, rec in enumerate(records) if not rec["contended"]]
    out = {}
    for name in names:
        out[name] = dict(summary(times[name]), cpu_s=cpu[name], cpu_s_per_call_median=float(np.median(cpu[name])),
                         clean=dict(summary([times[name][i] for i in clean]),
                                    cpu_s_per_call_median=float(np.median([cpu[name][i] for i in clean])))
                         if clean else None)
    return {"contenders": out, "rounds": records, "clean_rounds": len(clean),
            "cores": records[0]["cores"] if records else len(available_cores()),
            "contended_cores": contended_cores, "method": records[0]["method"] if records else None}


# -- contention ------------------------------------------------------------------------------------


def available_cores() -> list[int]:
    return sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count()))


def busy_seconds(cores: list[int], stat_text: str) -> float:
    """CPU seconds the given cores spent busy since boot, from /proc/stat's per-cpu lines: user,
    nice, system, irq, softirq and steal (time a hypervisor gave to another guest counts as
    taken from us); idle and iowait do not count."""
    wanted = {f"cpu{c}" for c in cores}
    ticks = 0
    for line in stat_text.splitlines():
        fields = line.split()
        if fields and fields[0] in wanted:
            user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
            ticks += user + nice + system + irq + softirq + steal
    return ticks / _TICKS


@dataclasses.dataclass
class MachineSample:
    """What the machine looked like at one moment: wall clock, this process's CPU time (all its
    threads), busy seconds of the cores it may run on (None where /proc/stat is missing) and
    the load average."""

    wall: float
    own_cpu: float
    busy: float | None
    loadavg: tuple[float, float, float]
    cores: list[int]

    @classmethod
    def now(cls) -> "MachineSample":
        cores = available_cores()
        try:
            with open("/proc/stat") as f:
                busy = busy_seconds(cores, f.read())
        except OSError:
            busy = None
        return cls(time.perf_counter(), time.process_time(), busy, os.getloadavg(), cores)


def _others(before: MachineSample, after: MachineSample) -> tuple[float, float, float, str]:
    """(wall, own CPU, others' CPU seconds, method) between two samples. Others' CPU: busy seconds
    of our cores minus our own CPU seconds, i.e. what other processes (and the kernel on their
    behalf) took from the cores we run on. Without /proc/stat (not Linux) the 1-minute load
    average stands in: (load - our own cores in use) x wall; it lags by a minute."""
    wall = after.wall - before.wall
    own = after.own_cpu - before.own_cpu
    if before.busy is not None and after.busy is not None:
        return wall, own, max(0.0, after.busy - before.busy - own), "/proc/stat busy time of our cores minus our CPU time"
    load = max(before.loadavg[0], after.loadavg[0])
    return wall, own, max(0.0, load - own / wall) * wall, "1-minute load average minus our cores in use"


def call_record(before: MachineSample, after: MachineSample, wall_s: float,
                contended_cores: float = CONTENDED_CORES) -> dict:
    """One timed call (`wall_s` timed inside the two samples): our CPU seconds and others' over
    it. Contended when others took more than `contended_cores` per wall second plus
    `CALL_SLACK_TICKS` ticks per core: /proc/stat advances in whole ticks, which a short call
    must not mistake for another process."""
    window, own, others, _ = _others(before, after)
    slack = CALL_SLACK_TICKS * len(after.cores) / _TICKS
    return {"wall_s": wall_s, "window_s": window, "cpu_s": own, "others_cpu_s": others,
            "contended": others > contended_cores * window + slack}


def round_record(before: MachineSample, after: MachineSample, contended_cores: float = CONTENDED_CORES,
                 calls: dict | None = None) -> dict:
    """One round's machine record: others_cores = others' CPU seconds per wall second over the
    whole round (`_others`). The round is contended when that exceeds `contended_cores` or when
    any of its `calls` (`call_record`) was contended: others can come and go within a round."""
    wall, own, others, method = _others(before, after)
    others_cores = others / wall if wall > 0 else 0.0
    contended_calls = [name for name, call in (calls or {}).items() if call["contended"]]
    return {"wall_s": wall, "cpu_s": own, "own_cores": own / wall if wall > 0 else 0.0,
            "others_cpu_s": others, "others_cores": others_cores,
            "loadavg_before": list(before.loadavg), "loadavg_after": list(after.loadavg),
            "cores": len(after.cores), "contended_calls": contended_calls,
            "contended": others_cores > contended_cores or bool(contended_calls), "method": method,
            "calls": calls or {}}


def clean_ratio(timing: dict, slow: str, fast: str) -> dict:
    """slow's time over fast's on the clean rounds of one `timed_rounds` record: the median of the
    per-round ratios and the fastest clean round of each side against the other's. With no clean
    round both are None and `note` says why."""
    rounds = timing["rounds"]
    clean = [r for r in rounds if not r["contended"]]
    if not clean:
        others = float(np.median([r["others_cores"] for r in rounds])) if rounds else 0.0
        return {"median": None, "fastest": None, "clean_rounds": 0, "rounds": len(rounds),
                "note": f"no clean round: {len(rounds)} of {len(rounds)} contended "
                        f"(others used {others:.2f} of {timing['cores']} cores, median)"}
    ratios = [r["calls"][slow]["wall_s"] / r["calls"][fast]["wall_s"] for r in clean]
    fastest = min(r["calls"][slow]["wall_s"] for r in clean) / min(r["calls"][fast]["wall_s"] for r in clean)
    return {"median": float(np.median(ratios)), "fastest": float(fastest), "clean_rounds": len(clean),
            "rounds": len(rounds), "note": f"{len(clean)} of {len(rounds)} rounds clean"}


def summary(times: list[float]) -> dict:
    t = np.asarray(times)
    return {"median_s": float(np.median(t)), "min_s": float(t.min()), "max_s": float(t.max()),
            "p25_s": float(np.percentile(t, 25)), "p75_s": float(np.percentile(t, 75)),
            "times_s": [float(x) for x in t]}


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
