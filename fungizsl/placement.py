"""Placing host-local batches on a device mesh, for both the input pipeline and the trainers.

Every mesh in this package has the axes ``("data", "fsdp")`` (:func:`fungizsl.train.sharding.make_mesh`);
a batch's leading axis is split over both, so FSDP devices also share the batch. This module sits
above ``fungizsl.data`` and ``fungizsl.train`` so that either can place batches without ``data``
importing ``train``.

On several hosts each process passes its own slice (``global batch / process_count`` examples) and
``jax.make_array_from_process_local_data`` assembles the global array without gathering it
anywhere.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

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
