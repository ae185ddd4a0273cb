"""Contrastive losses: numpy reference, global-batch semantics on an 8-device mesh, shard_map."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from fungizsl import losses
from fungizsl import placement


def _normalize(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def numpy_clip_loss(zimg, ztxt, scale, labels=None):
    """Float64 reference: mean of the two directions' (soft) cross-entropies."""
    zimg, ztxt = np.float64(zimg), np.float64(ztxt)
    logits = scale * zimg @ ztxt.T
    n = len(zimg)
    if labels is None:
        targets = np.eye(n)
    else:
        same = (labels[:, None] == labels[None, :]).astype(np.float64)
        targets = same / same.sum(1, keepdims=True)
    l_image = -(targets * _log_softmax(logits)).sum(1).mean()
    l_text = -(targets * _log_softmax(logits.T)).sum(1).mean()
    return (l_image + l_text) / 2, l_image, l_text


def _embeddings(batch=16, dim=8, seed=0):
    rng = np.random.RandomState(seed)
    return (_normalize(rng.randn(batch, dim)).astype(np.float32),
            _normalize(rng.randn(batch, dim)).astype(np.float32))


def test_clip_loss_matches_numpy_reference():
    zimg, ztxt = _embeddings()
    loss, metrics = losses.clip_loss(zimg, ztxt, 10.0)
    ref, ref_image, ref_text = numpy_clip_loss(zimg, ztxt, 10.0)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["l_image"]), ref_image, rtol=1e-5)
    np.testing.assert_allclose(float(metrics["l_text"]), ref_text, rtol=1e-5)
    assert abs(ref_image - ref_text) > 1e-3  # the two directions really differ on this data
    assert loss.dtype == jnp.float32
    sum_loss, _ = losses.clip_loss(zimg, ztxt, 10.0, combine="sum")
    np.testing.assert_allclose(float(sum_loss), ref_image + ref_text, rtol=1e-5)
    with pytest.raises(ValueError, match="combine"):
        losses.clip_loss(zimg, ztxt, 10.0, combine="max")


def test_clip_loss_is_computed_in_float32_from_bf16_inputs():
    zimg, ztxt = _embeddings()
    loss, _ = losses.clip_loss(jnp.bfloat16(zimg), jnp.bfloat16(ztxt), 10.0)
    assert loss.dtype == jnp.float32
    ref, _, _ = numpy_clip_loss(np.float32(jnp.bfloat16(zimg)), np.float32(jnp.bfloat16(ztxt)), 10.0)
    np.testing.assert_allclose(float(loss), ref, rtol=1e-5)


def test_in_batch_top1_metrics():
    zimg = np.eye(4, dtype=np.float32)
    ztxt = np.eye(4, dtype=np.float32)[[0, 1, 3, 2]]  # texts 2 and 3 swapped
    _, metrics = losses.clip_loss(zimg, ztxt, 10.0)
    assert float(metrics["i2t_top1"]) == 0.5
    assert float(metrics["t2i_top1"]) == 0.5


def test_aligned_embeddings_with_large_scale_give_near_zero_loss():
    z = np.eye(8, dtype=np.float32)
    values = [float(losses.clip_loss(z, z, s)[0]) for s in (1.0, 10.0, 100.0)]
    assert values[0] > values[1] > values[2]
    assert values[2] < 1e-6
    # Misaligned embeddings at the same scale are far from zero.
    assert float(losses.clip_loss(z, z[::-1], 100.0)[0]) > 50


def test_training_a_projection_drives_the_loss_down():
    rng = np.random.RandomState(1)
    x_img = rng.randn(16, 12).astype(np.float32)
    x_txt = rng.randn(16, 12).astype(np.float32)
    params = {"img": rng.randn(12, 8).astype(np.float32) * 0.3,
              "txt": rng.randn(12, 8).astype(np.float32) * 0.3}

    def loss_fn(p):
        zimg = _l2(x_img @ p["img"])
        ztxt = _l2(x_txt @ p["txt"])
        return losses.clip_loss(zimg, ztxt, 20.0)[0]

    opt = optax.adam(0.05)
    state = opt.init(params)
    first = float(loss_fn(params))
    step = jax.jit(lambda p, s: _adam_step(opt, loss_fn, p, s))
    for _ in range(200):
        params, state = step(params, state)
    assert float(loss_fn(params)) < 0.05 < first


def _adam_step(opt, loss_fn, params, state):
    grads = jax.grad(loss_fn)(params)
    updates, state = opt.update(grads, state, params)
    return optax.apply_updates(params, updates), state


def _l2(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_class_aware_loss_reduces_to_plain_loss_with_distinct_labels():
    zimg, ztxt = _embeddings()
    plain, _ = losses.clip_loss(zimg, ztxt, 10.0)
    aware, _ = losses.class_aware_clip_loss(zimg, ztxt, 10.0, np.arange(16) * 3)
    np.testing.assert_allclose(float(aware), float(plain), rtol=1e-6)


def test_class_aware_loss_matches_reference_and_does_not_repel_same_class():
    zimg, ztxt = _embeddings()
    labels = np.array([0, 1, 2, 0] * 4)
    aware, _ = losses.class_aware_clip_loss(zimg, ztxt, 10.0, labels)
    np.testing.assert_allclose(float(aware), numpy_clip_loss(zimg, ztxt, 10.0, labels)[0], rtol=1e-5)
    plain, _ = losses.clip_loss(zimg, ztxt, 10.0)
    assert abs(float(aware) - float(plain)) > 1e-2
    # Items 0 and 1 share a class. "Collapsed": both images and both captions on one direction;
    # "separated": every item on its own direction. The plain loss prefers separating the two
    # same-class pairs; the class-aware loss prefers collapsing them and is at its optimum there
    # (zero gradient; soft-target cross-entropy = the targets' entropy, log 2 on half the rows).
    labels = np.array([5, 5, 6, 7])
    collapsed = np.eye(4, dtype=np.float32)[[0, 0, 1, 2]]
    separated = np.eye(4, dtype=np.float32)
    plain = lambda z: float(losses.clip_loss(z, z, 100.0)[0])
    aware = lambda z: float(losses.class_aware_clip_loss(z, z, 100.0, labels)[0])
    np.testing.assert_allclose(plain(collapsed), np.log(2) / 2, rtol=1e-5)
    np.testing.assert_allclose(aware(collapsed), np.log(2) / 2, rtol=1e-5)
    assert plain(separated) < 1e-6 < plain(collapsed)
    assert aware(separated) > 10 * aware(collapsed)
    aware_grad = jax.grad(lambda t: losses.class_aware_clip_loss(collapsed, t, 100.0, labels)[0])(collapsed)
    assert float(jnp.abs(aware_grad).max()) < 1e-6
    _, metrics = losses.class_aware_clip_loss(collapsed, collapsed, 100.0, labels)
    assert float(metrics["i2t_top1"]) == 1.0


def test_contrastive_loss_switch():
    zimg, ztxt = _embeddings()
    labels = np.array([0, 1] * 8)
    np.testing.assert_allclose(float(losses.contrastive_loss(zimg, ztxt, 5.0, labels)[0]),
                               float(losses.clip_loss(zimg, ztxt, 5.0)[0]))
    np.testing.assert_allclose(
        float(losses.contrastive_loss(zimg, ztxt, 5.0, labels, class_aware=True)[0]),
        float(losses.class_aware_clip_loss(zimg, ztxt, 5.0, labels)[0]))
    with pytest.raises(ValueError, match="labels"):
        losses.contrastive_loss(zimg, ztxt, 5.0, class_aware=True)


# ---------------------------------------------------------------------------------------------
# Sharded: the loss over a batch split across 8 devices is the loss over the global batch.


def _projection_problem(batch=16, seed=3):
    rng = np.random.RandomState(seed)
    inputs = {"img": rng.randn(batch, 12).astype(np.float32),
              "txt": rng.randn(batch, 12).astype(np.float32),
              "labels": rng.randint(0, 3, batch).astype(np.int32)}
    params = {"img": rng.randn(12, 8).astype(np.float32),
              "txt": rng.randn(12, 8).astype(np.float32),
              "log_scale": np.float32(np.log(10.0))}
    return params, inputs


def _projected_loss(loss_fn, class_aware=False):
    def f(params, inputs):
        zimg = _l2(inputs["img"] @ params["img"])
        ztxt = _l2(inputs["txt"] @ params["txt"])
        scale = jnp.exp(params["log_scale"])
        if class_aware:
            return loss_fn(zimg, ztxt, scale, inputs["labels"])[0]
        return loss_fn(zimg, ztxt, scale)[0]
    return f


def _assert_trees_close(a, b, atol=1e-5):
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=1e-5)


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2)])
def test_jit_on_sharded_batch_equals_single_device(data, fsdp):
    zimg, ztxt = _embeddings()
    single_loss, single_grads = jax.jit(jax.value_and_grad(
        lambda a, b: losses.clip_loss(a, b, 10.0)[0], argnums=(0, 1)))(zimg, ztxt)

    mesh = placement.make_mesh(data=data, fsdp=fsdp)
    batch = placement.shard_batch({"zimg": zimg, "ztxt": ztxt}, mesh)
    assert batch["zimg"].sharding.shard_shape(batch["zimg"].shape) == (2, 8)
    sharded_loss, sharded_grads = jax.jit(jax.value_and_grad(
        lambda a, b: losses.clip_loss(a, b, 10.0)[0], argnums=(0, 1)))(batch["zimg"], batch["ztxt"])
    np.testing.assert_allclose(float(sharded_loss), float(single_loss), atol=1e-5)
    _assert_trees_close(sharded_grads, single_grads)
    assert len(sharded_grads[0].sharding.device_set) == 8
    # Not trivially equal: the loss of one device's shard alone would be very different.
    local_only = float(losses.clip_loss(zimg[:2], ztxt[:2], 10.0)[0])
    assert abs(local_only - float(single_loss)) > 0.1


@pytest.mark.parametrize("data,fsdp", [(8, 1), (4, 2), (2, 4)])
@pytest.mark.parametrize("class_aware", [False, True])
def test_projection_grads_on_mesh_and_shard_map_equal_single_device(data, fsdp, class_aware):
    params, inputs = _projection_problem()
    plain = losses.class_aware_clip_loss if class_aware else losses.clip_loss
    single_fn = _projected_loss(plain, class_aware)
    single_loss, single_grads = jax.jit(jax.value_and_grad(single_fn))(params, inputs)

    mesh = placement.make_mesh(data=data, fsdp=fsdp)
    sharded_inputs = placement.shard_batch(inputs, mesh)
    replicated = jax.device_put(params, placement.replicated(mesh))

    jit_loss, jit_grads = jax.jit(jax.value_and_grad(single_fn))(replicated, sharded_inputs)
    np.testing.assert_allclose(float(jit_loss), float(single_loss), atol=1e-5)
    _assert_trees_close(jit_grads, single_grads)

    explicit_fn = _projected_loss(losses.clip_loss_sharded(mesh, class_aware=class_aware), class_aware)
    sm_loss, sm_grads = jax.jit(jax.value_and_grad(explicit_fn))(replicated, sharded_inputs)
    np.testing.assert_allclose(float(sm_loss), float(single_loss), atol=1e-5)
    _assert_trees_close(sm_grads, single_grads)
    assert abs(float(single_grads["log_scale"])) > 1e-3  # the scale's gradient is exercised


def test_shard_map_metrics_equal_single_device():
    zimg, ztxt = _embeddings(seed=5)
    ztxt[:8] = zimg[:8]  # half the pairs aligned: top-1 metrics strictly between 0 and 1
    single_loss, single = losses.clip_loss(zimg, ztxt, 10.0)
    mesh = placement.make_mesh(data=4, fsdp=2)
    batch = placement.shard_batch({"zimg": zimg, "ztxt": ztxt}, mesh)
    loss, metrics = jax.jit(losses.clip_loss_sharded(mesh))(batch["zimg"], batch["ztxt"], 10.0)
    np.testing.assert_allclose(float(loss), float(single_loss), atol=1e-5)
    for key in ("l_image", "l_text", "i2t_top1", "t2i_top1"):
        np.testing.assert_allclose(float(metrics[key]), float(single[key]), atol=1e-5)
    assert 0 < float(single["i2t_top1"]) < 1
    with pytest.raises(ValueError, match="labels"):
        losses.clip_loss_sharded(mesh, class_aware=True)(batch["zimg"], batch["ztxt"], 10.0)
