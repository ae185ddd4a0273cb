"""The entry points' allocator (fungizsl/allocator.py): a re-executed process really runs under
tcmalloc, XLA's temporary buffer then stops page-faulting on every call (and does fault under
glibc, which is why), and the environment choices: opt-out, no loops, the glibc fallback."""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from fungizsl import allocator, cpu_devices

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A step whose XLA temporary buffer holds two 24M-float intermediates (at least 192 MiB), and the
# minor page faults of each call after two warm-up calls.
_PROBE = textwrap.dedent("""
    import json, resource, sys
    from fungizsl import allocator
    allocator.reexec_under_tcmalloc()
    import jax, jax.numpy as jnp
    def f(x):  # cumulative sums are materialised, element-wise work would be fused away
        y = jnp.cumsum(x)
        return (y * jnp.cumsum(y[::-1]))[::4096]
    x = jnp.ones((24 * 2**20,), jnp.float32)
    compiled = jax.jit(f).lower(x).compile()
    faults = []
    for _ in range(5):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        compiled(x).block_until_ready()
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    print(json.dumps({"allocator": allocator.current(), "faults": sorted(faults[2:])[1],
                      "temp_pages": compiled.memory_analysis().temp_size_in_bytes // 4096}))
""")


def _probe(**env) -> dict:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("LD_PRELOAD", "GLIBC_TUNABLES", allocator.ENV, allocator._REEXEC_MARK)}
    environ.update(env, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", XLA_FLAGS="")  # one device, as the main job
    out = subprocess.run([sys.executable, "-c", _PROBE], env=environ, capture_output=True, text=True,
                         timeout=300, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _transparent_huge_pages() -> str:
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read()
    except OSError:
        return ""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc are Linux's")
def test_entry_point_reexecutes_under_tcmalloc_and_xla_temp_buffer_stops_faulting():
    if allocator.find_tcmalloc() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("tcmalloc is missing: launch/setup_env.sh installs libtcmalloc-minimal4 as root")
        pytest.skip("tcmalloc is not installed (apt-get install libtcmalloc-minimal4)")
    tcmalloc = _probe()
    glibc = _probe(**{allocator.ENV: "system"})
    assert tcmalloc["allocator"] == "tcmalloc" and glibc["allocator"] == "glibc"
    pages = tcmalloc["temp_pages"]
    assert pages >= 2 * 24 * 2**20 * 4 // 4096  # both intermediates live in the temporary buffer
    # Reused pages: no fault per call (a few dozen for the output and bookkeeping at most).
    assert tcmalloc["faults"] < 0.01 * pages, tcmalloc
    if "[always]" not in _transparent_huge_pages():  # with 2 MiB pages glibc faults 512x less often
        assert glibc["faults"] > 0.9 * pages, glibc  # the cost the re-exec removes: every page, every call


def test_reexec_environment(monkeypatch):
    monkeypatch.setattr(allocator, "current", lambda: "glibc")
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/lib/libtcmalloc_minimal.so.4")
    env = allocator.reexec_env({"LD_PRELOAD": "/opt/other.so", "PATH": "/bin"})
    assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4:/opt/other.so"
    assert env[allocator._REEXEC_MARK] == "1" and env["PATH"] == "/bin"
    assert env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"] == str(1 << 62)
    assert allocator.reexec_env({allocator.ENV: "system"}) is None
    assert allocator.reexec_env({allocator._REEXEC_MARK: "1"}) is None  # never a second time

    # Simulated CPU devices keep glibc (the module docstring says why); one simulated device does not.
    assert allocator.reexec_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=8"}) is None
    assert allocator.reexec_env({"XLA_FLAGS": "--xla_force_host_platform_device_count=1"}) is not None

    monkeypatch.setattr(allocator, "current", lambda: "tcmalloc")  # preloaded by someone else
    assert allocator.reexec_env({}) is None


def test_without_tcmalloc_one_line_and_glibc_huge_pages(monkeypatch, capsys):
    monkeypatch.setattr(allocator, "current", lambda: "glibc")
    monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
    monkeypatch.setattr(allocator, "_huge_pages_possible", lambda: True)
    env = allocator.reexec_env({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
    assert "LD_PRELOAD" not in env
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "libtcmalloc-minimal4" in err and allocator.ENV in err

    monkeypatch.setattr(allocator, "_huge_pages_possible", lambda: False)
    assert allocator.reexec_env({}) is None  # nothing to gain from a re-exec


def test_children_on_simulated_devices_drop_an_inherited_tcmalloc():
    parent = {"LD_PRELOAD": "/lib/libtcmalloc_minimal.so.4:/opt/other.so", "PATH": "/bin"}
    assert cpu_devices.simulated_env(parent, 8)["LD_PRELOAD"] == "/opt/other.so"
    assert "LD_PRELOAD" not in cpu_devices.simulated_env({"LD_PRELOAD": "/lib/libtcmalloc.so.4"}, 2)
    assert cpu_devices.simulated_env(parent, 1)["LD_PRELOAD"] == parent["LD_PRELOAD"]  # one device keeps it
