"""The plain cnn_tiny tower: shapes, config errors, BatchNorm like the ResNet's (global batch
statistics on a sharded batch, frozen statistics), and the two-tower model built on it."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn
from jax.sharding import NamedSharding, PartitionSpec as P

from fungizsl.models import convnet, two_towers
from fungizsl import placement

SMALL = convnet.ConvNetConfig(widths=(8, 8, 16, 32), output_dim=12, image_size=32)


def _init(cfg=SMALL):
    model = convnet.ConvNet(cfg)
    return model, model.init(jax.random.key(0), jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))


def test_shapes_and_parameter_count_of_the_default_variant():
    cfg = convnet.convnet_config("cnn_tiny", output_dim=32)
    model, variables = _init(cfg)
    out = model.apply(variables, jnp.zeros((2, 96, 96, 3)))
    assert out["pooled"].shape == (2, 32) and out["feature_map"].shape == (2, 6, 6, 256)
    count = sum(p.size for p in jax.tree.leaves(variables["params"]))
    assert 300_000 < count < 500_000, count
    # another size divisible by 16 works: global pooling has no position table
    assert model.apply(variables, jnp.zeros((1, 64, 128, 3)))["pooled"].shape == (1, 32)


@pytest.mark.parametrize("change, message", [
    (dict(widths=(8,)), "at least two"),
    (dict(widths=(8, 0)), "at least two positive"),
    (dict(image_size=36), "not a multiple of 8"),
])
def test_config_errors_name_the_field(change, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(SMALL, **change)


def test_unknown_variant_and_bad_input_are_clear():
    with pytest.raises(ValueError, match="unknown ConvNet variant 'cnn_huge'"):
        convnet.convnet_config("cnn_huge")
    model, variables = _init()
    with pytest.raises(ValueError, match="3 channels"):
        model.apply(variables, jnp.zeros((1, 32, 32, 1)))
    with pytest.raises(ValueError, match="not a multiple of 8"):
        model.apply(variables, jnp.zeros((1, 36, 32, 3)))


def test_batch_statistics_are_global_under_jit_with_a_sharded_batch():
    assert jax.device_count() == 8
    model, variables = _init()
    images = np.random.RandomState(0).randn(16, 32, 32, 3).astype(np.float32) * 2 + 0.5

    def step(variables, images):
        out, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
        return out["pooled"], updated["batch_stats"]

    want_pooled, want_stats = jax.jit(step)(variables, images)
    mesh = placement.make_mesh(data=8, fsdp=1)
    got_pooled, got_stats = jax.jit(step)(variables, jax.device_put(images, NamedSharding(mesh, P(("data", "fsdp")))))
    np.testing.assert_allclose(np.asarray(got_pooled), np.asarray(want_pooled), atol=2e-5)
    for a, b in zip(jax.tree.leaves(got_stats), jax.tree.leaves(want_stats)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-6)
    moved = [np.abs(np.asarray(a) - np.asarray(b)).max()
             for a, b in zip(jax.tree.leaves(want_stats), jax.tree.leaves(variables["batch_stats"]))]
    assert min(moved) > 0, "a running statistic did not move in a training step"


def test_frozen_statistics_never_move_and_match_eval_mode():
    model, variables = _init(dataclasses.replace(SMALL, frozen_batch_norm=True))
    images = np.random.RandomState(1).randn(4, 32, 32, 3).astype(np.float32)
    out, updated = model.apply(variables, images, train=True, mutable=["batch_stats"])
    for a, b in zip(jax.tree.leaves(updated["batch_stats"]), jax.tree.leaves(variables["batch_stats"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_allclose(np.asarray(out["pooled"]), np.asarray(model.apply(variables, images)["pooled"]),
                               atol=1e-6)


def test_standardised_input_ignores_per_image_brightness_and_contrast():
    """With standardize_input a per-channel shift of the whole image changes nothing and a
    contrast change almost nothing (the variance floor of 1e-2); without it both move the output."""
    images = np.random.RandomState(2).randn(2, 32, 32, 3).astype(np.float32)
    shifted = images + np.array([0.7, -0.3, 1.1], np.float32)
    contrast = images * 1.8 - 0.4
    for standardize in (True, False):
        model, variables = _init(dataclasses.replace(SMALL, standardize_input=standardize))
        out = [np.asarray(model.apply(variables, x)["pooled"]) for x in (images, shifted, contrast)]
        if standardize:
            np.testing.assert_allclose(out[1], out[0], atol=1e-5)
            np.testing.assert_allclose(out[2], out[0], rtol=1e-2, atol=5e-3)
        else:
            assert np.abs(out[1] - out[0]).max() > 1e-2 and np.abs(out[2] - out[0]).max() > 1e-2


def test_the_default_variant_standardises_and_the_trainer_can_turn_it_off():
    from configs import fungalzsl as fungalzsl_config
    from fungizsl.fungalzsl import model as fungalzsl

    assert convnet.convnet_config("cnn_tiny", output_dim=32).standardize_input
    config = fungalzsl_config.get_config("arch=cnn_tiny,runlocal")
    vision = two_towers.clip_config("cnn_tiny").vision
    assert fungalzsl.tower_config(config, vision).standardize_input
    config.model.standardize_input = False
    config.model.convnet_widths = (8, 8, 16, 32, 64)
    tower = fungalzsl.tower_config(config, vision)
    assert not tower.standardize_input and tower.widths == (8, 8, 16, 32, 64) and tower.image_size == 96


def test_clip_model_on_the_conv_tower_has_no_visual_projection():
    clip = two_towers.clip_config("cnn_tiny")
    assert two_towers.is_convnet(clip) and two_towers.tower_projects_itself(clip)
    assert not two_towers.is_resnet(clip)
    model = two_towers.ClipModel(dataclasses.replace(clip, text=dataclasses.replace(clip.text, vocab_size=64)))
    variables = model.init(jax.random.key(0), jnp.zeros((1, 96, 96, 3)), jnp.zeros((1, 16), jnp.int32))
    assert "visual_projection" not in variables["params"] and "batch_stats" in variables
    out = model.apply(variables, jnp.ones((2, 96, 96, 3)), jnp.ones((2, 16), jnp.int32))
    assert out["logits_per_image"].shape == (2, 2)


def test_reshape_max_pool_equals_flax_max_pool_and_its_gradient():
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 6, 3))  # continuous values: no ties
    want = nn.max_pool(x, (2, 2), strides=(2, 2))
    assert jnp.array_equal(convnet.max_pool_2x2(x), want)
    weights = jax.random.normal(jax.random.PRNGKey(1), want.shape)
    grad = jax.grad(lambda v: (convnet.max_pool_2x2(v) * weights).sum())(x)
    grad_ref = jax.grad(lambda v: (nn.max_pool(v, (2, 2), strides=(2, 2)) * weights).sum())(x)
    assert jnp.array_equal(grad, grad_ref)
    assert int((grad != 0).sum()) == want.size  # one winner per window


def test_max_pool_gradient_goes_to_the_first_maximum_of_each_window_like_pytorch():
    # one image, one channel, 2x6: three 2x2 windows with ties, read row-major
    x = jnp.array([[1., 3., 5., 5., 0., 0.],
                   [3., 3., 5., 5., 2., 2.]]).reshape(1, 2, 6, 1)
    assert convnet.max_pool_2x2(x).reshape(-1).tolist() == [3., 5., 2.]
    grad = jax.grad(lambda v: (convnet.max_pool_2x2(v) * jnp.array([10., 20., 30.]).reshape(1, 1, 3, 1)).sum())(x)
    assert grad.reshape(2, 6).tolist() == [[0., 10., 20., 0., 0., 0.],
                                           [0., 0., 0., 0., 30., 0.]]
    # under jit and on a batch of several images and channels it is the same rule
    xb = jnp.stack([x[0, ..., 0], x[0, ..., 0][:, ::-1]], axis=-1)[None].repeat(2, axis=0)  # [2, 2, 6, 2]
    gb = jax.jit(jax.grad(lambda v: convnet.max_pool_2x2(v).sum()))(xb)
    assert gb[1, :, :, 0].tolist() == [[0., 1., 1., 0., 0., 0.], [0., 0., 0., 0., 1., 0.]]
    # mirrored channel: windows [[0,0],[2,2]], [[5,5],[5,5]], [[3,1],[3,3]]
    assert gb[0, :, :, 1].tolist() == [[0., 0., 1., 0., 1., 0.], [1., 0., 0., 0., 0., 0.]]


def test_batch_norm_with_its_own_gradient_matches_flax_values_gradients_and_running_statistics():
    from fungizsl.models import batch_norm
    x = jax.random.normal(jax.random.key(3), (4, 5, 6, 7)) * 3 + 1
    dy = jax.random.normal(jax.random.key(4), x.shape)
    ours = batch_norm.BatchNorm(use_running_average=False)
    theirs = nn.BatchNorm(use_running_average=False, momentum=0.9)
    variables = theirs.init(jax.random.key(0), x)
    assert jax.tree.structure(ours.init(jax.random.key(0), x)) == jax.tree.structure(variables)
    variables = {"params": {"scale": jnp.linspace(0.5, 2, 7), "bias": jnp.linspace(-1, 1, 7)},
                 "batch_stats": {"mean": jnp.full(7, 0.5), "var": jnp.full(7, 2.0)}}

    def run(module, params, xx):
        y, updated = module.apply({"params": params, "batch_stats": variables["batch_stats"]}, xx, mutable=["batch_stats"])
        return jnp.sum(y * dy), (y, updated["batch_stats"])

    (_, (y, stats)), grads = jax.value_and_grad(run, argnums=(1, 2), has_aux=True)(ours, variables["params"], x)
    (_, (y_ref, stats_ref)), grads_ref = jax.value_and_grad(run, argnums=(1, 2), has_aux=True)(theirs, variables["params"], x)
    np.testing.assert_allclose(y, y_ref, atol=1e-5)
    for got, want in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_ref)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # running statistics: 0.9 * old + 0.1 * the batch's (biased) statistics, by hand
    xs = np.asarray(x, np.float64).reshape(-1, 7)
    np.testing.assert_allclose(stats["mean"], 0.9 * 0.5 + 0.1 * xs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], 0.9 * 2.0 + 0.1 * xs.var(0), rtol=1e-5)
    np.testing.assert_allclose(stats["var"], stats_ref["var"], rtol=1e-5)
