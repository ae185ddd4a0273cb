"""Stage-1 DWCL step: the sharded step on 8 simulated devices equals the single-device step."""

import jax
import ml_collections
import numpy as np

from fungizsl import placement
from fungizsl.fungiclef.sampler import ClassBalancedSampler
from fungizsl.fungiclef.stage1 import make_stage1_loss
from fungizsl.models.fewshot import Stage1Model
from fungizsl.train import core
from trainer_runs import assert_same_tree


def _config():
    return ml_collections.ConfigDict(dict(
        seed=0, lr=1e-3, wd=0.05, warmup_steps=1, total_steps=10, batch_size=16, sharding_rules=(),
        optim=dict(grad_clip_norm=1.0, b2=0.999, frozen=(), layer_decay=None)))


def _batch(step, feats, labels):
    b = ClassBalancedSampler(labels, batch_size=16, seed=5)[step]
    idx = np.maximum(b["index"], 0)
    return {"tokens": feats[idx], "label": b["label"].astype(np.int32), "valid": b["valid"],
            "augmented": b["augmented"]}


def test_sharded_stage1_step_equals_single_device():
    assert jax.device_count() >= 8, "tests/conftest.py sets 8 simulated CPU devices"
    rng = np.random.RandomState(0)
    labels = np.repeat(np.arange(9), [1, 1, 2, 3, 4, 1, 2, 5, 1])
    feats = rng.randn(len(labels), 5, 12).astype(np.float32)
    model = Stage1Model(num_classes=9, width=32, num_heads=16)
    task = core.Task(name="s1", init_variables=lambda r: model.init(r, feats[:2]),
                     loss_fn=make_stage1_loss(model, "dwcl", temperature=0.1), train_iterator=None,
                     evaluate=None)
    results = []
    for devices in (jax.devices()[:1], jax.devices()[:8]):
        mesh = placement.make_mesh(devices=devices)
        trainable = core.build(_config(), task, mesh)
        state = trainable.init_state(jax.random.key(0))
        for step in range(3):
            batch = {k: jax.device_put(v, placement.batch_sharding(mesh))
                     for k, v in _batch(step, feats, labels).items()}
            state, metrics = trainable.train_step(state, batch)
        results.append((jax.device_get(state["params"]), float(metrics["loss"]), float(metrics["num_anchors"])))
    (p1, l1, a1), (p8, l8, a8) = results
    assert a1 == a8 > 0 and np.isfinite(l1)
    np.testing.assert_allclose(l8, l1, rtol=1e-5)
    assert_same_tree(p1, p8, err_msg="1 vs 8 devices", rtol=2e-4, atol=2e-6)
