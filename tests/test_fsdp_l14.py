"""The L/14@336 config really shards: per-device parameter + optimizer bytes fall as 1/N.

Shapes only (nothing is allocated): the train state of `configs/fungalzsl.py:arch=l14_336` is
laid out by the core on meshes of 1, 2, 4 and 8 simulated devices, and its per-device bytes are
summed from the shardings' shard shapes. The 8-device train step is then compiled ahead of time
(`jax.jit(...).lower(...).compile()`, about a minute on 2 CPU cores) and XLA's own memory
analysis must agree: its argument bytes are the sharded state plus the tiny batch.
"""

import jax
import jax.numpy as jnp
import numpy as np

from configs import fungalzsl as fungalzsl_config
from fungizsl.models import two_towers
from fungizsl.fungalzsl import trainer as fungalzsl
from fungizsl.train import core
from fungizsl import placement


def _per_device_bytes(abstract, shardings) -> int:
    return sum(int(np.prod(s.shard_shape(a.shape))) * a.dtype.itemsize
               for a, s in zip(jax.tree.leaves(abstract), jax.tree.leaves(shardings)))


def test_l14_336_state_bytes_per_device_fall_as_one_over_n():
    config = fungalzsl_config.get_config("arch=l14_336")
    assert config.mesh.fsdp == -1 and core.make_mesh(config).shape["fsdp"] == jax.device_count() == 8
    m = config.model
    model = two_towers.ClipModel(two_towers.clip_config("l14_336", dtype=m.dtype, scan=m.scan, remat=m.remat))
    task = core.Task(name="fungalzsl", init_variables=fungalzsl.init_fn(model),
                     loss_fn=fungalzsl.make_loss_fn(model, config.loss.class_aware, config.loss.combine),
                     post_update=fungalzsl.clamp_logit_scale, train_iterator=None, evaluate=None)
    per_device = {}
    for n in (1, 2, 4, 8):
        mesh = placement.make_mesh(data=1, fsdp=n, devices=jax.devices()[:n])
        trainable = core.build(config, task, mesh)
        per_device[n] = _per_device_bytes(trainable.abstract_state, trainable.state_sharding)
    print({n: f"{b / 2**20:.0f} MiB" for n, b in per_device.items()})
    assert per_device[1] > 4.5 * 2**30  # ~428M fp32 params + two Adam moments
    for n in (2, 4, 8):
        assert per_device[1] / n <= per_device[n] <= 1.02 * per_device[1] / n, (n, per_device)

    batch = {"image": jax.ShapeDtypeStruct((8, 336, 336, 3), jnp.float32),
             "input_ids": jax.ShapeDtypeStruct((8, 77), jnp.int32), "label": jax.ShapeDtypeStruct((8,), jnp.int32)}
    compiled = trainable.train_step.lower(core.sharded_abstract(trainable), batch).compile()
    batch_bytes = (336 * 336 * 3 * 4 + 77 * 4 + 4)  # one example per device
    arguments = compiled.memory_analysis().argument_size_in_bytes
    assert abs(arguments - per_device[8] - batch_bytes) < 0.01 * per_device[8], (arguments, per_device[8])
