"""FungiCLEF at the paper's sizes without changing its numbers (issue 19, part 2): stage 1 encoded
in row groups under `jax.checkpoint`, stage 2 on the frozen encoder's tokens computed once, and
the label space taken from the training labels only."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import fungiclef as fungiclef_configs
from fungizsl.evaluate import decisions
from fungizsl.evaluate import observations as obs_lib
from fungizsl.fungiclef import splits, stage1, stage2
from fungizsl.models.fewshot import FusionClassifier, Stage1Model


def test_row_groups_are_strided_and_come_back_in_the_batch_order():
    # encode = the sum of each row's tokens, scaled by its kept-token count: any row mixed up
    # between groups, or put back in the wrong place, changes the result.
    tokens = jnp.arange(8 * 3 * 2, dtype=jnp.float32).reshape(8, 3, 2)
    mask = jnp.asarray([[1, 1, 1], [1, 0, 1], [0, 0, 1], [1, 1, 0]] * 2, bool)
    seen = []

    def encode(t, m):
        seen.append(t.shape)
        return t.sum(1) * m.sum(1, keepdims=True)

    out = np.asarray(stage1.chunked_embeddings(encode, tokens, mask, chunks=4))
    t = np.arange(48, dtype=np.float32).reshape(8, 3, 2)
    expected = t.sum(1) * np.asarray([3, 2, 1, 2] * 2)[:, None]
    np.testing.assert_array_equal(out, expected)
    assert seen == [(2, 3, 2)]  # traced once: one group of 8 / 4 rows at a time


def test_a_batch_the_groups_do_not_divide_is_refused():
    with pytest.raises(ValueError, match="stage-1 batch 6 is not divisible by remat_chunks 4"):
        stage1.chunked_embeddings(lambda t, m: t.sum(1), jnp.zeros((6, 2, 2)), jnp.ones((6, 2), bool), 4)


def test_rematerialised_groups_give_the_same_loss_and_gradients():
    model = Stage1Model(num_classes=5, width=16, depth=1, num_heads=2)
    rng = np.random.default_rng(0)
    batch = {"tokens": jnp.asarray(rng.normal(size=(8, 6, 12)), jnp.float16),
             "label": jnp.asarray([0, 0, 1, 1, 2, 2, 3, 4], jnp.int32),
             "augmented": jnp.asarray([0, 1, 0, 1, 0, 0, 1, 0], bool), "valid": jnp.ones(8, bool)}
    params = model.init(jax.random.key(1), jnp.zeros((2, 6, 12)))["params"]
    results = {}
    for chunks in (1, 4):
        loss_fn = stage1.make_stage1_loss(model, remat_chunks=chunks)
        (loss, (metrics, _)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, {}, batch, jax.random.key(2))
        results[chunks] = (float(loss), metrics, grads)
    assert results[4][0] == pytest.approx(results[1][0], rel=1e-6)
    assert float(results[4][1]["num_anchors"]) == float(results[1][1]["num_anchors"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), results[4][2], results[1][2])
    assert float(jnp.abs(results[4][2]["encoder"]["proj"]["kernel"]).sum()) > 0  # gradients reach the encoder


def _fusion(encoded: bool):
    return FusionClassifier(num_classes=4, use_visual=True, use_text=False, encoder_width=16, encoder_heads=2,
                            width=8, depth=1, num_heads=2, num_queries=2, dropout=0.0, encoded_tokens=encoded)


def test_stage2_on_precomputed_tokens_gives_the_logits_of_the_encoder_inside():
    rng = np.random.default_rng(3)
    raw = rng.normal(size=(5, 6, 12)).astype(np.float16)
    inside = _fusion(False)
    params = inside.init(jax.random.key(0), {"tokens": jnp.asarray(raw)})["params"]
    kernel = rng.normal(size=params["classifier"]["kernel"].shape).astype(np.float32)  # zero at init
    params = dict(params, classifier=dict(params["classifier"], kernel=jnp.asarray(kernel)))
    # The encoder's weights as stage 1 saved them: what `stage1_tokens` encodes with.
    encoder = Stage1Model(num_classes=4, width=16, depth=1, num_heads=2)
    s1 = encoder.init(jax.random.key(9), jnp.zeros((1, 6, 12)))["params"]
    s1 = dict(s1, encoder=params["visual_encoder"])
    encoded = np.asarray(stage1.tokens_fn(encoder)(s1, raw))
    assert encoded.shape == (5, 7, 16) and encoded.dtype == np.float16  # the CLS of stage 1 prepended

    outside = _fusion(True)
    params_out = {k: v for k, v in params.items() if k != "visual_encoder"}
    assert jax.tree.structure(outside.init(jax.random.key(0), {"tokens": jnp.asarray(encoded)})["params"]) \
        == jax.tree.structure(params_out)  # no encoder parameters at all
    want = inside.apply({"params": params}, {"tokens": jnp.asarray(raw)})["logits"]
    got = outside.apply({"params": params_out}, {"tokens": jnp.asarray(encoded)})["logits"]
    # float16 storage of the tokens (3 decimal digits) is the only difference
    np.testing.assert_allclose(got, want, atol=3e-3)
    assert float(jnp.abs(want).max()) > 0.05


def test_stage1_tokens_fill_every_split_in_a_memory_map(tmp_path):
    model = Stage1Model(num_classes=3, width=8, depth=1, num_heads=2)
    params = model.init(jax.random.key(0), jnp.zeros((1, 4, 6)))["params"]
    rng = np.random.default_rng(4)
    data = types.SimpleNamespace(splits={
        "train": splits.SplitData(rng.normal(size=(7, 2, 4, 6)).astype(np.float16), *([None] * 7)),
        "val": splits.SplitData(rng.normal(size=(3, 2, 4, 6)).astype(np.float16), *([None] * 7))})
    apply = stage1.tokens_fn(model)
    stage1.stage1_tokens(apply, params, data, tmp_path, batch=4)  # 14 rows: chunks of 4, the last one padded
    for name, sp in data.splits.items():
        assert isinstance(sp.encoded.base, np.memmap) or isinstance(sp.encoded, np.memmap)
        assert sp.encoded.shape == (len(sp.tokens), 2, 5, 8)
        assert (tmp_path / f"{name}.npy").is_file()
        for i in range(len(sp.tokens)):
            for v in range(2):
                np.testing.assert_array_equal(sp.encoded[i, v], np.asarray(apply(params, sp.tokens[i, v][None]))[0])
        assert sp.stage2_tokens is sp.encoded
    assert splits.SplitData(np.zeros(1), *([None] * 7)).stage2_tokens.shape == (1,)


def test_which_configs_read_the_encoded_tokens():
    config = fungiclef_configs.get_config("runlocal")
    assert stage2.reads_encoded_tokens(config)  # stage 1 trained and frozen: the default
    for change in ({"stage2.frozen": ()}, {"stage2.encode_once": False}, {"stage1.total_steps": 0},
                   {"model.use_visual": False}):
        c = ml_collections.ConfigDict(config.to_dict())
        (key, value), = change.items()
        section, field = key.split(".")
        c[section][field] = value
        assert not stage2.reads_encoded_tokens(c), change
    frozen = ("fusion/visual_encoder/.*", "fusion/qformer/.*")
    assert stage2.trained_patterns(frozen, True) == ("fusion/qformer/.*",)
    assert stage2.trained_patterns(frozen, False) == frozen


def test_paper_size_stage1_is_rematerialised_and_the_local_run_is_not():
    assert fungiclef_configs.get_config().stage1.remat_chunks == 8
    assert fungiclef_configs.get_config("runlocal").stage1.remat_chunks == 1


def _loaded(labels, observations):
    n = len(labels)
    return {"tokens": np.zeros((n, 1, 2, 4), np.float16), "observation_id": np.asarray(observations),
            "category_id": np.asarray(labels), "metadata": [{"month": "5"} for _ in range(n)],
            "tower": "hand", "num_registers": 0}


def test_the_label_space_comes_from_the_training_labels_only():
    config = fungiclef_configs.get_config("runlocal")
    config.model.use_text = False
    loaded = {"train": _loaded([0, 0, 2, 1], [10, 10, 11, 12]), "val": _loaded([4, 2], [20, 21]),
              "test": _loaded([-1], [30])}
    data = splits.data_from_splits(config, loaded, show_progress=False)
    assert data.num_classes == 3  # species 4 appears only in val: the model has no output for it
    assert data.poisonous.shape == (3,)
    assert data.splits["val"].obs_labels.tolist() == [4, 2]
    # The val observation of species 4 counts as a miss at every K, and the evaluator does not crash
    # on a label outside the table: scores put class 2 first for both observations.
    scores = np.asarray([[0.1, 0.2, 0.7], [0.1, 0.2, 0.7]])
    metrics = obs_lib.observation_metrics(scores, np.asarray([4, 2]), (1, 5), data.poisonous)
    assert metrics["top1"] == 0.5 and metrics["top5"] == 0.5


def test_poison_cost_of_a_species_outside_the_table_is_unknown():
    poisonous = np.asarray([1, 0, -1])  # class 0 poisonous, 1 edible, 2 unknown
    # true 0 -> predicted 1: poisonous as edible (100); true 1 -> 0: edible as poisonous (1);
    # true 3 (outside the table) -> 1 and true 0 -> 3: unknown, no cost; N = 4.
    out = decisions.poison_costs([0, 1, 3, 0], [1, 0, 1, 3], poisonous)
    assert out == {"poison_cost": (100 + 1) / 4, "poisonous_as_edible": 1, "edible_as_poisonous": 1}
    assert decisions.flags_of(poisonous, [-1, 0, 1, 2, 3]).tolist() == [-1, 1, 0, -1, -1]
