"""Device meshes and batch placement for jit-compiled steps (data parallel, optional FSDP).

We use `jax.jit` over a `Mesh` with `NamedSharding` rather than `pmap`: the same code runs on
one CPU, one accelerator host, or many hosts after `jax.distributed.initialize()`. The mesh has
a `data` axis (batch) and an `fsdp` axis (parameter sharding for L/14 and larger); the batch is
split over both.
"""

import re
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

# Batch placement lives in fungizsl.placement (the input pipeline uses it too); re-exported here.
from fungizsl.placement import BATCH_AXES, batch_sharding, replicated, shard_batch, to_global_batch  # noqa: F401


def make_mesh(data: int = -1, fsdp: int = 1, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A ("data", "fsdp") mesh over all devices; -1 on `data` takes the devices left over."""
    devices = list(jax.devices() if devices is None else devices)
    if fsdp < 1 or len(devices) % fsdp:
        raise ValueError(f"mesh.fsdp={fsdp} must divide the {len(devices)} devices")
    if data == -1:
        data = len(devices) // fsdp
    if data * fsdp != len(devices):
        raise ValueError(f"mesh data={data} x fsdp={fsdp} does not equal the {len(devices)} devices")
    grid = np.asarray(devices).reshape(data, fsdp)
    return Mesh(grid, BATCH_AXES, axis_types=(AxisType.Auto, AxisType.Auto))


def fsdp_sharding(params, mesh: Mesh, rules: Sequence[tuple[str, str]] = ((r".*", "fsdp"),),
                  min_size: int = 2 ** 18):
    """NamedShardings for a tree of params (or a whole train state): the first rule whose regex
    is found in a leaf's '/'-joined path (`re.search`, so `vision_model/.*kernel` also matches the
    optimizer moments `opt_state/.../vision_model/...`) splits it over that mesh axis along its
    largest divisible dimension; axis None, small leaves and leaves with no divisible dimension
    stay replicated."""
    axis_size = dict(zip(mesh.axis_names, mesh.devices.shape))

    def spec_for(path, leaf):
        name = "/".join(str(getattr(k, "key", k)) for k in path)
        shape = leaf.shape
        for pattern, axis in rules:
            if not re.search(pattern, name):
                continue
            if axis is None or int(np.prod(shape)) < min_size:
                break
            for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
                if shape[dim] % axis_size[axis] == 0:
                    spec = [None] * len(shape)
                    spec[dim] = axis
                    return NamedSharding(mesh, P(*spec))
            break
        return NamedSharding(mesh, P())

    return jax.tree_util.tree_map_with_path(spec_for, params)
