"""Device meshes, parameter shardings and batch placement for jit-compiled steps: the one place
every mesh of the package is made.

We use ``jax.jit`` over a ``Mesh`` with ``NamedSharding`` rather than ``pmap``: the same code runs
on one CPU, one accelerator host, or many hosts after ``jax.distributed.initialize()``. Every mesh
has the axes ``("data", "fsdp")`` (:func:`make_mesh`): ``data`` for the batch, ``fsdp`` for
parameter sharding (L/14 and larger, :func:`fsdp_sharding`); a batch's leading axis is split over
both, so FSDP devices also share the batch. This module sits below ``fungizsl.data``,
``fungizsl.train`` and the paper wings so that each of them can build meshes and place batches.

On several hosts each process passes its own slice (``global batch / process_count`` examples) and
``jax.make_array_from_process_local_data`` assembles the global array without gathering it
anywhere. Weights loaded on the host (a pretrained folder, an earlier run) are the other case:
every process holds the whole tree, and :func:`from_host` cuts each process's shards out of it
(JAX refuses numpy inputs with a sharding that spans several processes).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over every batch axis of the mesh; other axes replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
    """Places a tree of host-local arrays on the mesh, split along their leading axis."""
    sharding = batch_sharding(mesh)

    def place(x):
        x = np.asarray(x)
        if x.shape[0] * jax.process_count() % mesh.size:
            raise ValueError(f"global batch {x.shape[0] * jax.process_count()} is not divisible by "
                             f"the {mesh.size} devices of the mesh")
        return jax.make_array_from_process_local_data(sharding, x)

    return jax.tree.map(place, batch)


def to_global_batch(batch: Mapping[str, np.ndarray], mesh: Mesh):
    """This process's batch (a dict of arrays) as global arrays on ``mesh``; every field must share
    the leading (batch) dimension."""
    sizes = {key: np.shape(value)[0] if np.ndim(value) else None for key, value in batch.items()}
    if len(set(sizes.values())) != 1 or None in sizes.values():
        raise ValueError(f"every batch field needs the same leading (batch) dimension, got {sizes}")
    return shard_batch(dict(batch), mesh)


def from_host(tree, shardings):
    """Global arrays of ``tree`` (host arrays, the full value on every process) placed with
    ``shardings`` (a tree of the same structure): each process puts only the shards its own
    devices hold, cut from its host copy, so this works with one process or many."""

    def place(leaf, sharding):
        value = np.asarray(leaf)
        return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])

    return jax.tree.map(place, tree, shardings)


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
