"""The modified-ResNet tower's BatchNorm: global-batch statistics on a sharded batch, frozen
statistics for fine-tuning, other resolutions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from fungizsl.models import resnet
from fungizsl import placement

TINY = resnet.ResNetConfig(layers=(1, 1, 1, 1), width=8, heads=4, output_dim=16, image_size=64)


def _init(cfg=TINY):
    model = resnet.ModifiedResNet(cfg)
    return model, model.init(jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))


def test_batch_statistics_are_global_under_jit_with_a_sharded_batch():
    """With the batch split over 8 devices by NamedSharding, one jit step normalises with the
    statistics of the whole batch (what synchronised BatchNorm does): the pooled features and the
    updated running statistics equal the single-device ones."""
    assert jax.device_count() == 8
    model, variables = _init()
    images = np.random.RandomState(0).randn(16, 64, 64, 3).astype(np.float32) * 2 + 0.5

    def step(variables, images):
        out, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return out["pooled"], updated["batch_stats"]

    want_pooled, want_stats = jax.jit(step)(variables, images)
    mesh = placement.make_mesh(data=8, fsdp=1)
    sharded = jax.device_put(images, NamedSharding(mesh, P(("data", "fsdp"))))
    assert len(sharded.addressable_shards) == 8 and sharded.addressable_shards[0].data.shape[0] == 2
    got_pooled, got_stats = jax.jit(step)(variables, sharded)
    np.testing.assert_allclose(np.asarray(got_pooled), np.asarray(want_pooled), atol=2e-5)
    for a, b in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    # per-device statistics (2 images each) would differ visibly from the global ones
    per_device = np.concatenate([np.asarray(jax.jit(step)(variables, images[i:i + 2])[0]) for i in range(0, 16, 2)])
    assert np.abs(per_device - np.asarray(want_pooled)).max() > 1e-3


def test_frozen_statistics_never_move_and_match_eval_mode():
    model, variables = _init(dataclasses.replace(TINY, frozen_batch_norm=True))
    images = np.random.RandomState(1).randn(4, 64, 64, 3).astype(np.float32)
    out, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(updated["batch_stats"]), jax.tree.leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(out["pooled"]), np.asarray(model.apply(variables, images)["pooled"]),
                               atol=1e-6)


def test_other_resolutions_resample_the_attention_pool_table():
    model, variables = _init()
    out = model.apply(variables, jnp.zeros((2, 96, 128, 3)))
    assert out["pooled"].shape == (2, 16) and out["feature_map"].shape == (2, 3, 4, 256)
    try:
        model.apply(variables, jnp.zeros((1, 48, 48, 3)))
    except ValueError as error:
        assert "multiple of 32" in str(error)
    else:
        raise AssertionError("48 px should be refused")
