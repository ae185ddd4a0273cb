"""Optimizer: schedule, weight-decay mask, frozen towers and layer-wise learning-rate decay."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fungizsl.models import two_towers
from fungizsl.train import optim
from fungizsl.weights import convert


@pytest.fixture(scope="module")
def params():
    model = two_towers.ClipModel(two_towers.clip_config("tiny"))
    return model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 16), jnp.int32))["params"]


def test_schedule_warms_up_then_decays():
    schedule = optim.lr_schedule(1e-3, total_steps=100, warmup_steps=10)
    assert float(schedule(0)) == 0.0
    assert float(schedule(10)) == pytest.approx(1e-3)
    assert float(schedule(55)) < 1e-3 and float(schedule(100)) == pytest.approx(0.0, abs=1e-9)
    with pytest.raises(ValueError, match="warmup_steps"):
        optim.lr_schedule(1e-3, total_steps=10, warmup_steps=10)


def test_no_weight_decay_on_norms_biases_and_logit_scale(params):
    mask = optim.weight_decay_mask(params)
    assert mask["logit_scale"] is False
    layer = mask["vision_model"]["encoder"]["layers_0"]
    assert layer["attn"]["query"]["kernel"] is True
    assert layer["attn"]["query"]["bias"] is False and layer["norm1"]["scale"] is False
    assert mask["text_model"]["token_embedding"]["embedding"] is True


def test_one_weight_decay_rule_for_every_position_table(params):
    """Vision (an nn.Embed 'embedding' leaf) and text (a bare param) position tables alike: no decay;
    the token embedding, a real lookup table, keeps it. Also for BERT and DINOv2 towers."""
    from fungizsl.models import bert, vit

    mask = optim.weight_decay_mask(params)
    assert mask["vision_model"]["embeddings"]["position_embedding"]["embedding"] is False
    assert mask["text_model"]["position_embedding"] is False
    assert mask["text_model"]["token_embedding"]["embedding"] is True
    paths = {p: d for p, d in zip(jax.tree.leaves(optim.param_paths(params)), jax.tree.leaves(mask))}
    tables = [p for p in paths if any(t in p.split("/") for t in optim.POSITION_TABLES)]
    assert len(tables) == 2 and not any(paths[p] for p in tables), tables

    bert_model = bert.BertModel(bert.bert_config("bert_tiny"))
    ids = jnp.zeros((1, 8), jnp.int32)
    bert_params = jax.eval_shape(lambda: bert_model.init(jax.random.key(0), ids))["params"]
    dino = vit.VisionTransformer(vit.vit_config("dinov2_s14"))
    dino_params = jax.eval_shape(lambda: dino.init(jax.random.key(0), jnp.zeros((1, 28, 28, 3))))["params"]
    for tree in (bert_params, dino_params):
        flat = zip(jax.tree.leaves(optim.param_paths(tree)), jax.tree.leaves(optim.weight_decay_mask(tree)))
        found = [(p, d) for p, d in flat if any(t in p.split("/") for t in optim.POSITION_TABLES)]
        assert found and not any(d for _, d in found), found


def _one_step(params, **kwargs):
    optimizer, _ = optim.make_optimizer(params, learning_rate=1e-2, total_steps=10, warmup_steps=0, **kwargs)
    grads = jax.tree.map(jnp.ones_like, params)
    updates, _ = optimizer.update(grads, optimizer.init(params), params)
    return updates


def test_frozen_tower_gets_no_update(params):
    updates = _one_step(params, frozen=("vision_model/.*", "visual_projection/.*"))
    assert all(float(jnp.abs(u).max()) == 0 for u in jax.tree.leaves(updates["vision_model"]))
    assert float(jnp.abs(updates["text_model"]["final_layer_norm"]["scale"]).max()) > 0
    with pytest.raises(ValueError, match="matches no parameter"):
        _one_step(params, frozen=("vison_model/.*",))


def test_layer_decay_scales_updates_by_depth_also_when_scanned(params):
    updates = _one_step(params, layer_decay=0.5, weight_decay=0.0)
    size = lambda u: float(jnp.abs(u).mean())
    layers = updates["vision_model"]["encoder"]
    last, first = size(layers["layers_1"]["attn"]["query"]["kernel"]), size(layers["layers_0"]["attn"]["query"]["kernel"])
    assert first == pytest.approx(0.5 * last, rel=1e-5)
    embed = size(updates["vision_model"]["embeddings"]["patch_embedding"]["kernel"])
    assert embed == pytest.approx(0.25 * last, rel=1e-5)  # depth 2: decay**3 vs decay**1
    scanned = convert.stack_layers(params)
    scanned_updates = _one_step(scanned, layer_decay=0.5, weight_decay=0.0)
    stacked = scanned_updates["vision_model"]["encoder"]["layers"]["attn"]["query"]["kernel"]
    np.testing.assert_allclose(stacked[0], layers["layers_0"]["attn"]["query"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(stacked[1], layers["layers_1"]["attn"]["query"]["kernel"], rtol=1e-6)
