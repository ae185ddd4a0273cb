"""Class-balanced sampler guarantees, Q-Former shapes and missing-modality masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fungizsl.fungiclef.sampler import ClassBalancedSampler
from fungizsl.models.fewshot import FusionClassifier, Stage1Model
from fungizsl.models.qformer import QFormer


def test_sampler_guarantees():
    rng = np.random.RandomState(0)
    counts = rng.randint(1, 8, 60)
    labels = np.repeat(np.arange(60), counts)
    sampler = ClassBalancedSampler(labels, batch_size=64, instances_per_class=4, min_instances=2, seed=3)
    seen = np.zeros(60)
    for step in range(300):
        b = sampler[step]
        assert b["index"].shape == (64,)
        valid = b["valid"]
        assert valid.sum() >= 64 - 1  # only a gap smaller than min_instances is left
        np.testing.assert_array_equal(labels[b["index"][valid]], b["label"][valid])
        classes, per_class = np.unique(b["label"][valid], return_counts=True)
        assert per_class.min() >= 2 and per_class.max() <= 4
        for c in classes:
            rows = valid & (b["label"] == c)
            distinct = b["index"][rows & ~b["augmented"]]
            assert len(set(distinct)) == len(distinct) == min(counts[c], 4)  # real instances, no repeats
            assert (rows & b["augmented"]).sum() == max(0, 2 - counts[c])  # copies only for singletons
        seen[classes] += 1
    # classes drawn uniformly: every class appears about equally often
    assert seen.min() > 0.6 * seen.mean() and seen.max() < 1.4 * seen.mean()
    # deterministic per (seed, step), different across steps
    np.testing.assert_array_equal(sampler[7]["index"], ClassBalancedSampler(labels, 64, seed=3)[7]["index"])
    assert not np.array_equal(sampler[7]["index"], sampler[8]["index"])


def test_sampler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="min_instances"):
        ClassBalancedSampler([0, 1], 8, instances_per_class=2, min_instances=3)


def test_qformer_shapes_and_empty_memory_contributes_nothing():
    q = QFormer(num_queries=3, width=16, depth=2, num_heads=4)
    memories = {"visual": jnp.ones((2, 5, 16)), "text": jax.random.normal(jax.random.key(1), (2, 4, 16))}
    masks = {"visual": jnp.ones((2, 5), bool), "text": jnp.array([[1, 1, 0, 0], [0, 0, 0, 0]], bool)}
    params = q.init(jax.random.key(0), memories, masks)
    out = q.apply(params, memories, masks)
    assert out.shape == (2, 3, 16)
    # Row 1 has no text: its output must not depend on the (masked) text values at all,
    other = dict(memories, text=memories["text"] * 7.0 + 3.0)
    out2 = q.apply(params, other, masks)
    np.testing.assert_allclose(out2[1], out[1], atol=1e-6)
    assert not np.allclose(out2[0], out[0], atol=1e-4)  # while row 0 uses its two tokens
    # and equals a Q-Former that never saw text for that row (the visual-only path).
    vis_only = q.apply(params, {"visual": memories["visual"]}, {"visual": masks["visual"]})
    np.testing.assert_allclose(out[1], vis_only[1], atol=1e-6)


def test_fusion_classifier_metadata_missing_and_metadata_only():
    batch = {"tokens": jnp.ones((3, 6, 12)), "text_states": jnp.ones((3, 5, 8)),
             "text_mask": jnp.ones((3, 5), bool), "field_ids": jnp.array([[1, 2], [0, 0], [3, 1]]),
             "numeric": jnp.zeros((3, 4)), "has_metadata": jnp.array([True, False, True])}
    model = FusionClassifier(num_classes=7, field_sizes=(4, 3), num_numeric=4, encoder_width=16,
                             encoder_heads=4, width=16, depth=1, num_heads=4, num_queries=2)
    params = model.init(jax.random.key(0), batch)["params"]
    assert "visual_encoder" in params and "field_0" in params
    out = model.apply({"params": params}, batch)["logits"]
    assert out.shape == (3, 7)
    changed = dict(batch, field_ids=batch["field_ids"].at[1].set(jnp.array([3, 2])),
                   text_states=batch["text_states"].at[1].set(5.0))
    np.testing.assert_allclose(model.apply({"params": params}, changed)["logits"][1], out[1], atol=1e-5)
    meta_only = FusionClassifier(num_classes=7, use_visual=False, field_sizes=(4, 3), num_numeric=4,
                                 width=16, depth=1, num_heads=4, num_queries=2)
    p2 = meta_only.init(jax.random.key(0), batch)["params"]
    assert "visual_encoder" not in p2
    assert meta_only.apply({"params": p2}, batch)["logits"].shape == (3, 7)


def test_stage1_model_outputs():
    m = Stage1Model(num_classes=9, width=32, num_heads=16)
    tokens = jnp.ones((2, 5, 12))
    params = m.init(jax.random.key(0), tokens)["params"]
    mask = jnp.array([[1, 1, 0, 0, 1], [1, 1, 1, 1, 1]], bool)
    out = m.apply({"params": params}, tokens, mask)
    assert out["embedding"].shape == (2, 32) and out["tokens"].shape == (2, 6, 32)
    # the auxiliary head: 16 x the cosine of the embedding and each class's weight column
    e, w = np.asarray(out["embedding"], np.float64), np.asarray(params["aux_classifier"]["weights"], np.float64)
    cos = (e / np.linalg.norm(e, axis=1, keepdims=True)) @ (w / np.linalg.norm(w, axis=0, keepdims=True))
    np.testing.assert_allclose(out["aux_logits"], 16 * cos, rtol=1e-4, atol=1e-4)
    # dropped tokens play no part: row 0 ignores its tokens 2 and 3, row 1 reads every token
    changed = tokens.at[:, 2:4].set(jax.random.normal(jax.random.key(2), (2, 2, 12)))
    again = m.apply({"params": params}, changed, mask)
    np.testing.assert_allclose(again["embedding"][0], out["embedding"][0], atol=1e-5)
    assert not np.allclose(again["embedding"][1], out["embedding"][1], atol=1e-3)
