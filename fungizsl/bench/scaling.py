"""Scaling measurements: step time and memory against batch size and resolution; the FSDP
configuration's per-device memory on 1..8 simulated devices; the global-batch contrastive loss's
communication volume against batch size.

The multi-device parts run in a child process per device count (`python -m
fungizsl.bench.scaling CHILD-ARGS`), because XLA reads `--xla_force_host_platform_device_count`
once per process. They only compile (no step runs), so ViT-L/14@336 fits a small CPU machine.
"""

import json
import math
import os
import re
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from fungizsl import cpu_devices, losses, placement
from fungizsl.bench import clip_step, measure
from fungizsl.train import core

_COLLECTIVE = re.compile(r"= (\([^=]*?\)|[a-z0-9]+\[[^\]]*\][^ ]*) (all-gather|all-reduce|reduce-scatter|"
                         r"collective-permute|all-to-all)(-start)?\(")
_ARRAY = re.compile(r"([a-z]+\d*)\[([\d,]*)\]")
_BYTES = {"f32": 4, "f16": 2, "bf16": 2, "s32": 4, "u32": 4, "s8": 1, "u8": 1, "pred": 1, "f64": 8, "s64": 8}


def sweep(config, batches, resolutions, dtype: str, rounds: int = 3) -> list[dict]:
    """Train-step time and compiled memory per (batch, resolution); resolutions the tower cannot
    take (the patch size does not divide them) are skipped with the reason."""
    rows = []
    for size in resolutions:
        for batch in batches:
            try:
                bench = clip_step.build(config, batch, dtype, image_size=size)
            except ValueError as error:  # e.g. a resolution the patch size (or a ResNet's 32) does not divide
                rows.append({"batch": batch, "resolution": size, "skipped": str(error)})
                break
            step, compiled, compile_s, _ = clip_step.compiled_step(bench, clip_step.synthetic_batch(bench))
            timing = measure.interleaved({"step": step}, rounds)["step"]
            rows.append({"batch": batch, "resolution": size, "step_ms": 1e3 * timing["median_s"],
                         "step_ms_min": 1e3 * timing["min_s"],
                         "images_per_sec": batch / timing["median_s"], "compile_s": compile_s,
                         "memory": measure.memory(compiled)})
            del step, compiled  # free the state before the next size
    return rows


def _collective_bytes(hlo_text: str) -> dict:
    """Result bytes of each collective kind in an HLO module's text."""
    out: dict[str, int] = {}
    for match in _COLLECTIVE.finditer(hlo_text):
        kind = match.group(2)
        size = 0
        for dtype, dims in _ARRAY.findall(match.group(1)):
            size += _BYTES.get(dtype, 4) * math.prod(int(d) for d in dims.split(",") if d)
        out[kind] = out.get(kind, 0) + size
    return out


def _state_bytes_per_device(abstract_state, shardings) -> dict:
    params = opt = 0
    for path, leaf, sharding in zip(
            jax.tree_util.tree_flatten_with_path(abstract_state)[0],
            jax.tree.leaves(abstract_state), jax.tree.leaves(shardings)):
        shard = sharding.shard_shape(leaf.shape)
        size = int(np.prod(shard)) * jnp.dtype(leaf.dtype).itemsize
        top = str(getattr(path[0][0], "key", ""))
        if top == "params":
            params += size
        elif top == "opt_state":
            opt += size
    return {"params_bytes": params, "opt_state_bytes": opt}


def fsdp_child(arch: str, batch: int, resolution: int | None) -> dict:
    """In a process with N devices: the FSDP config's train step, compiled, on an fsdp=N mesh."""
    from configs import fungalzsl as configs

    n = jax.device_count()
    config = configs.get_config(f"arch={arch}")
    config.sharding_rules = ((".*", "fsdp"),)
    mesh = placement.make_mesh(data=1, fsdp=n)
    bench = clip_step.build(config, batch, config.model.dtype, image_size=resolution, mesh=mesh,
                            params={})  # compile only: no parameter values needed
    abstract_state = bench.trainable.abstract_state
    state = core.sharded_abstract(bench.trainable)
    batch_abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=placement.batch_sharding(mesh)),
        clip_step.synthetic_batch(bench))
    start = time.perf_counter()
    compiled = clip_step.train_step_fn(bench).lower(state, batch_abstract).compile()
    return {"devices": n, "arch": arch, "batch": batch, "dtype": config.model.dtype,
            "compile_s": time.perf_counter() - start, "memory": measure.memory(compiled),
            **_state_bytes_per_device(abstract_state, bench.state_sharding),
            "collectives_bytes": _collective_bytes(compiled.as_text())}


def loss_comm_child(batches, dim: int = 512) -> list[dict]:
    """Collective bytes of the contrastive loss + its gradient (w.r.t. both embeddings), batch
    split over every device, for the jit (XLA-inserted) and shard_map (explicit) versions."""

    mesh = placement.make_mesh()
    rows = []
    for batch in batches:
        spec = jax.ShapeDtypeStruct((batch, dim), jnp.float32, sharding=placement.batch_sharding(mesh))
        for name, loss in (("jit", lambda a, b: losses.clip_loss(a, b, 10.0)[0]),
                           ("shard_map", lambda a, b, f=losses.clip_loss_sharded(mesh): f(a, b, 10.0)[0])):
            compiled = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(spec, spec).compile()
            rows.append({"batch": batch, "devices": mesh.size, "dim": dim, "version": name,
                         "collectives_bytes": _collective_bytes(compiled.as_text())})
    return rows


def run_child(kind: str, devices: int, args: dict, timeout: int = 900) -> dict | list:
    env = cpu_devices.simulated_env(os.environ, devices)
    command = [sys.executable, "-m", "fungizsl.bench.scaling", kind, json.dumps(args)]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        return {"devices": devices, "error": done.stderr.strip().splitlines()[-1:]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def fsdp_memory_table(arch: str, device_counts=(1, 2, 4, 8), batch: int = 8, resolution=None) -> list[dict]:
    return [run_child("fsdp", n, {"arch": arch, "batch": batch, "resolution": resolution})
            for n in device_counts]


if __name__ == "__main__":
    kind, payload = sys.argv[1], json.loads(sys.argv[2])
    if kind == "fsdp":
        result = fsdp_child(payload["arch"], payload["batch"], payload.get("resolution"))
    elif kind == "loss_comm":
        result = loss_comm_child(payload["batches"], payload.get("dim", 512))
    else:
        raise SystemExit(f"unknown child kind {kind!r}")
    print(json.dumps(result))
