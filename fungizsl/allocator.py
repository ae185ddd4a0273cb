"""The process's memory allocator: the entry points run under tcmalloc, not glibc's malloc.

Why. XLA:CPU allocates each execution's temporary buffer in one piece (110 MiB for the main job's
cnn_tiny step at batch 32, 265 MiB for the tiny ViT's at batch 64), on a worker thread. glibc
serves a block that large from a fresh `mmap` (a thread's arena falls back to `mmap` for blocks
above 64 MiB whatever `M_MMAP_MAX` says) and unmaps it on free, so every step page-faults the
whole buffer again: 28,000 and 68,000 minor faults and 30-130 ms of kernel time per step.
tcmalloc keeps freed pages and hands them to the next step: no faults. Measured on the 2-core
Xeon (docs/benchmarks.md): cnn_tiny step 111 -> 89 ms, tiny ViT step 210 -> 159 ms.

How. Only an executable can choose its malloc, before it starts: `reexec_under_tcmalloc()`, called
first by `python -m fungizsl.main` and `python -m fungizsl.bench`, re-executes the process once
with tcmalloc in `LD_PRELOAD` (the same interpreter, options and arguments; what ran before the
call, imports only, runs again). Nothing happens when tcmalloc is already loaded (a TPU VM image
or a launcher that preloads it), off Linux, or with `FUNGIZSL_ALLOCATOR=system`. Without tcmalloc
installed it says so in one line and falls back to glibc with transparent huge pages for its large
blocks (`glibc.malloc.hugetlb=1`: 512 times fewer faults, each zeroing 2 MiB; cnn_tiny 111 -> 100
ms, tiny 210 -> 173 ms). The library: Debian/Ubuntu `libtcmalloc-minimal4`, which
`launch/setup_env.sh` installs where it runs as root.
"""

import ctypes.util
import os
import sys

from fungizsl import cpu_devices

ENV = "FUNGIZSL_ALLOCATOR"  # "system": keep the process's malloc
_REEXEC_MARK = "FUNGIZSL_ALLOCATOR_REEXEC"  # set in the re-executed process: never loop
_LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
             "/usr/local/lib")
_NAMES = ("libtcmalloc_minimal.so.4", "libtcmalloc.so.4")
_HUGETLB = "glibc.malloc.hugetlb=1"
_THP = "/sys/kernel/mm/transparent_hugepage/enabled"
# tcmalloc reports every allocation above 1 GiB on stderr; L/14 steps make many.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 62)}


def find_tcmalloc() -> str | None:
    """Path of an installed tcmalloc, or None."""
    for directory in _LIB_DIRS:
        for name in _NAMES:
            path = os.path.join(directory, name)
            if os.path.exists(path):
                return path
    for stem in ("tcmalloc_minimal", "tcmalloc"):
        name = ctypes.util.find_library(stem)
        if name:
            return name
    return None


def current() -> str:
    """The allocator this process runs: "tcmalloc", "jemalloc", "glibc+hugetlb" or "glibc"."""
    try:
        with open("/proc/self/maps") as f:
            maps = f.read()
    except OSError:
        return "unknown"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc+hugetlb" if _HUGETLB in os.environ.get("GLIBC_TUNABLES", "") else "glibc"


def _huge_pages_possible() -> bool:
    try:
        with open(_THP) as f:
            return "[never]" not in f.read()
    except OSError:
        return False


def reexec_env(environ: dict[str, str]) -> dict[str, str] | None:
    """The environment to re-execute with, or None when the process should go on as it is."""
    if environ.get(ENV, "") == "system" or not sys.platform.startswith("linux"):
        return None
    if environ.get(_REEXEC_MARK) or current() != "glibc":
        return None
    if cpu_devices.simulated_count(environ.get("XLA_FLAGS", "")) > 1:
        return None
    env = dict(environ, **{_REEXEC_MARK: "1"})
    library = find_tcmalloc()
    if library is not None:
        env.update(_QUIET)
        env["LD_PRELOAD"] = ":".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
        return env
    print("fungizsl: tcmalloc not found, so XLA:CPU steps page-fault their temporary buffer every time "
          "under glibc's malloc (1.2-1.3x slower steps); install libtcmalloc-minimal4, or set "
          f"{ENV}=system to keep glibc quietly", file=sys.stderr, flush=True)
    if not _huge_pages_possible():
        return None
    env["GLIBC_TUNABLES"] = ":".join(t for t in (environ.get("GLIBC_TUNABLES", ""), _HUGETLB) if t)
    return env


def reexec_under_tcmalloc() -> None:
    """Re-execute this process under tcmalloc when that is possible and not yet the case (see the
    module docstring). Call it first thing in a `__main__` block."""
    env = reexec_env(dict(os.environ))
    os.environ[_REEXEC_MARK] = "1"  # decided once: the processes this one starts inherit the choice
    if env is None:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)
