"""The FungiCLEF system's numbers checked by hand, on arrays small enough to work out on paper:
stage-1 prototype scores with the training observation left out, the evaluator's observation
inputs, the batch builders of both stages and the class-balanced sampler, the residual fusion
of log-score inputs, the ensemble vote (and the ensemble's vote-and-score of a split), the pooling
of an observation's images, the metrics, the raw-feature baselines and the paper preset's epochs
to steps.

Every expected value is written down (with the arithmetic in a comment) or computed here from
first principles with plain numpy, never with the function under test or its helpers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fungizsl.evaluate import observations as obs
from fungizsl.fungiclef import splits as splits_lib
from fungizsl.fungiclef.sampler import ClassBalancedSampler
from fungizsl.fungiclef.stage1 import Stage1Batch, stage1_embeddings, stage1_prototype_scores
from fungizsl.fungiclef.stage2 import Stage2Batch
from fungizsl.models.fewshot import FusionClassifier, ResidualFusion

R2, R5, R10 = math.sqrt(2), math.sqrt(5), math.sqrt(10)


def _split(tokens, image_obs, labels, obs_ids, groups, inputs=None, image_inputs=None):
    """A SplitData built by hand (records unused by the code under test)."""
    groups = np.asarray(groups)
    obs_labels = np.asarray(labels)[groups[:, 0]]
    return splits_lib.SplitData(tokens=np.asarray(tokens), image_obs=np.asarray(image_obs),
                                labels=np.asarray(labels), obs_ids=np.asarray(obs_ids), obs_labels=obs_labels,
                                groups=groups, records=[{} for _ in range(len(groups))], inputs=inputs or {},
                                image_inputs=image_inputs or {})


def _full(splits, num_classes, poisonous=None):
    return splits_lib.FullData(splits=splits, num_classes=num_classes, field_sizes=(), tower="hand-made",
                               first_kept=1, text_states=None, text_mask=None,
                               poisonous=np.zeros(num_classes, int) if poisonous is None else poisonous)


# -------------------------------------------------------------------------------------------------
# Stage 1: embeddings and prototype scores with the training observation left out
# -------------------------------------------------------------------------------------------------

def _first_token(params, x):
    """A stand-in for the stage-1 encoder: the embedding is the first token as it is."""
    assert params == "params"
    return np.asarray(x)[:, 0]


def test_stage1_embeddings_normalise_each_view_then_the_mean():
    # image 0: views (1, 0, 0) and (0, 2, 0) -> unit views (1,0,0), (0,1,0) -> mean (.5,.5,0) -> (1,1,0)/sqrt2
    #   (averaging before normalising would give (1,2,0)/sqrt5)
    # image 1: views (0, 0, 3) and (0, 0, 0.5) -> (0, 0, 1); image 2: (3, 4, 0) twice -> (.6, .8, 0)
    tokens = np.zeros((3, 2, 2, 3), np.float32)
    tokens[0, 0, 0], tokens[0, 1, 0] = [1, 0, 0], [0, 2, 0]
    tokens[1, 0, 0], tokens[1, 1, 0] = [0, 0, 3], [0, 0, 0.5]
    tokens[2, :, 0] = [3, 4, 0]
    tokens[:, :, 1] = 99.0  # only the first token is the embedding
    for batch in (2, 4, 256):  # 6 rows in chunks of 2, of 4 (the last one padded) and in one
        got = stage1_embeddings(_first_token, "params", tokens, batch=batch)
        np.testing.assert_allclose(got, [[1 / R2, 1 / R2, 0], [0, 0, 1], [0.6, 0.8, 0]], atol=1e-6)


def _prototype_data():
    """Train: 6 images of 5 observations, in an interleaved order. Embedding (the first token,
    already unit length) per image, with its observation and class:
        image 0  a1 (1, 0, 0)     obs A  class 0
        image 1  c1 (0, 0, 1)     obs C  class 1   (class 1's only observation)
        image 2  b1 (1, 0, 0)     obs B  class 0
        image 3  a2 (0, 1, 0)     obs A  class 0
        image 4  d1 (0, 1, 0)     obs D  class 2
        image 5  e1 (.6, .8, 0)   obs E  class 2
    Val: image 0 (0, .6, .8) of obs X, image 1 (1, 0, 0) of obs Y; class 3 has no training image."""
    emb = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 1, 0], [0.6, 0.8, 0]], np.float32)
    train = _split(emb[:, None, None, :].repeat(2, 1), image_obs=[0, 1, 2, 0, 3, 4], labels=[0, 1, 0, 0, 2, 2],
                   obs_ids=[10, 11, 12, 13, 14], groups=[[0, 3], [1, -1], [2, -1], [4, -1], [5, -1]])
    v = np.array([[0, 0.6, 0.8], [1, 0, 0]], np.float32)
    val = _split(v[:, None, None, :], image_obs=[0, 1], labels=[1, 0], obs_ids=[20, 21], groups=[[0], [1]])
    return _full({"train": train, "val": val}, num_classes=4)


def test_stage1_prototype_scores_leave_the_training_observation_out():
    data = _prototype_data()
    stage1_prototype_scores(_first_token, "params", data, scale=10.0)
    # Prototypes from all training images (sum of unit embeddings, renormalised):
    #   P0 = a1 + a2 + b1 = (2, 1, 0) / sqrt5;  P1 = (0, 0, 1);  P2 = d1 + e1 = (.6, 1.8, 0) -> (1, 3, 0) / sqrt10
    # A training image's own observation is taken out of its class's prototype:
    #   obs A (a1, a2): class 0 without A = b1 = (1, 0, 0)
    #   obs B (b1):     class 0 without B = a1 + a2 -> (1, 1, 0) / sqrt2
    #   obs C (c1):     class 1 without C is empty -> cosine -1
    #   obs D (d1):     class 2 without D = e1 = (.6, .8, 0);  obs E (e1): class 2 without E = d1 = (0, 1, 0)
    #   class 3 never has a training image -> -1 for everyone
    want_train = np.array([
        [1, 0, 1 / R10, -1],            # a1: (1,0,0).(1,0,0), (1,0,0).P1, (1,0,0).P2
        [0, -1, 0, -1],                 # c1: (0,0,1).P0 = 0, class 1 left empty, (0,0,1).P2 = 0
        [1 / R2, 0, 1 / R10, -1],       # b1: (1,0,0).(1,1,0)/sqrt2
        [0, 0, 3 / R10, -1],            # a2: (0,1,0).(1,0,0) = 0, (0,1,0).P2 = 3/sqrt10
        [1 / R5, 0, 0.8, -1],           # d1: (0,1,0).P0 = 1/sqrt5, (0,1,0).(.6,.8,0) = .8
        [2 / R5, 0, 0.8, -1],           # e1: (.6,.8,0).(2,1,0)/sqrt5 = 2/sqrt5, (.6,.8,0).(0,1,0) = .8
    ])
    # validation images see every training image: P0, P1, P2 as above
    want_val = np.array([
        [0.6 / R5, 0.8, 1.8 / R10, -1],  # (0,.6,.8)
        [2 / R5, 0, 1 / R10, -1],        # (1,0,0)
    ])
    np.testing.assert_allclose(data.splits["train"].image_inputs["proto"], 10 * want_train, atol=1e-5)
    np.testing.assert_allclose(data.splits["val"].image_inputs["proto"], 10 * want_val, atol=1e-5)


# -------------------------------------------------------------------------------------------------
# Observations: grouping the images, the evaluator's inputs
# -------------------------------------------------------------------------------------------------

def test_group_orders_observations_by_first_appearance():
    loaded = {"observation_id": np.array([30, 10, 30, 20, 10, 30]),
              "category_id": np.array([7, 5, 7, 6, 5, 7]),
              "metadata": [{"i": i} for i in range(6)]}
    image_obs, obs_ids, obs_labels, groups, records = splits_lib._group(loaded)
    assert image_obs.tolist() == [0, 1, 0, 2, 1, 0]
    assert obs_ids.tolist() == [30, 10, 20] and obs_labels.tolist() == [7, 5, 6]
    assert groups.tolist() == [[0, 2, 5], [1, 4, -1], [3, -1, -1]]
    assert records == [{"i": 0}, {"i": 1}, {"i": 3}]  # each observation's first image


def _inputs_data():
    """Train: 3 images of 2 observations, 2 views, 3 tokens of width 2. Eval: 3 images of 2
    observations (obs 0: images 2 and 0, obs 1: image 1), 2 views. The CLS (token 0) of image i,
    view v is (10 i + 2 v, -i) in eval and (i + 4 v, 1) in train; other tokens are 99 (never read)."""
    def tokens(n, cls):
        t = np.full((n, 2, 3, 2), 99.0, np.float32)
        for i in range(n):
            for v in range(2):
                t[i, v, 0] = cls(i, v)
        return t

    train = _split(tokens(3, lambda i, v: (i + 4 * v, 1)), image_obs=[0, 0, 1], labels=[2, 2, 0],
                   obs_ids=[100, 101], groups=[[0, 1], [2, -1]], inputs={"prior": np.zeros((2, 3))})
    prior = np.array([[-1.0, -2.0, -3.0], [-3.0, -2.0, -1.0]])
    ev = _split(tokens(3, lambda i, v: (10 * i + 2 * v, -i)), image_obs=[0, 1, 0], labels=[1, 0, 1],
                obs_ids=[200, 201], groups=[[2, 0], [1, -1]], inputs={"prior": prior})
    return _full({"train": train, "val": ev}, num_classes=3, poisonous=np.array([1, 0, -1])), prior


def test_obs_inputs_by_hand():
    data, prior = _inputs_data()
    got = splits_lib.obs_inputs(data, "val")
    # CLS averaged over the 2 views: image i -> (10 i + 1, -i); train image i -> (i + 2, 1)
    np.testing.assert_allclose(got["raw_features"][0], [[21, -2], [1, 0]])  # obs 0: images 2, 0
    np.testing.assert_allclose(got["raw_features"][1, 0], [11, -1])  # obs 1: image 1 (slot 1 is padding)
    assert got["raw_features"].shape == (2, 2, 2)
    assert got["image_mask"].tolist() == [[True, True], [True, False]]
    assert got["labels"].tolist() == [1, 0] and got["observation_ids"].tolist() == [200, 201]
    np.testing.assert_allclose(got["train_raw_features"], [[2, 1], [3, 1], [4, 1]])
    assert got["train_raw_labels"].tolist() == [2, 2, 0]
    np.testing.assert_array_equal(got["metadata_scores"], prior)
    assert got["poisonous_by_class"].tolist() == [1, 0, -1]


def test_image_to_obs_gathers_each_observations_images():
    groups = np.array([[2, 0], [1, -1]])
    logits = np.array([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]])  # image i -> (2i, 2i + 1)
    got = splits_lib.image_to_obs(logits, groups)
    assert got.shape == (2, 2, 2)
    np.testing.assert_array_equal(got[0], [[4, 5], [0, 1]])
    np.testing.assert_array_equal(got[1, 0], [2, 3])  # got[1, 1] is padding, masked by groups >= 0


def test_pad_rows_and_chunks():
    x = np.array([[1, 2], [3, 4]])
    np.testing.assert_array_equal(splits_lib.pad_rows(x, 4), [[1, 2], [3, 4], [3, 4], [3, 4]])
    assert splits_lib.pad_rows(x, 2) is x
    assert list(splits_lib.chunks(7, 3)) == [(0, 3), (3, 6), (6, 7)]
    assert list(splits_lib.chunks(6, 3)) == [(0, 3), (3, 6)]


# -------------------------------------------------------------------------------------------------
# Batch builders
# -------------------------------------------------------------------------------------------------

def _stage2_data(n=7, views=3):
    """n images of 4 observations (image i in observation i % 4), `views` views. Every input names
    where it comes from: token value 100 i + v (image i, view v), label 10 + i, field id 5 o
    (observation o), sentence 3 - o, proto 1000 + i."""
    tokens = np.zeros((n, views, 2, 1), np.float32)
    for i in range(n):
        for v in range(views):
            tokens[i, v] = 100 * i + v
    image_obs = np.arange(n) % 4
    groups = np.full((4, 2), -1)
    for o in range(4):
        m = np.flatnonzero(image_obs == o)
        groups[o, :len(m)] = m
    inputs = {"field_ids": 5 * np.arange(4)[:, None], "sentence": 3 - np.arange(4)}
    sp = _split(tokens, image_obs, 10 + np.arange(n), np.arange(4), groups, inputs=inputs,
                image_inputs={"proto": (1000 + np.arange(n))[:, None].astype(np.float32)})
    text_states = np.arange(4)[:, None, None] * np.ones((1, 2, 3))  # sentence s -> all s
    text_mask = np.array([[1, 0], [1, 1], [0, 1], [1, 1]], bool)
    return sp, text_states, text_mask


def _decode_stage2(batch, sp, text_states, text_mask, views):
    """(image, view) of every row, after checking that the row's inputs are that image's and its
    observation's."""
    value = batch["tokens"][:, 0, 0].astype(int)
    image, view = value // 100, value % 100
    assert (view < views).all()
    np.testing.assert_array_equal(batch["tokens"][:, 1, 0], value)  # the whole view, every token
    o = image % 4
    np.testing.assert_array_equal(batch["label"], 10 + image)
    np.testing.assert_array_equal(batch["field_ids"][:, 0], 5 * o)
    np.testing.assert_array_equal(batch["proto"][:, 0], 1000 + image)
    np.testing.assert_array_equal(batch["text_states"][:, 0, 0], 3 - o)  # the observation's sentence
    np.testing.assert_array_equal(batch["text_mask"], text_mask[3 - o])
    assert "sentence" not in batch
    return image, view


def test_stage2_batch_walks_epoch_permutations_with_each_rows_inputs():
    n, views, bs = 7, 3, 3
    sp, ts, tm = _stage2_data(n, views)
    builder = Stage2Batch(sp, ts, tm, batch_size=bs, seed=4, process_index=0, process_count=1)
    images, seen_views = [], []
    for step in range(14):  # 42 rows = 6 epochs of 7 images; steps 2, 4, 7, 9, 11 cross an epoch's end
        image, view = _decode_stage2(builder.map(step), sp, ts, tm, views)
        images.extend(image.tolist())
        seen_views.extend(view.tolist())
    epochs = np.reshape(images, (6, n))
    for e in range(6):  # every epoch is one pass over the images, each image once
        assert sorted(epochs[e].tolist()) == list(range(n)), (e, epochs[e])
    assert len({tuple(e) for e in epochs.tolist()}) > 1  # and the order changes between epochs
    assert set(seen_views) == set(range(views))
    # a step is a pure function of (seed, step); another seed gives another order
    np.testing.assert_array_equal(builder.map(9)["tokens"], builder.map(9)["tokens"])
    other = Stage2Batch(sp, ts, tm, batch_size=bs, seed=5, process_index=0, process_count=1)
    assert [_decode_stage2(other.map(s), sp, ts, tm, views)[0].tolist() for s in range(3)] != \
        [epochs.reshape(-1)[3 * s:3 * s + 3].tolist() for s in range(3)]


def test_stage2_batch_processes_split_the_single_process_batch():
    """With 2 processes, process p gets rows [p B/2, (p + 1) B/2) of the global batch: its images,
    their inputs and the view each row takes are those of the one-process batch."""
    n, views, bs = 7, 3, 4
    sp, ts, tm = _stage2_data(n, views)
    whole = Stage2Batch(sp, ts, tm, bs, 4, 0, 1)
    parts = [Stage2Batch(sp, ts, tm, bs, 4, p, 2) for p in range(2)]
    for step in range(6):
        image, view = _decode_stage2(whole.map(step), sp, ts, tm, views)
        got = [_decode_stage2(part.map(step), sp, ts, tm, views) for part in parts]
        assert [len(g[0]) for g in got] == [bs // 2, bs // 2]
        np.testing.assert_array_equal(np.concatenate([g[0] for g in got]), image)
        np.testing.assert_array_equal(
            np.concatenate([g[1] for g in got]), view,
            err_msg=f"step {step}: the views of process 1's rows are not the one-process batch's (each process "
                    f"draws its views from the start of the step's stream, so row j of every process takes the "
                    f"same view and the global batch depends on the process count)")


def _stage1_data():
    """Images 0..6 with labels [0, 1, 1, 1, 2, 2, 3] (class 0 and 3: one instance each), 2 views.
    Every token of view v of image i is (i, v == 0, v == 1): a view is identifiable, and a mixture
    of views shows its weights."""
    labels = np.array([0, 1, 1, 1, 2, 2, 3])
    tokens = np.zeros((7, 2, 3, 3), np.float32)
    for i in range(7):
        tokens[i, :, :, 0] = i
        tokens[i, 0, :, 1] = 1
        tokens[i, 1, :, 2] = 1
    return labels, tokens


def test_stage1_batch_rows_are_the_samplers_images_one_view_or_a_mixture():
    labels, tokens = _stage1_data()
    sampler = ClassBalancedSampler(labels, batch_size=10, instances_per_class=3, min_instances=2, seed=1)
    mixed = whole_views = 0
    for mix in (True, False):
        builder = Stage1Batch(sampler, tokens, seed=2, mix=mix, process_index=0, process_count=1)
        for step in range(12):
            b, s = builder.map(step), sampler[step]
            assert b["tokens"].dtype == np.float16 and b["tokens"].shape == (10, 3, 3)
            np.testing.assert_array_equal(b["label"], s["label"])
            np.testing.assert_array_equal(b["augmented"], s["augmented"])
            np.testing.assert_array_equal(b["valid"], s["valid"])
            x = b["tokens"].astype(np.float32)
            np.testing.assert_array_equal(x, x[:, :1].repeat(3, 1))  # one mixture weight for every token
            x = x[:, 0]
            valid = s["valid"]
            np.testing.assert_array_equal(x[valid, 0], s["index"][valid])  # the sampler's image
            w = x[:, 1:]  # weights of views 0 and 1
            np.testing.assert_allclose(w.sum(1), 1.0, atol=2e-3)
            plain = ~(s["augmented"] & mix)
            # rows that are not augmented copies (or without mixing): one whole view
            assert np.all((w[plain] == 0) | (w[plain] == 1)), w[plain]
            # augmented copies with mixing: lam a + (1 - lam) b, lam in [0.5, 1]: the heavier view >= 0.5
            aug = ~plain
            assert np.all(w[aug].max(1) >= 0.5 - 1e-3) and np.all(w[aug] >= 0)
            mixed += int(np.sum(w[aug].min(1) > 1e-3))
            whole_views += int(np.sum(plain & valid))
    assert mixed > 0 and whole_views > 0  # both kinds of rows occurred


def test_stage1_batch_processes_split_the_single_process_batch():
    labels, tokens = _stage1_data()
    sampler = ClassBalancedSampler(labels, batch_size=10, instances_per_class=3, min_instances=2, seed=1)
    whole = Stage1Batch(sampler, tokens, 2, True, 0, 1)
    parts = [Stage1Batch(sampler, tokens, 2, True, p, 2) for p in range(2)]
    for step in range(5):
        w, got = whole.map(step), [part.map(step) for part in parts]
        for key in ("tokens", "label", "augmented", "valid"):
            assert [len(g[key]) for g in got] == [5, 5]
            np.testing.assert_array_equal(np.concatenate([g[key] for g in got]), w[key], err_msg=key)


def test_sampler_composition_by_hand():
    """Counts per class: 0: 1, 1: 3, 2: 6, 3: 2; 4 instances per class at most, 2 at least.
    Rows per class: 0: 1 real + 1 augmented copy, 1: all 3, 2: 4 of 6, 3: both = 11 rows."""
    labels = np.array([2, 0, 2, 1, 2, 3, 1, 2, 3, 2, 1, 2])
    members = {c: set(np.flatnonzero(labels == c).tolist()) for c in range(4)}
    for batch_size, padding in ((11, 0), (12, 1)):
        sampler = ClassBalancedSampler(labels, batch_size, instances_per_class=4, min_instances=2, seed=0)
        for step in range(5):
            b = sampler[step]
            valid = b["valid"]
            assert valid.tolist() == [True] * 11 + [False] * padding  # padding at the end
            assert (b["index"][~valid] == -1).all() and (b["label"][~valid] == -1).all()
            assert not b["augmented"][~valid].any()
            for c, want_rows, want_real in ((0, 2, 1), (1, 3, 3), (2, 4, 4), (3, 2, 2)):
                rows = valid & (b["label"] == c)
                assert rows.sum() == want_rows, (c, b)
                real = b["index"][rows & ~b["augmented"]]
                assert len(real) == want_real == len(set(real.tolist())) and set(real.tolist()) <= members[c]
                copies = b["index"][rows & b["augmented"]]
                assert len(copies) == want_rows - want_real and set(copies.tolist()) <= members[c]
                np.testing.assert_array_equal(labels[b["index"][rows]], c)
                where = np.flatnonzero(rows)
                assert where.max() - where.min() == want_rows - 1  # a class's rows are contiguous
                assert not b["augmented"][where[:want_real]].any()  # real rows first, copies after
    # a batch of 5: classes are added in a random order while they fit, a class too large is
    # skipped for a smaller one while at least min_instances rows are left: 5 rows hold classes 0 and 3
    # (2 + 2), class 1 and a class of 2 (3 + 2), or class 2 alone (4; no class of 2 fits the last row)
    sampler = ClassBalancedSampler(labels, 5, instances_per_class=4, min_instances=2, seed=0)
    for step in range(20):
        b = sampler[step]
        sizes = sorted(np.bincount(b["label"][b["valid"]], minlength=4).tolist())
        assert sizes[-2:] in ([2, 2], [2, 3], [0, 4]), (step, b)


# -------------------------------------------------------------------------------------------------
# Residual fusion of log-score inputs
# -------------------------------------------------------------------------------------------------

BIAS = np.array([0.5, -1.0, 2.0])


def _fusion_batch():
    return {"field_ids": jnp.array([[1], [2]])}


def _with_bias(params):
    """The fusion classifier's kernel zeroed and its bias set: its logits are BIAS for any input."""
    params = jax.tree.map(np.asarray, jax.device_get(params))
    cls = params["fusion"]["classifier"]
    cls["kernel"] = np.zeros_like(cls["kernel"])
    cls["bias"] = BIAS.astype(cls["bias"].dtype)
    return params


def test_residual_fusion_adds_scaled_log_softmax_of_each_input():
    fusion = FusionClassifier(num_classes=3, use_visual=False, use_text=False, field_sizes=(3,), width=8, depth=1,
                              num_heads=2, num_queries=2)
    model = ResidualFusion(fusion, ("prior", "proto"))
    prior = np.log(np.array([[1.0, 2.0, 5.0], [4.0, 2.0, 2.0]]))  # log-softmax: log (1, 2, 5)/8, log (4, 2, 2)/8
    proto = np.array([[0.0, 0.0, math.log(2)], [3.0, 3.0, 3.0]])  # log-softmax: log (1, 1, 2)/4, log (1, 1, 1)/3
    lsm_prior = np.log([[1 / 8, 2 / 8, 5 / 8], [4 / 8, 2 / 8, 2 / 8]])
    lsm_proto = np.log([[1 / 4, 1 / 4, 2 / 4], [1 / 3, 1 / 3, 1 / 3]])
    batch = dict(_fusion_batch(), prior=jnp.asarray(prior + 7.0))  # a shift changes no log-softmax

    params = model.init(jax.random.key(0), batch)["params"]
    assert set(params) == {"fusion", "prior_log_scale"}  # "proto" is absent: no parameter for it
    assert float(params["prior_log_scale"]) == 0.0  # scale 1 at the start
    params = _with_bias(params)
    logits = lambda p, b: np.asarray(model.apply({"params": p}, b)["logits"])
    np.testing.assert_allclose(logits(params, batch), BIAS + lsm_prior, rtol=1e-5, atol=1e-5)
    params["prior_log_scale"] = np.float32(math.log(2))  # scale 2: the prior counts twice
    np.testing.assert_allclose(logits(params, batch), BIAS + 2 * lsm_prior, rtol=1e-5, atol=1e-5)
    # the prior missing from the batch adds nothing
    np.testing.assert_allclose(logits(params, _fusion_batch()), np.broadcast_to(BIAS, (2, 3)), rtol=1e-6)

    both = dict(batch, proto=jnp.asarray(proto))
    params = model.init(jax.random.key(0), both)["params"]
    assert set(params) == {"fusion", "prior_log_scale", "proto_log_scale"}
    params = _with_bias(params)
    params["proto_log_scale"] = np.float32(math.log(0.5))
    np.testing.assert_allclose(logits(params, both), BIAS + lsm_prior + 0.5 * lsm_proto, rtol=1e-5, atol=1e-5)
    assert set(model.init(jax.random.key(0), _fusion_batch())["params"]) == {"fusion"}


# -------------------------------------------------------------------------------------------------
# Ensemble vote, pooling, metrics and the raw-feature prototype baseline
# -------------------------------------------------------------------------------------------------

M1 = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])  # member probabilities, 2 observations x 3 classes
M2 = np.array([[0.2, 0.6, 0.2], [0.3, 0.4, 0.3]])
M3 = np.array([[0.2, 0.2, 0.6], [0.5, 0.25, 0.25]])


def test_weighted_vote_soft_by_hand():
    members = [np.log(M1) + 3.0, np.log(M2), np.log(M3) - 1.0]  # logits: shifts change no probability
    got = np.exp(obs.weighted_vote(members, [1, 2, 1]))
    # weights 1/4, 1/2, 1/4:
    #   obs 0: (.125 + .1 + .05, .075 + .3 + .05, .05 + .1 + .15) = (.275, .425, .3)
    #   obs 1: (.025 + .15 + .125, .025 + .2 + .0625, .2 + .15 + .0625) = (.3, .2875, .4125)
    np.testing.assert_allclose(got, [[0.275, 0.425, 0.3], [0.3, 0.2875, 0.4125]], rtol=1e-12)
    # no weights: the plain mean, (.3, .3667, .3333) and (.3, .25, .45)
    np.testing.assert_allclose(np.exp(obs.weighted_vote(members)),
                               [[0.9 / 3, 1.1 / 3, 1.0 / 3], [0.9 / 3, 0.75 / 3, 1.35 / 3]], rtol=1e-12)


def test_weighted_vote_hard_by_hand():
    members = [np.log(M1), np.log(M2), np.log(M3)]
    # weights 1/4, 1/4, 1/2. Top-1 of each member: obs 0 -> 0, 1, 2; obs 1 -> 2, 1, 0
    #   votes obs 0: (.25, .25, .5); obs 1: (.5, .25, .25)
    #   plus 1e-6 x the soft vote: obs 0 (.275, .325, .4), obs 1 (.35, .25, .4)
    got = obs.weighted_vote(members, [1, 1, 2], kind="hard")
    np.testing.assert_allclose(got, [[0.25 + 0.275e-6, 0.25 + 0.325e-6, 0.5 + 0.4e-6],
                                     [0.5 + 0.35e-6, 0.25 + 0.25e-6, 0.25 + 0.4e-6]], rtol=1e-12)
    assert np.argmax(got, 1).tolist() == [2, 0]  # obs 1: the vote wins where the soft score prefers class 2
    # a tie of votes (two members, equal weights: obs 0 -> 0 vs 1, obs 1 -> 2 vs 1) goes to the soft score:
    #   obs 0 soft (.35, .45, .2) -> 1; obs 1 soft (.2, .25, .55) -> 2
    tie = obs.weighted_vote(members[:2], None, kind="hard")
    np.testing.assert_allclose(tie, [[0.5 + 0.35e-6, 0.5 + 0.45e-6, 0.2e-6], [0.2e-6, 0.5 + 0.25e-6, 0.5 + 0.55e-6]],
                               rtol=1e-12)
    assert np.argmax(tie, 1).tolist() == [1, 2]


def test_pool_observations_mean_and_max_ignore_padding():
    p = np.array([[[0.6, 0.3, 0.1], [0.2, 0.5, 0.3], [0.1, 0.1, 0.8]],
                  [[0.2, 0.7, 0.1], [0.98, 0.01, 0.01], [0.98, 0.01, 0.01]]])  # obs 1: one image + padding
    mask = np.array([[True, True, True], [True, False, False]])
    logits = np.log(p) + np.array([[[1.0], [-2.0], [0.5]], [[0.0], [4.0], [4.0]]])  # per-image shifts
    mean = np.exp(obs.pool_observations(logits, mask, "mean"))
    np.testing.assert_allclose(mean, [[0.3, 0.3, 0.4], [0.2, 0.7, 0.1]], rtol=1e-9)  # (.9, .9, 1.2) / 3
    maxed = np.exp(obs.pool_observations(logits, mask, "max"))
    np.testing.assert_allclose(maxed, [[0.6 / 1.9, 0.5 / 1.9, 0.8 / 1.9], [0.2, 0.7, 0.1]], rtol=1e-9)


def test_observation_metrics_by_hand():
    scores = np.log(np.array([[0.5, 0.3, 0.2, 0.0 + 1e-9],
                              [0.1, 0.3, 0.2, 0.4],
                              [0.25, 0.25, 0.25, 0.25],   # a tie: the lower class id ranks first -> 0
                              [0.1, 0.6, 0.2, 0.1]]))
    labels = np.array([0, 2, 1, 1])
    m = obs.observation_metrics(scores, labels, ks=(1, 2, 3), poisonous_by_class=np.array([0, 1, 0, 0]))
    # Top-1 predictions (0, 3, 0, 1): right for obs 0 and 3 -> 1/2. Top-2: + obs 2 ((0, 1)) -> 3/4.
    # Top-3: + obs 1 ((3, 1, 2)) -> 1.
    assert (m["top1"], m["top2"], m["top3"]) == (0.5, 0.75, 1.0)
    # F1 over the labels' classes 0, 1, 2: class 0: tp 1, fp 1 -> 2/3; class 1: tp 1, fn 1 -> 2/3; class 2: 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 2 / 3 + 0) / 3)
    # poisonous class 1 called edible (obs 2 -> 0): 100 / 4
    assert m["poison_cost"] == pytest.approx(25.0) and m["num_observations"] == 4


def test_raw_prototype_baseline_by_hand():
    train = np.array([[2.0, 0.0], [0.0, 3.0], [3.0, 4.0]])  # unit: (1, 0), (0, 1), (.6, .8)
    labels = np.array([0, 0, 1])
    # P0 = (1, 1)/sqrt2, P1 = (.6, .8), class 2 has no image -> -1
    query = np.array([[[0.0, 5.0], [1.0, 0.0]]])  # [1 observation, 2 images, 2]
    got = obs.prototype_logits(query, train, labels, 3, scale=30.0)
    np.testing.assert_allclose(got, 30 * np.array([[[1 / R2, 0.8, -1], [1 / R2, 0.6, -1]]]), rtol=1e-5)
    nn = obs.nearest_neighbour_logits(query, train, labels, 3, scale=30.0)
    # nearest of class 0 is (0, 1) for (0, 5) and (1, 0) for (1, 0): cosine 1 both
    np.testing.assert_allclose(nn, 30 * np.array([[[1.0, 0.8, -1], [1.0, 0.6, -1]]]), rtol=1e-5)


# -------------------------------------------------------------------------------------------------
# The checkpoint / run ensemble's vote and score, and the paper preset's epochs
# -------------------------------------------------------------------------------------------------

def test_ensemble_vote_and_score_by_hand(tmp_path):
    import ml_collections

    from fungizsl.fungiclef import ensemble

    # val: obs A (images 0, 1; species 2), obs B (image 2; species 0); test: the same images, unlabelled
    groups = [[0, 1], [2, -1]]
    val = _split(np.zeros((3, 1, 1, 1)), [0, 0, 1], [2, 2, 0], [10, 11], groups)
    test = _split(np.zeros((3, 1, 1, 1)), [0, 0, 1], [-1, -1, -1], [77, 78], groups)
    data = _full({"val": val, "test": test}, num_classes=3, poisonous=np.array([1, 0, 0]))
    pad = [0.9, 0.05, 0.05]  # the padded slot of obs B: never counts
    m1 = np.log([[[0.6, 0.3, 0.1], [0.2, 0.2, 0.6]], [[0.1, 0.8, 0.1], pad]])  # pooled: A (.4, .25, .35), B (.1, .8, .1)
    m2 = np.log([[[0.1, 0.2, 0.7], [0.1, 0.4, 0.5]], [[0.5, 0.3, 0.2], pad]])  # pooled: A (.1, .3, .6), B (.5, .3, .2)
    config = ml_collections.ConfigDict({"evals": {"fungiclef": {"pooling": "mean"}}})
    members = {"val": [m1, m2], "test": [m1, m2]}

    out = ensemble.vote_and_score(config, data, members, (3, 1), "soft", tmp_path / "soft.csv")
    # weights .75, .25: A .75 (.4, .25, .35) + .25 (.1, .3, .6) = (.325, .2625, .4125) -> 2, 0, 1 (right)
    #                   B .75 (.1, .8, .1) + .25 (.5, .3, .2) = (.2, .675, .125) -> 1, 0, 2 (species 0 second)
    # Top-1 1/2, Top-5 1; F1 of species 2: 1, of species 0: 0 -> 1/2; B poisonous called edible: 100 / 2
    assert set(out) == {"val"}  # the test split has no labels: only its submission
    assert out["val"] == pytest.approx({"top1": 0.5, "top5": 1.0, "top10": 1.0, "macro_f1": 0.5, "poison_cost": 50.0,
                                        "num_observations": 2})
    assert (tmp_path / "soft.csv").read_text().splitlines() == ["observationId,predictions", "77,2 0 1", "78,1 0 2"]

    out = ensemble.vote_and_score(config, data, members, (3, 1), "hard", tmp_path / "hard.csv")
    # Top-1 of each member: A: m1 -> 0 (.75 of the votes), m2 -> 2 (.25); B: m1 -> 1 (.75), m2 -> 0 (.25)
    # -> A called 0 (wrong; edible called poisonous: 1), B called 1 (poisonous called edible: 100)
    assert out["val"]["top1"] == 0.0 and out["val"]["poison_cost"] == pytest.approx(101 / 2)
    assert (tmp_path / "hard.csv").read_text().splitlines() == ["observationId,predictions", "77,0 2 1", "78,1 0 2"]


def test_epochs_to_steps_by_hand():
    from fungizsl.fungiclef import ensemble

    labels = np.array([2, 0, 2, 1, 2, 3, 1, 2, 3, 2, 1, 2])  # 1, 3, 6 and 2 instances
    # a sampler epoch: every class once, max(min(n, 4), 2) rows each: 2 + 3 + 4 + 2
    assert ensemble.sampler_epoch_rows(labels, 4, 2) == 11
    assert ensemble.sampler_epoch_rows(labels, 2, 1) == 1 + 2 + 2 + 2
    assert ensemble.epoch_steps(100, 11, 4) == 275  # 1100 rows / 4
    assert ensemble.epoch_steps(1, 11, 4) == 3  # 2.75 -> 3
    assert ensemble.epoch_steps(0.01, 11, 4) == 1  # at least one step
    # the real training set (ensemble.py): 6,872 sampler rows and 7,819 images an epoch, batch 1024
    assert ensemble.epoch_steps(100, 6872, 1024) == 672  # 671.09 -> 672
    assert [ensemble.epoch_steps(e, 7819, 1024) for e in (50, 100, 150)] == [382, 764, 1146]
