"""Which devices a process uses: multi-host start-up arguments and a warning for CPU-only runs.

`distributed_initialize_kwargs` gives `jax.distributed.initialize` what JAX's own cluster
detection would get wrong or cannot know. JAX reads the coordinator, the process count and the
process id from SLURM's variables itself, and then restricts each process to the GPU whose
ordinal equals `SLURM_LOCALID`. That is right only when every task of a node sees every GPU and
there is one task per GPU. It is wrong for one process per node owning all its GPUs (each process
would keep only GPU 0) and for tasks bound to their own GPU with `--gpus-per-task=1` (the task's
one visible GPU is ordinal 0, so local ids 1 and up fail with "invalid device ordinal").
Here the GPU ordinals come from what SLURM lets the task see.

`warn_if_cpu_only` says so, loudly, when a configuration sized for accelerators finds only CPU
devices (a `pip install -e .` without the `tpu` or `cuda12` extra gives CPU JAX).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Mapping

import jax

# FungalZSL's full-size CLIP variants: hours per epoch on a CPU.
ACCELERATOR_ARCHS = ("b32", "b16", "l14", "l14_336")


def _tasks_per_node(environ: Mapping[str, str]) -> int | None:
    """Tasks SLURM runs on this node, from e.g. SLURM_STEP_TASKS_PER_NODE="8(x2),4"."""
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if not spec:
        return None
    counts = []
    for part in spec.split(","):
        match = re.fullmatch(r"(\d+)(?:\(x(\d+)\))?", part.strip())
        if not match:
            raise ValueError(f"cannot read SLURM tasks per node {spec!r}")
        counts += [int(match.group(1))] * int(match.group(2) or 1)
    node = int(environ.get("SLURM_NODEID", "0"))
    return counts[node] if node < len(counts) else counts[-1]


def slurm_local_device_ids(environ: Mapping[str, str] | None = None) -> list[int] | None:
    """GPU ordinals this SLURM task should use, or None to leave JAX's default.

    None outside SLURM, or when SLURM has not said which GPUs the task sees (CUDA_VISIBLE_DEVICES).
    """
    environ = os.environ if environ is None else environ
    if "SLURM_JOB_ID" not in environ or "SLURM_LOCALID" not in environ:
        return None
    visible = [d for d in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if d.strip()]
    if not visible:
        return None
    tasks_here = _tasks_per_node(environ) or 1
    on_node = int(environ.get("SLURM_GPUS_ON_NODE", len(visible)))
    if tasks_here == 1 or len(visible) < on_node:
        # One process per node, or GPUs bound per task (--gpus-per-task, --gpu-bind): every GPU
        # this task sees is its own, numbered from 0 after CUDA_VISIBLE_DEVICES.
        return list(range(len(visible)))
    # Several tasks that all see every GPU of the node: each takes its own share by local rank.
    if len(visible) % tasks_here:
        raise ValueError(f"{tasks_here} SLURM tasks on this node share {len(visible)} visible GPUs "
                         "unevenly; use --ntasks-per-node=1 or one task per GPU")
    share = len(visible) // tasks_here
    local = int(environ["SLURM_LOCALID"])
    return list(range(local * share, (local + 1) * share))


def distributed_initialize_kwargs(environ: Mapping[str, str] | None = None) -> dict:
    """Arguments for `jax.distributed.initialize`: the explicit JAX_* settings, and the GPU ordinals
    under SLURM; JAX's cluster detection (TPU VM, SLURM, ...) fills in whatever is left out."""
    environ = os.environ if environ is None else environ
    kwargs: dict = {}
    if "JAX_COORDINATOR_ADDRESS" in environ:
        kwargs["coordinator_address"] = environ["JAX_COORDINATOR_ADDRESS"]
    for key, name in (("num_processes", "JAX_NUM_PROCESSES"), ("process_id", "JAX_PROCESS_ID")):
        if name in environ:
            kwargs[key] = int(environ[name])
    if "JAX_LOCAL_DEVICE_IDS" not in environ:  # JAX reads that one itself
        ids = slurm_local_device_ids(environ)
        if ids is not None:
            kwargs["local_device_ids"] = ids
    return kwargs


def accelerator_reasons(config) -> list[str]:
    """Why `config` is meant for accelerators (empty when a CPU is a fair place to run it)."""
    model = config.get("model", None) if hasattr(config, "get") else None
    if model is None:
        return []
    reasons = []
    arch = model.get("arch", None)
    if arch in ACCELERATOR_ARCHS:
        reasons.append(f"model.arch={arch}")
    if model.get("dtype", None) == "bfloat16":
        reasons.append("model.dtype=bfloat16 (slower than float32 on CPUs)")
    return reasons


def warn_if_cpu_only(config, devices=None) -> str | None:
    """Logs a warning and returns it when `config` is sized for accelerators but JAX sees only
    CPU devices; returns None otherwise."""
    reasons = accelerator_reasons(config)
    if not reasons:
        return None
    if devices is None:
        devices = jax.devices()
    if any(device.platform != "cpu" for device in devices):
        return None
    message = (f"this config is meant for accelerators ({', '.join(reasons)}) but JAX sees only "
               f"{len(devices)} CPU device(s): it will be very slow. Install JAX for your accelerator "
               "(pip install -e '.[tpu]', '.[cuda12]' or '.[cuda13]'; the launchers do), or use "
               "arch=tiny,runlocal for a CPU run.")
    logging.warning("%s", message)
    return message
