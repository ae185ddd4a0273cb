"""Taxonomy, CHiLS, descriptions, open-set and decision modes on small cases worked out by hand."""

import json
import math

import numpy as np
import pytest

from fungizsl.evaluate import registry
from fungizsl.evaluate import decisions, descriptions, openset, taxonomy

# ------------------------------------------------------------------------------ taxonomy

GBIF_CSV = """label,id,label,gbif_info/kingdom,gbif_info/phylum,gbif_info/class,gbif_info/order,gbif_info/family,gbif_info/genus,gbif_info/species
Amanita muscaria,1,x,Fungi,Basidiomycota,Agaricomycetes,Agaricales,Amanitaceae,Amanita,Amanita muscaria
Amanita muscaria,2,x,Fungi,Basidiomycota,Agaricomycetes,Agaricales,Amanitaceae,Amanita,Amanita muscaria
Amanita phalloides,3,x,Fungi,Basidiomycota,Agaricomycetes,Agaricales,Amanitaceae,Amanita,Amanita phalloides
Boletus edulis,4,x,Fungi,Basidiomycota,Agaricomycetes,Boletales,Boletaceae,Boletus,Boletus edulis
Agaricales,5,x,Fungi,Basidiomycota,Agaricomycetes,Agaricales,,,
"""


@pytest.fixture
def gbif_taxonomy(tmp_path):
    path = tmp_path / "images.csv"
    path.write_text(GBIF_CSV)
    return taxonomy.Taxonomy.from_csv(path)


def test_taxonomy_from_gbif_csv_keeps_first_label_column_and_blanks(gbif_taxonomy):
    t = gbif_taxonomy
    assert t.classes == ("Agaricales", "Amanita muscaria", "Amanita phalloides", "Boletus edulis")
    assert t.lineage(1) == ["Fungi", "Basidiomycota", "Agaricomycetes", "Agaricales", "Amanitaceae",
                            "Amanita", "Amanita muscaria"]
    assert t.lineage_prompt(1) == ("a photo of Fungi Basidiomycota Agaricomycetes Agaricales Amanitaceae "
                                   "Amanita Amanita muscaria, the fly agaric.")
    assert t.lineage_prompt(0, with_common_name=False) == "a photo of Fungi Basidiomycota Agaricomycetes Agaricales."
    names, class_to_group, named = t.rank_groups("genus")
    assert names == ["Amanita", "Boletus", "[Agaricales]"]  # the order-only class: its own group
    np.testing.assert_array_equal(class_to_group, [2, 0, 0, 1])
    np.testing.assert_array_equal(named, [True, True, False])


def test_taxonomy_from_fungiclef_style_csv_and_json_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("species,kingdom,phylum,class,order,family,genus,category_id\n"
                    "Amanita muscaria,Fungi,Basidiomycota,Agaricomycetes,Agaricales,Amanitaceae,Amanita,3\n"
                    "Morchella esculenta,Fungi,Ascomycota,Pezizomycetes,Pezizales,Morchellaceae,Morchella,7\n")
    t = taxonomy.Taxonomy.from_csv(path, class_column="category_id", classes=["7", "3"])
    assert t.lineage(0)[1] == "Ascomycota" and t.lineage(1)[-1] == "Amanita muscaria"
    assert t.common_name(0) == "morel"
    file = tmp_path / "tax.json"
    file.write_text(json.dumps({"spore": {"kingdom": "Fungi", "common_name": "a fungal spore"},
                                "hyphae": {"kingdom": "Fungi"}}))
    t = taxonomy.Taxonomy.from_file(file)
    assert t.classes == ("hyphae", "spore")
    assert t.lineage_prompt(1) == "a photo of Fungi, the a fungal spore."
    with pytest.raises(ValueError, match="no taxonomy columns"):
        bad = tmp_path / "bad.csv"
        bad.write_text("a,b\n1,2\n")
        taxonomy.Taxonomy.from_csv(bad)


def test_rank_summing_beats_argmax_mapping_by_hand():
    # Species A1, A2 (genus A) and B1 (genus B). Probabilities 0.3, 0.3, 0.4: the top species is
    # B1, but genus A holds 0.6. The true species is A2.
    t = taxonomy.Taxonomy(("A1", "A2", "B1"), tuple({"genus": g, "species": s}
                                                    for g, s in (("A", "A1"), ("A", "A2"), ("B", "B1"))))
    probs = np.array([[0.3, 0.3, 0.4]])
    names, class_to_group, _ = t.rank_groups("genus")
    np.testing.assert_allclose(taxonomy.rank_probabilities(probs, class_to_group, len(names)), [[0.6, 0.4]])
    acc = taxonomy.rank_accuracy(probs, [1], t, ["genus", "species"], ks=(1, 2))
    assert acc["genus"] == {"num_images": 1, "num_groups": 2, "top1": 1.0, "top2": 1.0, "top1_from_argmax": 0.0}
    # Species order B1 (0.4), then A1 and A2 tied at 0.3: the tie goes to A1 (lower index).
    assert acc["species"]["top1"] == 0.0 and acc["species"]["top2"] == 0.0


def test_rank_accuracy_leaves_out_images_without_that_rank(gbif_taxonomy):
    probs = np.eye(4)[[0, 1, 3]]  # perfect predictions for Agaricales, A. muscaria, B. edulis
    acc = taxonomy.rank_accuracy(probs, [0, 1, 3], gbif_taxonomy, ["order", "genus"], ks=(1,))
    assert acc["order"]["num_images"] == 3 and acc["order"]["top1"] == 1.0
    assert acc["genus"]["num_images"] == 2 and acc["genus"]["top1"] == 1.0


def test_chils_plain_and_reweighted_rules_by_hand():
    # Parent 0 has subclasses s0, s1; parent 1 has s2.
    sub_to_parent = [0, 0, 1]
    sub_logits = np.array([[2.0, 0.0, 1.5],     # plain: max(2, 0)=2 > 1.5 -> parent 0
                           [0.0, 1.0, 3.0]])    # every rule -> parent 1
    parent_logits = np.array([[0.0, 3.0], [0.0, 2.0]])
    plain, scores = taxonomy.chils_predict(sub_logits, sub_to_parent, 2, rule="plain")
    np.testing.assert_array_equal(plain, [0, 1])
    np.testing.assert_allclose(scores[0], [2.0, 1.5])
    # Reweighted, image 0: softmax(sub) = (7.389, 1, 4.482) / 12.871 = (0.5741, 0.0777, 0.3482);
    # softmax(parent) = (0.0474, 0.9526); products 0.0272, 0.0037, 0.3317 -> parent 1.
    reweighted, scores = taxonomy.chils_predict(sub_logits, sub_to_parent, 2, parent_logits, rule="reweighted")
    np.testing.assert_array_equal(reweighted, [1, 1])
    np.testing.assert_allclose(scores[0], [0.5741 * 0.04743, 0.3482 * 0.95257], rtol=2e-3)
    metrics = dict(registry.make_evaluator("chils").run(sub_logits=sub_logits, sub_to_parent=sub_to_parent,
                                                        parent_logits=parent_logits, image_labels=[0, 1]))
    assert metrics == {"superclass_prompts/accuracy": 0.5, "plain/accuracy": 1.0, "reweighted/accuracy": 0.5}
    with pytest.raises(ValueError, match="have no subclass"):
        taxonomy.chils_predict(sub_logits, [0, 0, 0], 2)


def test_taxonomy_evaluator_yields_rank_metrics():
    t = taxonomy.Taxonomy(("A1", "A2", "B1"), tuple({"genus": g, "species": s}
                                                    for g, s in (("A", "A1"), ("A", "A2"), ("B", "B1"))))
    logits = np.log(np.array([[0.3, 0.3, 0.4], [0.1, 0.1, 0.8]]))
    m = dict(registry.make_evaluator("taxonomy", {"ks": (1,)}).run(logits=logits, image_labels=[1, 2], taxonomy=t))
    assert m["genus/top1"] == 1.0 and m["species/top1"] == 0.5 and m["genus/top1_from_argmax"] == 0.5


# ------------------------------------------------------------------------------ descriptions


def test_mean_similarity_and_mean_embedding_differ_by_the_norm_of_the_mean():
    # Class 0's two descriptors point apart (mean norm cos 45deg = 0.707); class 1's agree.
    s = math.sqrt(0.5)
    desc = [np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), np.array([[s, 0.0, s], [s, 0.0, s]])]
    z = np.array([[0.6, 0.6, 0.5292]])  # unit vector
    sim = descriptions.mean_similarity_scores(z, desc)
    emb = descriptions.mean_embedding_scores(z, desc)
    np.testing.assert_allclose(sim, [[0.6, (0.6 + 0.5292) * s]], atol=1e-4)    # 0.6 vs 0.798
    np.testing.assert_allclose(emb, [[0.6 / s, (0.6 + 0.5292) * s]], atol=1e-4)  # 0.849 vs 0.798
    assert sim.argmax() == 1 and emb.argmax() == 0
    m = dict(registry.make_evaluator("descriptions").run(zimg=z, descriptor_embeddings=desc, image_labels=[0],
                                                         prompt_embeddings=[np.eye(3)[:1], np.eye(3)[2:]]))
    assert m["mean_similarity/accuracy"] == 0.0 and m["mean_embedding/accuracy"] == 1.0
    assert m["prompts/accuracy"] == 1.0  # e0 vs e2: 0.6 > 0.5292 -> class 0


def test_descriptors_by_class_templates_and_errors(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"class": "spore", "text": "round cells"}\n{"class": "hyphae", "text": "thin threads"}\n')
    d = descriptions.descriptors_by_class(str(path), ["hyphae", "spore"], template="{cls}, which has {text}")
    assert d == {"hyphae": ["hyphae, which has thin threads"], "spore": ["spore, which has round cells"]}
    with pytest.raises(ValueError, match="mycelium"):
        descriptions.descriptors_by_class(str(path), ["mycelium"])


# ------------------------------------------------------------------------------ open-set


def test_auroc_and_tnr_by_hand():
    known, unknown = [0.9, 0.8, 0.4], [0.8, 0.3]
    # Pairs (known > unknown): 0.9>0.8, 0.9>0.3, 0.8=0.8 (1/2), 0.8>0.3, 0.4<0.8, 0.4>0.3 -> 4.5 / 6.
    assert openset.auroc(known, unknown) == pytest.approx(0.75)
    assert openset.threshold_at_tpr(known, 0.95) == 0.4        # keeps all 3 knowns
    assert openset.tnr_at_tpr(known, unknown, 0.95) == 0.5     # rejects 0.3, not 0.8
    assert openset.threshold_at_tpr(known, 0.5) == 0.8         # 2 of 3 knowns >= 0.8
    assert openset.tnr_at_tpr(known, unknown, 0.3) == 1.0      # t = 0.9 rejects both
    assert openset.auroc([1, 2], [3, 4]) == 0.0 and openset.auroc([3, 4], [1, 2]) == 1.0


def test_auroc_matches_pairwise_count_with_ties():
    rng = np.random.default_rng(0)
    known, unknown = rng.integers(0, 5, 40), rng.integers(0, 4, 30)
    pairs = (known[:, None] > unknown[None, :]).mean() + 0.5 * (known[:, None] == unknown[None, :]).mean()
    assert openset.auroc(known, unknown) == pytest.approx(pairs)


def test_known_scores():
    logits = np.array([[0.0, 0.0], [10.0, 0.0]])
    np.testing.assert_allclose(openset.known_score(logits, "msp"), [0.5, 1 / (1 + math.exp(-10))])
    np.testing.assert_allclose(openset.known_score(logits, "entropy")[0], -math.log(2))
    np.testing.assert_allclose(openset.known_score(logits, "energy")[0], math.log(2))
    np.testing.assert_allclose(openset.known_score(logits, "energy", temperature=2.0)[0], 2 * math.log(2))


def test_fungiclef2023_cost_and_unknown_predictions():
    y = [0, 1, -1, -1, 2]
    p = [0, 2, 1, -1, -1]  # right, wrong known (1), unknown as known (10), right, known as unknown (0.1)
    assert openset.classification_cost(y, p) == pytest.approx(11.1 / 5)
    logits = np.array([[5.0, 0.0], [0.1, 0.0]])
    np.testing.assert_array_equal(openset.predict_with_unknown(logits, 0.9), [0, -1])


def test_holdout_split_and_evaluator():
    known, unknown = openset.hold_out_classes(5, 2, seed=3)
    assert len(known) == 3 and len(unknown) == 2 and not set(known) & set(unknown)
    assert (openset.hold_out_classes(5, 2, seed=3)[1] == unknown).all()
    labels = np.array([0, 1, 2, 3, 4])
    remapped = openset.open_set_labels(labels, known)
    assert sorted(remapped[remapped >= 0].tolist()) == [0, 1, 2] and (remapped < 0).sum() == 2
    logits = np.array([[4.0, 0, 0], [0, 4.0, 0], [0, 0, 0.1], [0.1, 0, 0]])
    m = dict(registry.make_evaluator("openset", {"tpr": 0.5}).run(logits=logits, image_labels=[0, 1, -1, -1]))
    assert m["msp/auroc"] == 1.0 and m["msp/tnr@0.5"] == 1.0 and m["msp/cost"] == 0.0
    assert m["closed_set/cost"] == pytest.approx(20 / 4)  # two unknowns answered as known species
    with pytest.raises(ValueError, match="known and unknown"):
        list(registry.make_evaluator("openset").run(logits=logits, image_labels=[0, 1, 0, 1]))


# ------------------------------------------------------------------------------ decisions


def test_expected_cost_decision_picks_poisonous_over_likelier_edible():
    # Classes: 0 edible (p=0.5), 1 edible (0.3), 2 poisonous (0.2). Expected costs:
    # answer 0: 1*(1-0.5) + 100*0.2 = 20.5;  answer 1: 0.7 + 20 = 20.7;  answer 2: 0.8 + 1*0.8 = 1.6.
    probs = np.array([[0.5, 0.3, 0.2]] * 2)
    poisonous = [False, False, True]
    np.testing.assert_allclose(decisions.expected_costs(probs, poisonous)[0], [20.5, 20.7, 1.6])
    assert np.argmax(probs[0]) == 0 and decisions.decide(probs, poisonous)[0] == 2
    m = decisions.decision_metrics(probs, [0, 2], poisonous)  # one edible truth, one poisonous
    assert m["argmax"] == {"accuracy": 0.5, "poison_cost": 50.0, "total_cost": 50.5,
                           "poisonous_as_edible": 1, "edible_as_poisonous": 0}
    assert m["expected_cost"] == {"accuracy": 0.5, "poison_cost": 0.5, "total_cost": 1.0,
                                  "poisonous_as_edible": 0, "edible_as_poisonous": 1}
    # With poisoning as cheap as a wrong species, argmax is the expected-cost answer again.
    cheap = {"poisonous_as_edible": 1.0}
    assert decisions.decide(probs, poisonous, cheap)[0] == 0
    with pytest.raises(ValueError, match="unknown cost keys"):
        decisions.decide(probs, poisonous, {"poison": 3})


def test_decision_evaluator_skips_unknown_labels():
    logits = np.log(np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]]))
    m = dict(registry.make_evaluator("decisions", {"costs": {"poisonous_as_edible": 100}}).run(
        logits=logits, image_labels=[0, 2, -1], poisonous=[False, False, True]))
    assert m["num_images"] == 2
    assert m["argmax/accuracy"] == 1.0 and m["expected_cost/accuracy"] == 0.5


# ------------------------------------------------------------------------------ calibration


def test_temperature_fit_matches_the_closed_form_and_a_grid():
    from fungizsl.evaluate import calibration

    # Two classes, logits (2, 0) everywhere, class 0 true 3 times out of 4: the NLL is least where
    # softmax(2/T, 0) gives class 0 probability 3/4, i.e. 2/T = ln 3.
    z, y = np.array([[2.0, 0.0]] * 4), np.array([0, 0, 0, 1])
    assert calibration.fit_temperature(z, y) == pytest.approx(2 / np.log(3), rel=1e-9)
    assert calibration.nll(z, y, 2 / np.log(3)) == pytest.approx(-(0.75 * np.log(0.75) + 0.25 * np.log(0.25)))
    # a noisy 7-class problem: the fit is the minimum of a fine grid of T
    rng = np.random.RandomState(0)
    z = 3 * rng.randn(200, 7)
    y = np.argmax(z + 3 * rng.randn(200, 7), -1)
    t = calibration.fit_temperature(z, y)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    best = grid[np.argmin([calibration.nll(z, y, g) for g in grid])]
    assert t == pytest.approx(best, rel=2e-3) and t > 1  # noisy labels: the logits were over-confident
    assert calibration.nll(z, y, t) <= min(calibration.nll(z, y, g) for g in grid) + 1e-12
    # every argmax right: the sharpest allowed temperature; labels against the logits: the flattest
    assert calibration.fit_temperature(z, np.argmax(z, -1)) == calibration.TEMPERATURE_RANGE[0]
    assert calibration.fit_temperature(z, np.argmin(z, -1)) == calibration.TEMPERATURE_RANGE[1]
    with pytest.raises(ValueError, match="labels must lie in 0..6"):
        calibration.fit_temperature(z, y + 7)


def test_expected_calibration_error_by_hand():
    from fungizsl.evaluate import calibration

    # 0.9 right (bin 14 of 15: |1 - 0.9|), 0.6 wrong (bin 9: |0 - 0.6|); each half of the images
    assert calibration.expected_calibration_error([[0.9, 0.1], [0.6, 0.4]], [0, 1]) == pytest.approx(0.35)
    assert calibration.expected_calibration_error([[0.5, 0.5]] * 2, [0, 1]) == pytest.approx(0.0)


def test_decisions_on_calibrated_probabilities_catch_what_an_overconfident_model_hides():
    # Classes 0 edible, 1 poisonous, 2 edible. Held-out scores: logits (6, 0, 0), truth 0 eight times,
    # 1 once, 2 once: the NLL-optimal temperature gives class 0 0.8, so e^(6/T) = 8, T = 6 / ln 8.
    poisonous = [False, True, False]
    fit_logits = np.array([[6.0, 0.0, 0.0]] * 10)
    fit_labels = np.array([0] * 8 + [1, 2])
    # Evaluated: one observation with the same logits, truly poisonous. Raw: P(1) = 1/(e^6 + 2)
    # = 0.25 % < 1/101, so the rule answers 0 (cost 100). Calibrated: P(1) = 0.1, E[answer 0] =
    # 0.2 + 100 * 0.1 = 10.2 > E[answer 1] = 0.9 + 0.9 = 1.8, so it answers 1 (right).
    m = dict(registry.make_evaluator("decisions", {}).run(
        logits=np.array([[6.0, 0.0, 0.0]]), image_labels=[1], poisonous=poisonous,
        calibration_logits=fit_logits, calibration_labels=fit_labels))
    assert m["calibration/temperature"] == pytest.approx(6 / np.log(8), rel=1e-9)
    assert m["calibration/num_fit"] == 10
    assert m["expected_cost/poisonous_as_edible"] == 1 and m["expected_cost/total_cost"] == pytest.approx(101.0)
    assert m["expected_cost_calibrated/accuracy"] == 1.0 and m["expected_cost_calibrated/total_cost"] == 0.0
    assert m["calibration/ece_before"] == pytest.approx(np.exp(6) / (np.exp(6) + 2))  # confident and wrong
    assert m["calibration/ece_after"] == pytest.approx(0.8)
    assert m["calibration/nll_before"] == pytest.approx(np.log(np.exp(6) + 2))
    assert m["calibration/nll_after"] == pytest.approx(-np.log(0.1))
    assert m["calibration/p_poisonous_on_poisonous_after"] == pytest.approx(0.1)
    assert m["calibration/fit_nll_after"] < m["calibration/fit_nll_before"]
    # "none", or no held-out scores to fit on: the calibrated rule is not reported
    none = dict(registry.make_evaluator("decisions", {"calibrate": "none"}).run(
        logits=np.array([[6.0, 0.0, 0.0]]), image_labels=[1], poisonous=poisonous,
        calibration_logits=fit_logits, calibration_labels=fit_labels))
    unfit = dict(registry.make_evaluator("decisions", {}).run(
        logits=np.array([[6.0, 0.0, 0.0]]), image_labels=[1], poisonous=poisonous))
    for got in (none, unfit):
        assert not any(k.startswith(("calibration/", "expected_cost_calibrated/")) for k in got)
    with pytest.raises(ValueError, match="config.evals.decisions.calibrate must be one of"):
        registry.make_evaluator("decisions", {"calibrate": "platt"})
