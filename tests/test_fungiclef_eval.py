"""Per-observation FungiCLEF metrics on hand-checked examples, ensembles and the submission CSV."""

import numpy as np
import pytest

from fungizsl.evaluate import decisions
from fungizsl.evaluate import observations as obs
from fungizsl.evaluate.registry import make_evaluator


def _hand_example():
    # 3 observations, up to 2 images, 4 classes. Log-probabilities written by hand.
    p = np.full((3, 2, 4), 1e-9)  # padding slots and "zero" entries: tiny, never exactly 0
    p[0, 0] = [0.7, 0.2, 0.1, 1e-9]  # obs 0, label 1: image 0 says 0 ...
    p[0, 1] = [0.1, 0.8, 0.1, 1e-9]  # ... image 1 says 1 firmly: mean -> 1 (0.5 vs 0.4)
    p[1, 0] = [0.1, 0.1, 0.2, 0.6]  # obs 1, one image, label 2: 2nd best
    p[2, 0] = [0.4, 0.3, 0.2, 0.1]  # obs 2, label 3: last
    p[2, 1] = [0.3, 0.4, 0.2, 0.1]
    mask = np.array([[True, True], [True, False], [True, True]])
    return np.log(p), mask, np.array([1, 2, 3])


def test_top_k_per_observation_by_hand():
    logits, mask, labels = _hand_example()
    scores = obs.pool_observations(logits, mask, "mean")
    np.testing.assert_allclose(np.exp(scores[0]), [0.4, 0.5, 0.1, 0.0], atol=1e-6)
    m = obs.observation_metrics(scores, labels, ks=(1, 2, 4))
    assert m["top1"] == pytest.approx(1 / 3)  # only obs 0
    assert m["top2"] == pytest.approx(2 / 3)  # + obs 1
    assert m["top4"] == 1.0
    # macro-F1 over the labels' classes {1, 2, 3}: class 1 predicted once correctly (F1 = 1).
    assert m["macro_f1"] == pytest.approx(1 / 3)
    # The padded image of obs 1 (all 1e-9) must not count: max pooling gives the same top-1.
    maxed = obs.pool_observations(logits, mask, "max")
    assert obs.top_k(maxed, 1)[:, 0].tolist() == [1, 3, 0]


def test_attention_pooling_favours_the_confident_image():
    """Image weight = softmax over the observation's images of max_c log p / T, i.e. proportional
    to (max_c p)^(1/T)."""
    logits, mask, _ = _hand_example()
    att = np.exp(obs.pool_observations(logits, mask, "attention"))
    # obs 0: weights (.7, .8) / 1.5 -> (.7 (.7, .2, .1) + .8 (.1, .8, .1)) / 1.5 = (.57, .78, .15) / 1.5
    # obs 1: its one image (the padded slot has no weight); obs 2: equal confidence .4 -> the mean
    np.testing.assert_allclose(att[:, :3], [[0.38, 0.52, 0.1], [0.1, 0.1, 0.2], [0.35, 0.35, 0.2]], atol=1e-6)
    np.testing.assert_allclose(att[:, 3], [0, 0.6, 0.1], atol=1e-6)
    # T = 0.5 squares the confidences: weights (.49, .64) / 1.13
    sharp = np.exp(obs.pool_observations(logits, mask, "attention", temperature=0.5))
    np.testing.assert_allclose(sharp[0, :3], [(0.49 * 0.7 + 0.64 * 0.1) / 1.13, (0.49 * 0.2 + 0.64 * 0.8) / 1.13,
                                              (0.49 * 0.1 + 0.64 * 0.1) / 1.13], atol=1e-6)


def test_poison_cost_by_hand():
    poisonous = np.array([1, 0, 0, -1])
    labels = np.array([0, 1, 1, 2, 3])
    pred = np.array([1, 0, 1, 3, 0])  # poison->edible (100), edible->poison (1), ok, unknown, unknown
    assert decisions.poison_costs(labels, pred, poisonous) == {
        "poison_cost": pytest.approx(101 / 5), "poisonous_as_edible": 1, "edible_as_poisonous": 1}


def test_poison_cost_unknown_flags_cost_nothing_and_still_count_in_n():
    """The one rule (`decisions.poison_costs`): a pair whose true or predicted species has an
    unknown flag (-1) adds to neither count; N stays every observation. A bool table has no
    unknowns (False = edible)."""
    flags = np.array([1, 0, -1])  # class 0 poisonous, 1 edible, 2 unknown
    labels = np.array([0, 0, 2, 2, 1, 1])
    pred = np.array([2, 1, 0, 1, 0, 2])
    # 0->2 unknown: 0; 0->1 poisonous called edible: 100; 2->0, 2->1 unknown truth: 0;
    # 1->0 edible called poisonous: 1; 1->2 unknown: 0  -> (100 + 1) / 6
    got = decisions.poison_costs(labels, pred, flags)
    assert got == {"poison_cost": pytest.approx(101 / 6), "poisonous_as_edible": 1, "edible_as_poisonous": 1}
    # the same table as bools (unknown read as edible) counts 0->2 as poisonous called edible and
    # 2->0 as edible called poisonous: (200 + 2) / 6
    as_bool = decisions.poison_costs(labels, pred, flags == 1)
    assert as_bool == {"poison_cost": pytest.approx(202 / 6), "poisonous_as_edible": 2, "edible_as_poisonous": 2}
    # other weights: 10 x 1 + 2 x 1 over 6
    assert decisions.poison_costs(labels, pred, flags, 10.0, 2.0)["poison_cost"] == pytest.approx(12 / 6)
    # the trainers' metric and the decision metrics report the same number
    scores = np.full((6, 3), -5.0)
    scores[np.arange(6), pred] = 0.0
    assert obs.observation_metrics(scores, labels, (1,), flags)["poison_cost"] == pytest.approx(101 / 6)
    argmax = decisions.realised_costs(labels, pred, flags)
    assert argmax["poison_cost"] == pytest.approx(101 / 6) and argmax["total_cost"] == pytest.approx(101 / 6 + 1.0)
    assert (argmax["poisonous_as_edible"], argmax["edible_as_poisonous"], argmax["accuracy"]) == (1, 1, 0.0)


def test_decision_rule_takes_an_unknown_flag_as_edible():
    """P(poisonous) = 0.05 (class 0 only; class 2's flag is unknown, so it adds nothing).
    E[0] = 0.95 + 1 x 0.95 = 1.9, E[1] = 0.55 + 100 x 0.05 = 5.55, E[2] = 0.5 + 5 = 5.5 -> class 0.
    Were class 2 poisonous, P = 0.55 and E[2] = 0.5 + 0.45 = 0.95 would win."""
    probs = np.array([[0.05, 0.45, 0.5]])
    np.testing.assert_allclose(decisions.expected_costs(probs, np.array([1, 0, -1])), [[1.9, 5.55, 5.5]])
    assert decisions.decide(probs, np.array([1, 0, -1])).tolist() == [0]
    assert decisions.decide(probs, np.array([True, False, False])).tolist() == [0]
    assert decisions.decide(probs, np.array([1, 0, 1])).tolist() == [2]


def test_ensemble_voting():
    a = np.log(np.array([[0.6, 0.3, 0.1], [0.2, 0.5, 0.3]]))
    b = np.log(np.array([[0.1, 0.8, 0.1], [0.2, 0.3, 0.5]]))
    soft = np.exp(obs.weighted_vote([a, b], [3, 1]))
    np.testing.assert_allclose(soft[0], 0.75 * np.exp(a[0]) + 0.25 * np.exp(b[0]), rtol=1e-9)
    hard = obs.weighted_vote([a, b], [3, 1], kind="hard")
    assert np.argmax(hard, 1).tolist() == [0, 1]  # the heavier member wins both votes
    hard_equal = obs.weighted_vote([a, b, b], None, kind="hard")
    assert np.argmax(hard_equal, 1).tolist() == [1, 2]  # two of three members
    with pytest.raises(ValueError, match="weights"):
        obs.weighted_vote([a, b], [1, -1])


def test_submission_format(tmp_path):
    scores = np.arange(24, dtype=float).reshape(2, 12)
    scores[1] = scores[1][::-1]
    path = obs.write_submission(tmp_path / "sub.csv", [555, 777], scores, class_ids=np.arange(12) + 100)
    lines = open(path).read().splitlines()
    assert lines[0] == "observationId,predictions"
    assert lines[1] == "555," + " ".join(str(100 + c) for c in range(11, 1, -1))
    assert lines[2] == "777," + " ".join(str(100 + c) for c in range(10))
    assert obs.read_submission(path)[777][:3] == [100, 101, 102]
    with pytest.raises(ValueError, match="repeat"):
        obs.write_submission(tmp_path / "bad.csv", [1, 1], scores)


def test_submission_is_written_by_process_0_alone_through_the_write_audit(tmp_path, monkeypatch):
    """Every process calls write_submission (each holds the gathered scores); process 0 writes the
    file and the workdir audit records it; any other process writes and records nothing."""
    import jax

    from fungizsl import workdir

    scores = np.arange(24, dtype=float).reshape(2, 12)
    monkeypatch.setattr(workdir, "WRITES", [])
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    obs.write_submission(tmp_path / "other.csv", [555, 777], scores)
    assert not (tmp_path / "other.csv").exists() and workdir.WRITES == []
    monkeypatch.setattr(jax, "process_index", lambda: 0)
    path = obs.write_submission(tmp_path / "main.csv", [555, 777], scores)
    assert workdir.WRITES == [str(tmp_path / "main.csv")] == [path]
    assert open(path).read().splitlines()[1] == "555," + " ".join(str(c) for c in range(11, 1, -1))


def test_baselines_and_evaluator(tmp_path):
    rng = np.random.RandomState(0)
    centres = rng.randn(5, 16)
    train = np.repeat(centres, 2, 0) + 0.05 * rng.randn(10, 16)
    train_labels = np.repeat(np.arange(5), 2)
    query = centres[[3, 1]][:, None] + 0.05 * rng.randn(2, 2, 16)
    mask = np.array([[True, True], [True, False]])
    for fn in (obs.nearest_neighbour_logits, obs.prototype_logits):
        pooled = obs.pool_observations(fn(query, train, train_labels, 6), mask)
        assert obs.top_k(pooled, 1)[:, 0].tolist() == [3, 1]
    ev = make_evaluator("fc", dict(type="fungiclef_observations", ks=(1, 5),
                                   submission_path=str(tmp_path / "s.csv")))
    logits = obs.prototype_logits(query, train, train_labels, 6)
    out = dict(ev.run(logits=logits, image_mask=mask, labels=np.array([3, 0]), observation_ids=[10, 11],
                      poisonous_by_class=np.array([1, 0, 0, 0, 0, 0]), raw_features=query,
                      train_raw_features=train, train_raw_labels=train_labels,
                      metadata_scores=np.zeros((2, 6))))
    assert out["top1"] == 0.5 and out["poison_cost"] == pytest.approx(50.0)
    assert out["baselines/prototype/top1"] == 0.5 and "pooling/attention/top5" in out
    assert set(obs.read_submission(tmp_path / "s.csv")) == {10, 11}
