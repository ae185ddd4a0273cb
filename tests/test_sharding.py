"""CLIP forward on an 8-device host mesh with the batch sharded equals the single-device result."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fungizsl.models import two_towers
from fungizsl import placement


@pytest.fixture(scope="module")
def tiny_clip():
    model = two_towers.ClipModel(two_towers.clip_config("tiny"))
    rng = np.random.RandomState(0)
    images = rng.randn(16, 32, 32, 3).astype(np.float32)
    ids = rng.randint(0, 998, (16, 16)).astype(np.int32)
    ids[np.arange(16), rng.randint(3, 16, 16)] = 999  # one end-of-text per row
    params = model.init(jax.random.key(0), images[:1], ids[:1])["params"]
    return model, params, images, ids


def test_eight_devices_are_simulated():
    assert jax.device_count() == 8, "tests/conftest.py must set XLA_FLAGS before jax is imported"


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2)])
def test_sharded_clip_forward_matches_single_device(tiny_clip, data, fsdp):
    model, params, images, ids = tiny_clip
    forward = lambda p, x, t: model.apply({"params": p}, x, t)
    single = jax.jit(forward)(params, jnp.asarray(images), jnp.asarray(ids))

    mesh = placement.make_mesh(data=data, fsdp=fsdp)
    batch = placement.shard_batch({"images": images, "ids": ids}, mesh)
    assert batch["images"].sharding.shard_shape(batch["images"].shape) == (2, 32, 32, 3)
    param_shardings = placement.fsdp_sharding(params, mesh, min_size=1024)
    placed = jax.device_put(params, param_shardings)
    sharded = jax.jit(forward)(placed, batch["images"], batch["ids"])

    assert len(sharded["zimg"].sharding.device_set) == 8
    for key in ("zimg", "ztxt", "logits_per_image"):
        np.testing.assert_allclose(np.asarray(sharded[key]), np.asarray(single[key]), atol=1e-5)
    if fsdp > 1:  # some parameters really were split over the fsdp axis
        specs = [s.spec for s in jax.tree.leaves(param_shardings)]
        assert any("fsdp" in spec for spec in specs)


def test_mesh_and_batch_errors_are_clear():
    with pytest.raises(ValueError, match="must divide"):
        placement.make_mesh(fsdp=3)
    with pytest.raises(ValueError, match="does not equal"):
        placement.make_mesh(data=3, fsdp=2)
    with pytest.raises(ValueError, match="not divisible"):
        placement.shard_batch({"x": np.zeros((6, 2))}, placement.make_mesh())
