"""The paper preset (`configs/fungiclef.py:paper`): the Q-Former's "self" fusion on hand-checked
numbers, the preset's settings and its epochs -> steps rule, the weighted vote of separately
trained members on a toy example, and `paper,runlocal` end to end on a tiny synthetic set."""

import json
import math
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fungizsl.fungiclef import ensemble as ens
from fungizsl.models.fewshot import FusionClassifier
from fungizsl.models.qformer import QFormer, SelfFusionLayer

# FungiTastic-FewShot-Train.csv: {images of a class: number of classes} (2,427 classes, 7,819 images)
REAL_CLASS_SIZES = {1: 707, 2: 534, 3: 354, 4: 285, 5: 174, 6: 128, 7: 84, 8: 56, 9: 34, 10: 27, 11: 16, 12: 10,
                    13: 6, 14: 2, 15: 2, 16: 1, 17: 1, 18: 1, 19: 2, 20: 1, 21: 1, 30: 1}


# -------------------------------------------------------------------------------------------------
# "self" fusion
# -------------------------------------------------------------------------------------------------

def _identity_layer_params(params, width):
    """Every attention projection the identity (bias 0), the feed-forwards' output 0: a layer
    that adds to each token exactly its attention-weighted sum of the normalised tokens."""
    params = jax.tree.map(np.array, params)
    for name in ("query", "key", "value", "out"):
        params["self_attn"][name] = {"kernel": np.eye(width, dtype=np.float32), "bias": np.zeros(width, np.float32)}
    for mlp in ("mlp", "mlp_text"):
        if mlp in params:
            params[mlp]["fc2"]["kernel"][:] = 0.0
            params[mlp]["fc2"]["bias"][:] = 0.0
    return params


def test_self_fusion_attention_by_hand():
    """Width 2, one head, identity projections: LayerNorm sends a 2-vector (a, b) to
    (sign(a - b), sign(b - a)), so every logit is +-2 / sqrt(2) = +-sqrt(2). The query q = (1, 0)
    (normalised (1, -1)) meets the text tokens t1 = (0, 3) -> (-1, 1) and t2 = (2, -1) -> (1, -1);
    t3 is masked. Its logits over [q, t1, t2] are [sqrt2, -sqrt2, sqrt2], so the update is
    c x (1, -1) with c = (2e^sqrt2 - e^-sqrt2) / (2e^sqrt2 + e^-sqrt2) = 0.942591: the query
    becomes (1.942591, -0.942591)."""
    layer = SelfFusionLayer(num_heads=1, mlp_dim=4, update_text=True)
    q = jnp.array([[[1.0, 0.0]]])
    text = jnp.array([[[0.0, 3.0], [2.0, -1.0], [7.0, -5.0]]])
    masks = {"text": jnp.array([[True, True, False]])}
    params = _identity_layer_params(layer.init(jax.random.key(0), q, {"text": text}, masks)["params"], 2)
    out_q, out_text = layer.apply({"params": params}, q, {"text": text}, masks)

    e, f = math.exp(math.sqrt(2)), math.exp(-math.sqrt(2))
    c = (2 * e - f) / (2 * e + f)
    assert c == pytest.approx(0.942591, abs=1e-6)
    np.testing.assert_allclose(np.asarray(out_q[0, 0]), [1 + c, -c], atol=1e-4)  # LayerNorm eps 1e-6
    # the same weights from a softmax of the inputs: softmax(n_q . n_k / sqrt(2)) over the valid keys
    ln = lambda x: (x - x.mean()) / np.sqrt(x.var() + 1e-6)
    keys = np.stack([ln(np.array(v)) for v in ([1.0, 0.0], [0.0, 3.0], [2.0, -1.0])])
    w = np.exp(keys @ keys[0] / np.sqrt(2))
    w /= w.sum()
    np.testing.assert_allclose(np.asarray(out_q[0, 0]), [1.0, 0.0] + w @ keys, atol=1e-5)
    # the text tokens are updated too (BLIP-2): t1 = (0, 3) attends to the same keys with its own query
    w1 = np.exp(keys @ keys[1] / np.sqrt(2))
    w1 /= w1.sum()
    np.testing.assert_allclose(np.asarray(out_text[0, 0]), [0.0, 3.0] + w1 @ keys, atol=1e-5)
    # the masked token got weight 0: any value there gives the same query
    moved = text.at[0, 2].set(jnp.array([-40.0, 9.0]))
    np.testing.assert_array_equal(np.asarray(layer.apply({"params": params}, q, {"text": moved}, masks)[0]),
                                  np.asarray(out_q))


def _np_layer_norm(x, p):
    x = np.asarray(x, np.float64)
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]


def _np_attention(xq, xk, p, heads, key_mask):
    dense = lambda x, d: x @ np.asarray(d["kernel"], np.float64) + np.asarray(d["bias"], np.float64)
    q, k, v = dense(xq, p["query"]), dense(xk, p["key"]), dense(xk, p["value"])
    width = q.shape[-1]
    hd = width // heads
    out = np.zeros_like(q)
    for h in range(heads):
        sl = slice(h * hd, (h + 1) * hd)
        logits = q[:, sl] @ k[:, sl].T / np.sqrt(hd)
        logits = np.where(key_mask[None, :], logits, -np.inf)
        w = np.exp(logits - logits.max(-1, keepdims=True))
        out[:, sl] = (w / w.sum(-1, keepdims=True)) @ v[:, sl]
    return dense(out, p["out"])


def _np_mlp(x, p):
    from scipy.special import erf

    h = x @ np.asarray(p["fc1"]["kernel"], np.float64) + p["fc1"]["bias"]
    h = 0.5 * h * (1 + erf(h / np.sqrt(2)))  # exact GELU
    return h @ np.asarray(p["fc2"]["kernel"], np.float64) + p["fc2"]["bias"]


def _np_self_qformer(params, visual, vmask, text, tmask, heads, depth):
    """A loop-by-loop numpy transcription of the "self" Q-Former for one example."""
    q = np.asarray(params["queries"], np.float64)
    t = np.asarray(text, np.float64)
    for i in range(depth):
        p = params[f"layers_{i}"]
        x = np.concatenate([q, t])
        keys = np.concatenate([np.ones(len(q), bool), tmask])
        x = x + _np_attention(_np_layer_norm(x, p["norm_self"]), _np_layer_norm(x, p["norm_self"]), p["self_attn"],
                              heads, keys)
        q, t = x[:len(q)], x[len(q):]
        q = q + _np_attention(_np_layer_norm(q, p["norm_visual"]), np.asarray(visual, np.float64),
                              p["cross_visual"], heads, vmask)
        q = q + _np_mlp(_np_layer_norm(q, p["norm_mlp"]), p["mlp"])
        if "mlp_text" in p:
            t = t + _np_mlp(_np_layer_norm(t, p["norm_mlp_text"]), p["mlp_text"])
    return _np_layer_norm(q, params["norm"])


def test_self_fusion_matches_a_numpy_transcription():
    qf = QFormer(num_queries=3, width=8, depth=2, num_heads=2, fusion="self")
    rng = np.random.default_rng(0)
    visual = rng.normal(size=(2, 5, 8)).astype(np.float32)
    text = rng.normal(size=(2, 4, 8)).astype(np.float32)
    vmask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], bool)
    tmask = np.array([[1, 1, 0, 0], [1, 1, 1, 1]], bool)
    memories, masks = {"visual": visual, "text": text}, {"visual": vmask, "text": tmask}
    params = qf.init(jax.random.key(1), memories, masks)["params"]
    params = jax.tree.map(lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32), params)  # biases, norms
    assert "mlp_text" in params["layers_0"] and "mlp_text" not in params["layers_1"]  # nothing reads the last
    assert "cross_text" not in params["layers_0"]  # text goes through the self-attention only
    out = np.asarray(qf.apply({"params": params}, memories, masks))
    np_params = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
    for b in range(2):
        want = _np_self_qformer(np_params, visual[b], vmask[b], text[b], tmask[b], heads=2, depth=2)
        np.testing.assert_allclose(out[b], want, atol=2e-5)


def test_self_fusion_without_text_equals_a_qformer_never_given_text():
    qf = QFormer(num_queries=2, width=16, depth=2, num_heads=4, fusion="self")
    visual = jax.random.normal(jax.random.key(2), (3, 6, 16))
    text = jax.random.normal(jax.random.key(3), (3, 5, 16))
    masks = {"visual": jnp.ones((3, 6), bool), "text": jnp.array([[1, 1, 1, 0, 0], [0] * 5, [1] * 5], bool)}
    params = qf.init(jax.random.key(0), {"visual": visual, "text": text}, masks)
    out = qf.apply(params, {"visual": visual, "text": text}, masks)
    visual_only = qf.apply(params, {"visual": visual}, {"visual": masks["visual"]})
    np.testing.assert_allclose(out[1], visual_only[1], atol=1e-6)  # row 1: every text token masked
    assert not np.allclose(out[0], visual_only[0], atol=1e-3)  # row 0 reads its three tokens
    scrambled = text.at[1].set(text[1] * 9.0 - 4.0).at[0, 3:].set(100.0)  # masked values only
    np.testing.assert_allclose(qf.apply(params, {"visual": visual, "text": scrambled}, masks)[:2], out[:2], atol=1e-6)


def test_fusion_classifier_passes_the_fusion_and_cross_stays_the_default():
    batch = {"tokens": jnp.ones((2, 4, 12)), "text_states": jax.random.normal(jax.random.key(0), (2, 5, 8)),
             "text_mask": jnp.array([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0]], bool)}
    kw = dict(num_classes=5, encoder_width=16, encoder_heads=4, width=16, depth=1, num_heads=4, num_queries=2)
    cross = FusionClassifier(**kw).init(jax.random.key(0), batch)["params"]["qformer"]["layers_0"]
    assert FusionClassifier.fusion == "cross" and "cross_text" in cross
    model = FusionClassifier(fusion="self", **kw)
    params = model.init(jax.random.key(0), batch)["params"]
    layer = params["qformer"]["layers_0"]
    assert "cross_text" not in layer and "cross_visual" in layer and "self_attn" in layer
    assert model.apply({"params": params}, batch)["logits"].shape == (2, 5)
    with pytest.raises(ValueError, match="fusion must be one of"):
        QFormer(fusion="both").init(jax.random.key(0), {"visual": jnp.ones((1, 2, 256))}, {})


# -------------------------------------------------------------------------------------------------
# The preset and its epochs
# -------------------------------------------------------------------------------------------------

def test_paper_preset_settings():
    from configs import fungiclef

    paper = fungiclef.get_config("paper")
    m = paper.model
    assert (m.use_visual, m.use_text, m.use_fields, m.use_numeric, m.use_prior, m.use_stage1_prototypes) == (
        True, True, False, False, False, False)
    assert m.fusion == "self" and m.text_model == "minilm" and paper.data.extra_text_fields == ()
    assert paper.data.text_with_year and paper.trainer == "fungizsl.fungiclef.full" and paper.preset == "paper"
    s1, s2 = paper.stage1, paper.stage2
    assert (s1.loss, s1.width, s1.depth, s1.heads, s1.batch_size, s1.lr, s1.epochs) == ("dwcl", 2048, 1, 16, 1024,
                                                                                        2e-4, 100)
    assert (s2.batch_size, s2.lr, s2.epochs, tuple(s2.frozen)) == (1024, 2e-4, 100, ("fusion/visual_encoder/.*",))
    assert s1.warmup_steps == s2.warmup_steps == 0 and s1.wd == s2.wd == 0.01 and not paper.optim.grad_clip_norm
    # the real training set's steps: 100 sampler epochs of 6,872 rows and 100 epochs of 7,819 images at 1024
    assert (s1.total_steps, s2.total_steps) == (672, 764)
    assert tuple(paper.ensemble_runs) == (50, 100, 150) and paper.ensemble_weight_metric == paper.best_metric
    assert paper.ensemble_kind == "soft" and tuple(paper.ensemble_weights) == ()

    local = fungiclef.get_config("paper,runlocal")
    assert local.model.fusion == "self" and not local.model.use_fields and local.stage1.width == 128
    assert local.stage2.batch_size == 128 and tuple(local.ensemble_runs) == (10, 20, 30)
    # the other presets keep their numbers
    for arg in (None, "runlocal"):
        full = fungiclef.get_config(arg)
        assert full.model.fusion == "cross" and full.model.use_stage1_prototypes and full.model.use_fields
        assert tuple(full.ensemble_runs) == () and full.stage1.epochs == full.stage2.epochs == 0
    assert fungiclef.get_config(None).stage2.batch_size == 256
    with pytest.raises(ValueError, match="exclude each other"):
        fungiclef.get_config("paper,metadata_only")
    # what would otherwise stop the run only after stage 2 stops it before stage 1
    from fungizsl.errors import ConfigError

    for field, value, message in (("ensemble_runs", (50,), "two or more"), ("ensemble_weights", (1, 2), "one weight"),
                                  ("ensemble_weight_metric", "fungiclef/top1", "selection metric")):
        bad = fungiclef.get_config("paper")
        bad[field] = value
        with pytest.raises(ConfigError, match=message):
            ens.check_ensemble(bad)
    ens.check_ensemble(fungiclef.get_config("paper"))


def test_epochs_to_steps():
    # classes of 1, 2, 3 and 5 images: a sampler epoch is 2 + 2 + 3 + 4 = 11 rows
    labels = np.repeat([0, 1, 2, 3], [1, 2, 3, 5])
    assert ens.sampler_epoch_rows(labels, 4, 2) == 11
    assert ens.epoch_steps(3, 11, 4) == 9  # ceil(33 / 4)
    assert ens.epoch_steps(4, 11, 4) == 11 and ens.epoch_steps(8, 4, 32) == 1
    # the real training set
    real = np.repeat(np.arange(sum(REAL_CLASS_SIZES.values())),
                     [n for n, c in REAL_CLASS_SIZES.items() for _ in range(c)])
    assert len(real) == 7819 and real.max() + 1 == 2427
    from configs.fungiclef import PAPER_SAMPLER_EPOCH_ROWS, PAPER_TRAIN_IMAGES

    assert ens.sampler_epoch_rows(real) == PAPER_SAMPLER_EPOCH_ROWS == 6872 and PAPER_TRAIN_IMAGES == 7819
    assert [ens.epoch_steps(e, 7819, 1024) for e in (50, 100, 150)] == [382, 764, 1146]

    # resolve_epochs writes the steps of each stage given in epochs, from the training split
    from configs import fungiclef

    config = fungiclef.get_config("paper")
    data = SimpleNamespace(splits={"train": SimpleNamespace(labels=real)})
    got = ens.resolve_epochs(config, data)
    assert (config.stage1.total_steps, config.stage2.total_steps) == (672, 764)
    assert (config.stage1.eval_every, config.stage2.eval_every) == (168, 191)  # 25 epochs
    assert got["stage1"]["rows_per_epoch"] == 6872
    config.stage1.epochs, config.stage2.epochs = 3, 0  # 0: total_steps stays as given
    config.stage2.total_steps = 5
    ens.resolve_epochs(config, SimpleNamespace(splits={"train": SimpleNamespace(labels=labels)}))
    assert (config.stage1.total_steps, config.stage2.total_steps) == (math.ceil(3 * 11 / 1024), 5)


# -------------------------------------------------------------------------------------------------
# The weighted vote
# -------------------------------------------------------------------------------------------------

def test_weighted_vote_of_three_members_by_hand(tmp_path):
    """Three members, one observation of 2 images (log-probabilities equal per image, so pooling
    leaves them as they are) and one of 1 image; weights 1, 1, 2 (normalised 0.25, 0.25, 0.5):
    observation 0: 0.25 x (0.6, 0.3, 0.1) + 0.25 x (0.2, 0.5, 0.3) + 0.5 x (0.1, 0.2, 0.7)
                   = (0.25, 0.30, 0.45) -> class 2 (member 1 alone says 0);
    observation 1: 0.25 x (0.5, 0.4, 0.1) + 0.25 x (0.1, 0.8, 0.1) + 0.5 x (0.6, 0.2, 0.2)
                   = (0.45, 0.40, 0.15) -> class 0, where equal weights give (0.4, 0.467, 0.133) -> 1."""
    probs = [np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1]]), np.array([[0.2, 0.5, 0.3], [0.1, 0.8, 0.1]]),
             np.array([[0.1, 0.2, 0.7], [0.6, 0.2, 0.2]])]
    groups = np.array([[0, 1], [2, -1]])
    # image logits [N_obs, G, C] as the scorer gives them: each image of an observation the same
    member = [np.log(p)[:, None, :].repeat(2, 1) for p in probs]
    split = SimpleNamespace(groups=groups, obs_labels=np.array([2, 1]), obs_ids=np.array([501, 502]))
    data = SimpleNamespace(splits={"val": split, "test": split}, poisonous=np.array([0, 1, 0]))
    config = SimpleNamespace(evals=SimpleNamespace(fungiclef={"pooling": "mean"}))
    members = [{"epochs": e, "run": f"stage2_e{e}", "weight_value": v} for e, v in ((50, 0.5), (100, 0.5), (150, 1.0))]
    cfg = SimpleNamespace(get=lambda k, d=None: {"ensemble_weight_metric": "fungiclef/top5"}.get(k, d))
    weights = ens.member_weights(cfg, members)
    assert weights == [0.5, 0.5, 1.0]  # each member's val Top-5; the vote normalises them

    from fungizsl.evaluate import observations as obs_lib

    vote = np.exp(obs_lib.weighted_vote([np.log(p) for p in probs], weights))
    np.testing.assert_allclose(vote, [[0.25, 0.30, 0.45], [0.45, 0.40, 0.15]], atol=1e-12)
    out = ens.vote_and_score(config, data, {"val": member, "test": member}, weights, "soft", tmp_path / "sub.csv")
    assert out["val"]["top1"] == pytest.approx(0.5)  # obs 0 right (class 2), obs 1 wrong (0, not 1)
    assert out["val"]["top5"] == 1.0
    sub = obs_lib.read_submission(tmp_path / "sub.csv")
    assert sub[501][:3] == [2, 1, 0] and set(sub) == {501, 502}
    # equal weights: (0.3, 0.333, 0.367) and (0.4, 0.467, 0.133)
    equal = np.exp(obs_lib.weighted_vote([np.log(p) for p in probs]))
    np.testing.assert_allclose(equal, [[0.3, 1 / 3, 1.1 / 3], [0.4, 1.4 / 3, 0.4 / 3]], atol=1e-12)
    # given weights win over the metric; a wrong count stops with a message
    given = SimpleNamespace(get=lambda k, d=None: {"ensemble_weights": (3, 1, 1),
                                                   "ensemble_weight_metric": "fungiclef/top5"}.get(k, d))
    assert ens.member_weights(given, members) == [3, 1, 1]
    bad = SimpleNamespace(get=lambda k, d=None: {"ensemble_weights": (1, 2)}.get(k, d))
    with pytest.raises(Exception, match="one weight per member"):
        ens.member_weights(bad, members)


# -------------------------------------------------------------------------------------------------
# paper,runlocal end to end
# -------------------------------------------------------------------------------------------------

def test_paper_runlocal_end_to_end(tmp_path):
    from fungiclef_runs import TINY_SPECIES as TINY

    from configs import fungiclef
    from fungizsl import runs
    from fungizsl.data import builders
    from fungizsl.evaluate import observations as obs_lib
    from fungizsl.fungiclef import full
    from fungizsl.fungiclef import synthetic_species as syn

    counts = syn.write_species_set(tmp_path / "download", TINY, show_progress=False)
    builders.build("fungiclef2025", "300p", data_dir=tmp_path / "tfds", manual_dir=tmp_path / "download")
    config = fungiclef.get_config("paper,runlocal")
    config.data.tfds_dir = str(tmp_path / "tfds")
    f = config.features
    f.image_size, f.small_steps, f.shard_size, f.batch_size = 32, 3, 16, 16
    config.stage1.update(epochs=1, eval_every_epochs=1, batch_size=16, width=32, heads=4, log_every=2)
    config.stage2.update(epochs=2, eval_every_epochs=1, batch_size=16, log_every=2)
    config.ensemble_runs = (1, 2, 3)
    config.model.qformer_width = 32
    config.data.text_max_length = 40

    summary = full.train_and_evaluate(config, tmp_path / "run")
    run = tmp_path / "run"
    e = summary["ensemble"]
    assert e["members"] == ["stage2_e1", "stage2", "stage2_e3"]  # the 2-epoch member is the headline run
    images = counts["train"]["images"]
    steps = [r["total_steps"] for r in e["runs"]]
    assert steps == [math.ceil(k * images / 16) for k in (1, 2, 3)]
    for r in e["runs"]:
        written = json.loads((run / r["run"] / "summary.json").read_text())
        assert written["selection"]["last_step"] == r["total_steps"]
        assert (run / r["run"] / "submission_test.csv").exists()
    assert e["weighted_by"] == "fungiclef/top5" and len(e["weights"]) == 3
    assert e["weights"] == [r["weight_value"] for r in e["runs"]]
    assert "test" in e and "val" in e
    assert json.loads((run / "stage2" / runs.CONFIG_FILE).read_text())["model"]["fusion"] == "self"
    sub = obs_lib.read_submission(run / "submission_test_ensemble.csv")
    assert len(sub) == counts["test"]["observations"]
    assert all(len(v) == min(10, TINY.num_species) for v in sub.values())
    written = json.loads((run / "summary.json").read_text())
    assert written["ensemble"]["members"] == e["members"]
