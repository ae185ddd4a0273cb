"""XLA flags for simulated CPU devices (`--xla_force_host_platform_device_count`).

Tests and the multi-device benchmarks run N CPU "devices" inside one process. Each device runs
its share of a step on a host thread, and a collective (psum, all-gather) waits in an XLA
rendezvous until every device has arrived. On a loaded 2-core machine eight devices share two
cores, so the last one can arrive long after the first; XLA then aborts the whole process
("Termination timeout ... Exiting to ensure a consistent program state", SIGABRT, no Python
traceback) once the wait passes its default limit. On simulated devices a late arrival is only
slowness, so the flags here raise that limit far above any step these programs run.

This module imports nothing heavy: `tests/conftest.py` uses it before JAX is imported, because
XLA reads its flags once, when the backend starts.
"""

from __future__ import annotations

DEVICE_COUNT_FLAG = "--xla_force_host_platform_device_count"
# Seconds a CPU collective may wait for the other simulated devices before XLA aborts (and before
# it warns that a thread may be stuck).
COLLECTIVE_WAIT_FLAGS = {
    "--xla_cpu_collective_call_terminate_timeout_seconds": 3600,
    "--xla_cpu_collective_call_warn_stuck_timeout_seconds": 600,
}


def with_host_device_count(xla_flags: str, count: int) -> str:
    """`xla_flags` with `count` simulated CPU devices and the long collective waits; every other
    flag is kept, and a collective wait the caller set already is left as it is."""
    kept = [flag for flag in xla_flags.split() if flag.split("=", 1)[0] != DEVICE_COUNT_FLAG]
    named = {flag.split("=", 1)[0] for flag in kept}
    waits = [f"{name}={seconds}" for name, seconds in COLLECTIVE_WAIT_FLAGS.items() if name not in named]
    return " ".join(kept + waits + [f"{DEVICE_COUNT_FLAG}={count}"])


def simulated_env(environ: dict, count: int) -> dict:
    """A copy of `environ` for a child process on `count` simulated CPU devices, with no other
    XLA flag inherited. Several simulated devices also drop an inherited tcmalloc preload:
    `fungizsl/allocator.py` says why they keep glibc."""
    env = dict(environ, XLA_FLAGS=with_host_device_count("", count), JAX_PLATFORMS="cpu")
    if count > 1 and "LD_PRELOAD" in env:
        kept = [lib for lib in env["LD_PRELOAD"].split(":") if lib and "libtcmalloc" not in lib]
        if kept:
            env["LD_PRELOAD"] = ":".join(kept)
        else:
            del env["LD_PRELOAD"]
    return env


def simulated_count(xla_flags: str) -> int:
    """How many CPU devices `xla_flags` simulates (1 when the flag is absent)."""
    for flag in xla_flags.split():
        name, _, value = flag.partition("=")
        if name == DEVICE_COUNT_FLAG and value.isdigit():
            return int(value)
    return 1
