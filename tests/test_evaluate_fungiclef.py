"""Evaluation-only runs of trained FungiCLEF models (`configs/evaluate.py:model=RUN,fungiclef=CSV`):
a tiny metadata-only run and the session's shared full-system run evaluated through the config
reproduce their own summaries, whose numbers are first worked out by hand from the runs'
submissions (and the calibration's from its definition), a hand-checked case of the numbers the
summary holds, and the error messages."""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import fungiclef_runs
import trainer_runs
from configs import evaluate as evaluate_config
from fungizsl import cpu_devices
from fungizsl.errors import ConfigError
from fungizsl.fungiclef import evaluate as fe
from fungizsl.fungiclef import scoring, tables

COLUMNS = ("filename,observationID,category_id,year,month,day,habitat,substrate,metaSubstrate,landcover,region,"
           "district,biogeographicalRegion,countryCode,latitude,longitude,elevation,kingdom,phylum,class,order,"
           "family,genus,species,poisonous").split(",")
HEADLINE = ("top1", "top5", "top10", "macro_f1", "poison_cost", "num_observations")


def _rows(seed: int, years, n_classes: int = 24) -> list[dict]:
    """Observations of `n_classes` species (4 per genus, 2 genera per family, genus 0 poisonous)
    whose habitat, substrate and place depend on the species, with some noise."""
    rng = np.random.RandomState(seed)
    rows = []
    for c in range(n_classes):
        genus, family = c // 4, c // 8
        for k in range(1 + (c + seed) % 3):
            obs = 100_000 * (seed + 1) + 10 * c + k
            for image in range(1 + (c + k) % 2):
                rows.append({
                    "filename": f"{image}-{obs}.JPG", "observationID": obs, "category_id": c,
                    "year": years[(c + k) % len(years)], "month": 1 + (c + rng.randint(2)) % 12, "day": 3,
                    "habitat": f"habitat {c % 6}", "substrate": f"substrate {(c + rng.randint(2)) % 8}",
                    "metaSubstrate": "wood", "landcover": "", "region": f"R{c % 4}", "district": f"D{c % 5}",
                    "biogeographicalRegion": "continental", "countryCode": "DK", "latitude": 55 + 0.05 * c,
                    "longitude": 10.5, "elevation": 20, "kingdom": "Fungi", "phylum": "Basidiomycota",
                    "class": "Agaricomycetes", "order": "Agaricales", "family": f"Family{family}",
                    "genus": f"Genus{genus}", "species": f"Genus{genus} species{c}", "poisonous": int(genus == 0)})
    return rows


def _write_csv(path, rows, columns=COLUMNS):
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def run_main(config_arg, workdir, *flags):
    env = dict(cpu_devices.simulated_env(os.environ, 1), PYTHONPATH=trainer_runs.ROOT)
    return subprocess.run([sys.executable, "-m", "fungizsl.main", f"--config=configs/evaluate.py:{config_arg}",
                           f"--workdir={workdir}", *flags], cwd=trainer_runs.ROOT, env=env, capture_output=True,
                          text=True, timeout=600)


def _tree(folder):
    return {os.path.relpath(os.path.join(d, f), folder): os.stat(os.path.join(d, f)).st_mtime_ns
            for d, _, files in os.walk(folder) for f in files}


@pytest.fixture(scope="module")
def metadata_run(tmp_path_factory):
    """A tiny metadata-only run (selection on the temporal hold-out, then the refit on all)."""
    from configs.fungiclef import get_config
    from fungizsl.fungiclef import metadata_only

    root = tmp_path_factory.mktemp("fungiclef_meta")
    train_csv = _write_csv(root / "train.csv", _rows(0, [2019, 2020, 2021]))
    eval_csv = _write_csv(root / "eval.csv", _rows(1, [2022]))
    config = get_config("metadata_only")
    config.data.train_csv, config.data.eval_csv = str(train_csv), str(eval_csv)
    config.batch_size, config.total_steps, config.warmup_steps = 16, 40, 2
    config.checkpoint_every = config.evals.fungiclef.every = config.log_every = 20
    metadata_only.train_and_evaluate(config, root / "run")
    return root


def _mean_pooled_log_probs(logits, mask):
    z = np.asarray(logits, np.float64)
    p = np.exp(z - z.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return np.log((p * mask[..., None]).sum(1) / mask.sum(1, keepdims=True))


def _check_calibration_by_hand(cal, scored):
    """The summary's calibration numbers from their definitions, in plain numpy: the NLL of the
    held-out scores at T = 1 and at the reported T, T a minimum of that NLL, and the NLL and the
    15-bin top-label ECE of the evaluated observations before and after dividing by T."""
    def nll(log_p, y, t=1.0):
        z = log_p / t
        z = z - z.max(-1, keepdims=True)
        return float(np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]))

    def ece(log_p, y, t=1.0):
        z = log_p / t
        p = np.exp(z - z.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        conf, right = p.max(-1), (p.argmax(-1) == y).astype(float)
        total = 0.0
        for b in range(15):  # equal-width bins (b/15, (b+1)/15]
            inside = (conf > b / 15) & (conf <= (b + 1) / 15)
            if inside.any():
                total += inside.mean() * abs(right[inside].mean() - conf[inside].mean())
        return total

    c, t = scored.calibration, cal["temperature"]
    fit_z, fit_y = _mean_pooled_log_probs(c.logits, c.image_mask), c.labels
    assert len(fit_y) == cal["fitted_on"]["num_observations"]
    assert cal["fit_nll_before"] == pytest.approx(nll(fit_z, fit_y), rel=1e-5)  # 6 digits in JSON
    assert cal["fit_nll_after"] == pytest.approx(nll(fit_z, fit_y, t), rel=1e-5)
    # T minimises the NLL over [0.01, 100]: inside, the NLL rises on both sides; at the lower end
    # (every held-out argmax right: sharper is always better) it rises towards larger T
    if t == 0.01:
        assert (fit_z.argmax(-1) == fit_y).all()
        assert nll(fit_z, fit_y, t) <= nll(fit_z, fit_y, 1.02 * t) < nll(fit_z, fit_y)
    else:
        assert 0.01 < t < 100, t
        assert nll(fit_z, fit_y, t) < min(nll(fit_z, fit_y, 1.02 * t), nll(fit_z, fit_y, t / 1.02))
    log_p, y = _mean_pooled_log_probs(scored.logits, scored.image_mask), scored.labels
    assert (y >= 0).all()
    for when, temp in (("before", 1.0), ("after", t)):
        assert cal[f"nll_{when}"] == pytest.approx(nll(log_p, y, temp), rel=1e-5), when
        assert cal[f"ece_{when}"] == pytest.approx(ece(log_p, y, temp), rel=1e-5, abs=1e-9), when


def test_metadata_run_through_the_command_reproduces_its_summary(metadata_run, tmp_path):
    run, eval_csv = metadata_run / "run", metadata_run / "eval.csv"
    before = _tree(run)
    out = run_main(f"model={run},fungiclef={eval_csv}", tmp_path / "eval")
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.listdir(tmp_path / "eval") == ["summary.json"]
    assert _tree(run) == before  # the run is read, never written
    got = json.loads((tmp_path / "eval" / "summary.json").read_text())
    want = json.loads((run / "summary.json").read_text())  # the refit's numbers on the same CSV
    # ... worked out in plain python from the refit's submission and the CSVs' labels and flags
    rankings = fungiclef_runs.read_rankings(run / "refit_all" / "submission_test.csv")
    labels = {int(r["observationID"]): int(r["category_id"]) for r in _rows(1, [2022])}
    flags = {int(r["category_id"]): int(r["poisonous"]) for r in _rows(0, [2019, 2020, 2021])}
    by_hand = fungiclef_runs.metrics_from_rankings(rankings, labels, flags)
    for key in HEADLINE:
        assert want[key] == pytest.approx(by_hand[key], rel=1e-5, abs=1e-9), key
        assert got[key] == pytest.approx(want[key], abs=1e-6), key
    assert got["model"]["kind"] == "fungiclef_metadata_only" and got["model"]["step"] == want["step"]
    assert got["model"]["checkpoint"].endswith(f"refit_all/checkpoints/{want['step']}")
    assert got["data"]["num_images"] == len(_rows(1, [2022])) and got["data"]["csv"] == str(eval_csv)
    # species are the classes, so species Top-K is the headline; coarser ranks can only be easier
    ranks = got["ranks"]
    assert list(ranks) == ["kingdom", "phylum", "class", "order", "family", "genus", "species"]
    assert ranks["species"]["top1"] == pytest.approx(got["top1"], abs=1e-6)
    assert ranks["kingdom"]["top1"] == 1.0 and ranks["genus"]["num_groups"] == 6
    assert got["top1"] <= ranks["genus"]["top1"] <= ranks["family"]["top1"]
    d = got["decisions"]
    assert d["costs"] == {"poisonous_as_edible": 100.0, "edible_as_poisonous": 1.0, "wrong_species": 1.0}
    assert d["argmax"]["accuracy"] == pytest.approx(got["top1"], abs=1e-6)
    assert d["argmax"]["poison_cost"] == pytest.approx(got["poison_cost"], abs=1e-6)
    assert d["expected_cost"]["total_cost"] <= d["argmax"]["total_cost"] + 1e-9  # the rule's own objective
    assert got["poisonous_flags"]["classes_flagged_by_evaluated_csv_only"] == 0
    prior = got["baselines"]["metadata_prior"]  # the count prior alone: the trainer's metadata baseline
    for key in ("top1", "top5", "macro_f1", "poison_cost"):
        assert prior[key] == pytest.approx(want["baselines"][f"metadata/{key}"], abs=1e-6), key
    assert set(prior["ranks"]) == set(ranks) and prior["decisions"]["argmax"]["accuracy"] == pytest.approx(prior["top1"])
    assert "expected_cost" in out.stdout and "genus" in out.stdout
    # the rule on calibrated probabilities: a temperature fitted on the run's temporal hold-out,
    # scored by the selection checkpoint (the refit trained on the hold-out)
    cal = d["calibration"]
    assert cal["method"] == "temperature" and cal["fitted_on"]["split"] == "val"
    assert cal["fitted_on"]["checkpoint"].endswith(f"run/checkpoints/{want['selection']['selected_on_val']['step']}")
    assert cal["fitted_on"]["num_observations"] > 0 and cal["fitted_on"]["left_out_as_in_evaluated_csv"] == 0
    _check_calibration_by_hand(cal, scoring.score_metadata_run(scoring.open_run(str(run)), str(eval_csv),
                                                               show_progress=False))
    assert set(d["expected_cost_calibrated"]) == set(d["expected_cost"])
    assert prior["decisions"]["calibration"]["method"] == "temperature"  # the prior gets its own temperature
    assert prior["decisions"]["calibration"]["fitted_on"]["num_observations"] == cal["fitted_on"]["num_observations"]
    assert "expected_cost_calibrated" in out.stdout and f"temperature {cal['temperature']:.3f}" in out.stdout


def test_metadata_temperature_is_fitted_on_the_runs_hold_out_never_on_the_evaluated_csv(metadata_run, tmp_path,
                                                                                         monkeypatch):
    from fungizsl.evaluate import calibration

    run, eval_csv = metadata_run / "run", metadata_run / "eval.csv"
    train = tables.table_from_csv(str(metadata_run / "train.csv"))
    _, held = tables.temporal_holdout(train, 2)
    held_ids, eval_ids = train.observation_ids[held], tables.table_from_csv(str(eval_csv)).observation_ids
    assert len(held_ids) >= 4 and not set(held_ids) & set(eval_ids)
    fits = []
    real_fit = calibration.fit_temperature
    monkeypatch.setattr(calibration, "fit_temperature",
                        lambda z, y, **kw: fits.append((np.asarray(z), np.asarray(y))) or real_fit(z, y, **kw))

    # (a) the scores it fits on are those of the hold-out, by the selection checkpoint, and the fit
    # (model and count prior: two fits) sees exactly the hold-out's labels, nothing of the CSV
    scored = scoring.score_metadata_run(scoring.open_run(str(run)), str(eval_csv), show_progress=False)
    assert list(scored.calibration.observation_ids) == list(held_ids)
    assert "refit_all" not in scored.calibration.described["checkpoint"]
    s = fe.observation_summary(scored, evaluate_config.get_config(f"fungiclef={eval_csv}"))
    assert len(fits) == 2 and all(list(y) == list(train.labels[held]) for _, y in fits)
    assert fits[0][0].shape == (len(held), 24) and s["decisions"]["calibration"]["fitted_on"]["num_observations"] == len(held)

    # (b) an evaluated CSV that holds 3 of the hold-out's observations: they are left out of the fit
    overlap = set(int(i) for i in held_ids[:3])
    mixed = _write_csv(tmp_path / "mixed.csv", _rows(1, [2022]) +
                       [r for r in _rows(0, [2019, 2020, 2021]) if r["observationID"] in overlap])
    fits.clear()
    fe.train_and_evaluate(evaluate_config.get_config(f"model={run},fungiclef={mixed}"), str(tmp_path / "mixed"))
    fitted = json.loads((tmp_path / "mixed" / "summary.json").read_text())["decisions"]["calibration"]["fitted_on"]
    assert fitted["num_observations"] == len(held) - 3 and fitted["left_out_as_in_evaluated_csv"] == 3
    assert [len(y) for _, y in fits] == [len(held) - 3] * 2

    # (c) the training CSV itself: nothing is left to fit on, so nothing calibrated is reported
    fits.clear()
    fe.train_and_evaluate(evaluate_config.get_config(f"model={run},fungiclef={metadata_run / 'train.csv'}"),
                          str(tmp_path / "itself"))
    d = json.loads((tmp_path / "itself" / "summary.json").read_text())["decisions"]
    assert d["calibration"]["method"] == "none" and "left to fit on" in d["calibration"]["why"]
    assert "expected_cost_calibrated" not in d and fits == []

    # (d) calibrate="none": the hold-out is not even scored
    config = evaluate_config.get_config(f"model={run},fungiclef={eval_csv}")
    config.evals.decisions.calibrate = "none"
    fe.train_and_evaluate(config, str(tmp_path / "none"))
    d = json.loads((tmp_path / "none" / "summary.json").read_text())["decisions"]
    assert d["calibration"] == {"method": "none", "why": "config.evals.decisions.calibrate is 'none'"}
    assert "expected_cost_calibrated" not in d and fits == []


def test_metadata_selection_checkpoint_reproduces_the_numbers_before_the_refit(metadata_run, tmp_path):
    """A step folder of the selection run (trained without the validation hold-out) is rebuilt
    with the vocabulary and prior of that training set, and scores what the run reported."""
    run = metadata_run / "run"
    want = json.loads((run / "summary.json").read_text())
    step = want["selection"]["selected_on_val"]["step"]
    config = evaluate_config.get_config(f"model={run}/checkpoints/{step},fungiclef={metadata_run / 'eval.csv'}")
    got = fe.train_and_evaluate(config, str(tmp_path / "eval"))
    for key in HEADLINE:
        assert got[key] == pytest.approx(want["before_refit"][key], abs=1e-6), key
    written = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert written["model"]["step"] == step and "hold-out" in written["model"]["trained_on"]


def test_a_run_whose_prior_won_selection_is_scored_by_the_prior(metadata_run, tmp_path):
    """Selection on val may report the count prior alone (metadata_only.prior_alone_wins): the
    evaluation-only runner then scores the prior, whose numbers the run's summary holds as its
    metadata baseline; a named step folder still scores that checkpoint."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(metadata_run / "run", run, ignore=shutil.ignore_patterns("refit_all"))
    summary = json.loads((metadata_run / "run" / "summary.json").read_text())
    summary.update(reported="prior_alone", step=summary["selection"]["selected_on_val"]["step"])
    (run / "summary.json").write_text(json.dumps(summary))
    config = evaluate_config.get_config(f"model={run},fungiclef={metadata_run / 'eval.csv'}")
    got = fe.train_and_evaluate(config, str(tmp_path / "eval"))
    for key in ("top1", "top5", "macro_f1", "poison_cost"):
        assert got[key] == pytest.approx(summary["baselines"][f"metadata/{key}"], abs=1e-6), key
    written = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert written["model"]["reported"].startswith("prior_alone")
    step = summary["step"]
    config = evaluate_config.get_config(f"model={run}/checkpoints/{step},fungiclef={metadata_run / 'eval.csv'}")
    got = fe.train_and_evaluate(config, str(tmp_path / "eval_step"))
    for key in HEADLINE:
        assert got[key] == pytest.approx(summary["before_refit"][key], abs=1e-6), key


def test_hand_checked_summary_numbers():
    """3 classes (1 poisonous), 4 observations, one of two images; probabilities chosen so that
    every number can be worked out by hand (see the comments)."""
    probs = [[[0.6, 0.3, 0.1], [0.6, 0.3, 0.1]],  # obs A, true 1 (poisonous); one image (second masked)
             [[0.9, 0.05, 0.05], [0, 0, 1]],        # obs B, true 0
             [[0.01, 1e-9, 0.99], [0, 0, 1]],       # obs C, true 2
             [[0.5, 0.5, 1e-9], [0.9, 0.1, 1e-9]]]  # obs D, true 0; two images, mean [0.7, 0.3, 0]
    logits = np.log(np.maximum(np.asarray(probs), 1e-12))
    mask = np.asarray([[1, 0], [1, 0], [1, 0], [1, 1]], bool)
    lineage = lambda c: {"kingdom": "Fungi", "genus": "G1" if c < 2 else "G2", "species": f"s{c}", "category_id": c}
    scored = scoring.Scored(logits, mask, np.asarray([1, 0, 2, 0]), np.arange(4), [lineage(c) for c in (1, 0, 2, 0)],
                       [lineage(c) for c in range(3)], np.arange(3), np.asarray([0, 1, 0]), 5, {"csv": "x.csv"})
    s = fe.observation_summary(scored, evaluate_config.get_config("fungiclef=x.csv"))
    # argmax: [0, 0, 2, 0] -> 3/4 right; A is poisonous called edible: 100 / 4 = 25
    assert s["top1"] == pytest.approx(0.75) and s["poison_cost"] == pytest.approx(25.0)
    assert s["top5"] == 1.0 and s["num_observations"] == 4
    argmax, after = s["decisions"]["argmax"], s["decisions"]["expected_cost"]
    assert argmax == pytest.approx({"accuracy": 0.75, "poison_cost": 25.0, "total_cost": 25.25,
                                    "poisonous_as_edible": 1, "edible_as_poisonous": 0})
    # expected costs (P = probability of the poisonous class 1):
    #   A: P=0.3: E[0] = 0.4 + 100*0.3 = 30.4, E[1] = 0.7 + 0.7 = 1.4, E[2] = 0.9 + 30 = 30.9 -> 1 (right)
    #   B: P=0.05: E[0] = 0.1 + 5 = 5.1, E[1] = 0.95 + 0.95 = 1.9 -> 1 (edible called poisonous)
    #   C: P~0: E[2] = 0.01 -> 2 (right);  D: P=0.3: E[0] = 30.3, E[1] = 1.4 -> 1 (edible called poisonous)
    # -> [1, 1, 2, 1]: accuracy 2/4, poison cost 2 / 4, total 0.5 + 0.5
    assert after == pytest.approx({"accuracy": 0.5, "poison_cost": 0.5, "total_cost": 1.0,
                                   "poisonous_as_edible": 0, "edible_as_poisonous": 2})
    assert s["decisions"]["num_observations"] == 4
    # genus by summing species probabilities: every observation's genus is right
    assert s["ranks"]["genus"]["top1"] == 1.0 and s["ranks"]["species"]["top1"] == pytest.approx(0.75)
    assert s["ranks"]["genus"]["num_groups"] == 2

    # no validation scores given: nothing calibrated, and the summary says why
    assert s["decisions"]["calibration"]["method"] == "none" and "expected_cost_calibrated" not in s["decisions"]
    # validation scores: (6, 0, 0) x 10 with truths 0 x 8, 1, 2 (T = 6 / ln 8, see test_eval_modes),
    # plus one observation that is also evaluated (id 3, obs D) with a contrary label: left out
    val_logits = np.log(np.maximum(np.asarray([[[0.0, 1.0, 0.0]]]), 1e-12))
    val_logits = np.concatenate([np.asarray([[[6.0, 0.0, 0.0]]] * 10), val_logits])
    scored.calibration = scoring.CalibrationScores(val_logits, np.ones((11, 1), bool), np.asarray([0] * 8 + [1, 2, 0]),
                                              np.asarray(list(range(100, 110)) + [3]), {"split": "val"})
    c = fe.observation_summary(scored, evaluate_config.get_config("fungiclef=x.csv"))["decisions"]
    assert c["calibration"]["temperature"] == pytest.approx(6 / np.log(8), rel=1e-6)
    assert c["calibration"]["fitted_on"] == {"split": "val", "num_observations": 10, "left_out_as_in_evaluated_csv": 1,
                                             "left_out_unlabelled_or_unknown_class": 0}
    assert c["argmax"] == s["decisions"]["argmax"] and c["expected_cost"] == s["decisions"]["expected_cost"]
    assert set(c["expected_cost_calibrated"]) == set(c["expected_cost"]) and "ece_after" in c["calibration"]
    scored.calibration = None

    # a label the model has no output for (class 3, poisonous per the evaluated CSV) is never
    # predicted; its flag comes from the CSV, and the summary says so
    scored.labels = np.asarray([1, 0, 2, 3])
    scored.records[3] = dict(lineage(3), poisonous=1)
    s = fe.observation_summary(scored, evaluate_config.get_config("fungiclef=x.csv"))
    assert s["observations_of_classes_the_model_lacks"] == 1 and s["top1"] == pytest.approx(0.5)
    assert s["poisonous_flags"]["classes_flagged_by_evaluated_csv_only"] == 1
    # D (true 3, poisonous) is now called edible by argmax: (100 + 100) / 4
    assert s["decisions"]["argmax"]["poison_cost"] == pytest.approx(50.0) == pytest.approx(s["poison_cost"])



def test_unknown_poisonous_flags_cost_nothing_in_every_reported_cost():
    """Class 0 poisonous, 1 edible, 2 without a flag in the training data or the evaluated CSV.
    Every poison cost the summary reports comes from `decisions.poison_costs`: an observation whose
    true or predicted species is unknown costs nothing, N is every labelled observation; the
    expected-cost rule decides on class 2 as edible."""
    probs = [[[0.3, 0.1, 0.6]],      # A, true 0 (poisonous): argmax 2 (unknown) -> no cost
             [[0.001, 0.6, 0.399]],  # B, true 2 (unknown): argmax 1 -> no cost
             [[0.001, 0.998, 0.001]],  # C, true 1: right
             [[0.6, 0.4, 0.0]]]      # D, true 1 (edible): argmax 0, edible called poisonous -> 1
    logits = np.log(np.maximum(np.asarray(probs), 1e-12))
    lineage = lambda c: {"kingdom": "Fungi", "genus": "G1", "species": f"s{c}", "category_id": c}
    labels = np.asarray([0, 2, 1, 1])
    scored = scoring.Scored(logits, np.ones((4, 1), bool), labels, np.arange(4), [lineage(c) for c in labels],
                            [lineage(c) for c in range(3)], np.arange(3), np.asarray([1, 0, -1]), 4, {"csv": "x.csv"})
    s = fe.observation_summary(scored, evaluate_config.get_config("fungiclef=x.csv"))
    assert s["poisonous_flags"] == {"classes_flagged_by_training": 2, "classes_flagged_by_evaluated_csv_only": 0,
                                    "classes_without_flag": 1, "poisonous_classes": 1}
    # argmax [2, 1, 1, 0]: 1 right of 4; only D costs: 1 / 4 (unknown read as edible would add A: 100 / 4)
    assert s["top1"] == pytest.approx(0.25) and s["poison_cost"] == pytest.approx(0.25)
    assert s["decisions"]["argmax"] == pytest.approx({"accuracy": 0.25, "poison_cost": 0.25, "total_cost": 1.0,
                                                      "poisonous_as_edible": 0, "edible_as_poisonous": 1})
    # expected costs (P = probability of class 0; class 2 edible for deciding):
    #   A: P=0.3: E[0] = 0.7 + 0.7 = 1.4, E[1] = 0.9 + 30, E[2] = 0.4 + 30 -> 0 (right)
    #   B: P=0.001: E[0] = 1.998, E[1] = 0.4 + 0.1 = 0.5, E[2] = 0.601 + 0.1 -> 1 (wrong, no cost)
    #   C: -> 1 (right);  D: P=0.6: E[0] = 0.4 + 0.4 = 0.8, E[1] = 0.6 + 60 -> 0 (edible called poisonous)
    assert s["decisions"]["expected_cost"] == pytest.approx({"accuracy": 0.5, "poison_cost": 0.25, "total_cost": 0.75,
                                                             "poisonous_as_edible": 0, "edible_as_poisonous": 1})


def test_runs_are_recognised_by_their_recorded_trainer_module_or_legacy_name(tmp_path):
    """A run records `config.trainer` (a module); runs made before recorded trainer "fungiclef"
    with `system`. Both are FungiCLEF runs; a FungalZSL run is not."""
    def run(folder, **config):
        (folder / "checkpoints" / "10" / "state").mkdir(parents=True)
        (folder / "fungizsl_config.json").write_text(json.dumps(config))
        return folder

    cases = {
        "meta_new": ({"trainer": "fungizsl.fungiclef.metadata_only"}, "", "metadata_only"),
        "meta_old": ({"trainer": "fungiclef", "system": "metadata_only"}, "", "metadata_only"),
        "full_new": ({"trainer": "fungizsl.fungiclef.full"}, "stage2", "full"),
        "full_old": ({"trainer": "fungiclef", "system": "full"}, "stage2", "full"),
    }
    for name, (config, sub, system) in cases.items():
        folder = run(tmp_path / name / sub, **config)
        assert scoring.find_run_root(tmp_path / name) == (tmp_path / name, system), name
        assert scoring.find_run_root(folder / "checkpoints" / "10") == (tmp_path / name, system), name
    assert scoring.find_run_root(run(tmp_path / "clip", trainer="fungalzsl")) is None
    assert scoring.find_run_root(run(tmp_path / "full_as_root", trainer="fungizsl.fungiclef.full")) is None

def test_metadata_errors_name_the_file_and_column(metadata_run, tmp_path):
    run = metadata_run / "run"
    rows = _rows(1, [2022])
    no_habitat = _write_csv(tmp_path / "no_habitat.csv", rows, [c for c in COLUMNS if c != "habitat"])
    with pytest.raises(ConfigError, match=r"no_habitat.csv lacks column\(s\) habitat"):
        fe.train_and_evaluate(evaluate_config.get_config(f"model={run},fungiclef={no_habitat}"), str(tmp_path / "a"))
    unlabelled = _write_csv(tmp_path / "test.csv", rows, [c for c in COLUMNS if c not in ("category_id", "poisonous")])
    with pytest.raises(ConfigError, match="lacks column.*category_id.*unlabelled"):
        fe.train_and_evaluate(evaluate_config.get_config(f"model={run},fungiclef={unlabelled}"), str(tmp_path / "b"))
    with pytest.raises(ConfigError, match=r"missing.csv does not exist"):
        fe.train_and_evaluate(evaluate_config.get_config(f"model={run},fungiclef={tmp_path}/missing.csv"),
                              str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="training CSV .*moved.csv"):
        fe.train_and_evaluate(evaluate_config.get_config(
            f"model={run},fungiclef={metadata_run / 'eval.csv'},train_csv={tmp_path}/moved.csv"), str(tmp_path / "d"))
    with pytest.raises(ConfigError, match="metadata-only run: it reads no image features"):
        fe.train_and_evaluate(evaluate_config.get_config(
            f"model={run},fungiclef={metadata_run / 'eval.csv'},features={tmp_path}"), str(tmp_path / "e"))
    assert not any((tmp_path / x).exists() for x in "abcde")

    # not a FungiCLEF run: a FungalZSL-like workdir, and an empty folder; one line, exit code 2
    other = tmp_path / "other"
    (other / "checkpoints").mkdir(parents=True)
    (other / "fungizsl_config.json").write_text(json.dumps({"trainer": "fungalzsl"}))
    out = run_main(f"model={other},fungiclef={metadata_run / 'eval.csv'}", tmp_path / "f")
    assert out.returncode == 2, out.stderr[-2000:]
    assert f"fungizsl: model {other} is not a FungiCLEF run" in out.stderr and "Traceback" not in out.stderr
    with pytest.raises(ConfigError, match="no such folder"):
        scoring.open_run(str(tmp_path / "nowhere"))
    # and a FungiCLEF run given to the CLIP zero-shot path
    from fungizsl.fungalzsl import load

    with pytest.raises(ConfigError, match="is a FungiCLEF run, not a two-tower CLIP model"):
        load.load_model(str(run))


# -------------------------------------------------------------------------------------------------
# The full system (features -> stage 1 -> stage 2) of the shared run (fungiclef_runs.shared_full_run)
# -------------------------------------------------------------------------------------------------

def _assert_close_tree(a, b, path=""):
    """Nested dicts equal: the same keys and strings, numbers within 1e-4 (relative) or 1e-7."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and set(a) == set(b), (path, sorted(a), sorted(b))
        for k in a:
            _assert_close_tree(a[k], b[k], f"{path}/{k}")
    elif isinstance(a, (int, float)) and not isinstance(a, bool):
        assert b == pytest.approx(a, rel=1e-4, abs=1e-7), path
    else:
        assert a == b, path


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """The session's shared full-system run (`fungiclef_runs.shared_full_run`): download/, run/."""
    return fungiclef_runs.shared_full_run(tmp_path_factory).root


def test_full_run_from_its_cache_and_from_images_reproduces_its_test_numbers(full_run, tmp_path):
    run = full_run / "run"
    test_csv = full_run / "download" / "metadata" / "FungiTastic-FewShot" / "FungiTastic-FewShot-Test.csv"
    want = json.loads((run / "summary.json").read_text())
    before = _tree(run)
    # (a) the run's own feature cache (split "test" from the CSV's name), through the command
    out = run_main(f"model={run},fungiclef={test_csv},features={run / 'features'}", tmp_path / "cache")
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.listdir(tmp_path / "cache") == ["summary.json"]
    cached = json.loads((tmp_path / "cache" / "summary.json").read_text())
    # (b) the images of the Kaggle layout beside the CSV, through the run's own tower
    fe.train_and_evaluate(evaluate_config.get_config(f"model={run},fungiclef={test_csv}"), str(tmp_path / "img"))
    from_images = json.loads((tmp_path / "img" / "summary.json").read_text())
    assert _tree(run) == before
    # the run's numbers worked out in plain python from its submission and the test labels
    from fungizsl.fungiclef import features as feat_lib

    by_hand = fungiclef_runs.metrics_from_rankings(
        fungiclef_runs.read_rankings(run / "stage2" / "submission_test.csv"),
        fungiclef_runs.observation_labels(feat_lib.load_split(run / "features", "test")),
        fungiclef_runs.poisonous_flags(feat_lib.load_split(run / "features", "train")))
    for key in HEADLINE:
        assert want[key] == pytest.approx(by_hand[key], rel=1e-5, abs=1e-9), key
        assert cached[key] == pytest.approx(want[key], abs=1e-5), key
        assert from_images[key] == pytest.approx(want[key], abs=1e-5), key
    assert cached["model"]["kind"] == "fungiclef_full" and cached["model"]["step"] == want["selection"]["step"]
    assert cached["model"]["stage1_checkpoint"].endswith(f"stage1/checkpoints/{want['selection']['stage1']['step']}")
    assert cached["data"]["features_split"] == "test" and "not DINOv2" in cached["data"]["tower"]
    assert "extracted by the run's tower" in from_images["data"]["features"]
    assert cached["ranks"]["species"]["top1"] == pytest.approx(cached["top1"], abs=1e-6)
    assert cached["decisions"]["argmax"]["poison_cost"] == pytest.approx(cached["poison_cost"], abs=1e-6)
    # the command ran on one device, the in-process evaluation on eight: equal up to float rounding
    _assert_close_tree(cached["ranks"], from_images["ranks"])
    _assert_close_tree(cached["decisions"], from_images["decisions"])
    assert cached["baselines"]["metadata_prior"]["top5"] == pytest.approx(want["baselines"]["metadata/top5"], abs=1e-6)
    # the temperature is fitted on the val split of the run's cache, scored by the evaluated checkpoint
    val_obs = set(feat_lib.load_split(run / "features", "val")["observation_id"].tolist())
    cal = cached["decisions"]["calibration"]
    assert cal["method"] == "temperature" and cal["fitted_on"]["split"] == "val"
    assert cal["fitted_on"]["num_observations"] == len(val_obs) and cal["fitted_on"]["left_out_as_in_evaluated_csv"] == 0
    assert cal["fitted_on"]["checkpoint"] == cached["model"]["checkpoint"]
    assert set(cached["decisions"]["expected_cost_calibrated"]) == set(cached["decisions"]["argmax"])


def test_full_run_errors(full_run, tmp_path):
    run = full_run / "run"
    test_csv = full_run / "download" / "metadata" / "FungiTastic-FewShot" / "FungiTastic-FewShot-Test.csv"
    with open(test_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    extra = dict(rows[0], filename="not-in-the-cache.JPG", observationID="424242")
    bad = tmp_path / "FungiTastic-FewShot-Test.csv"
    with open(bad, "w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows + [extra])
    with pytest.raises(ConfigError, match=r"has no features for 1 image\(s\) of .*not-in-the-cache.JPG"):
        fe.train_and_evaluate(evaluate_config.get_config(f"model={run},fungiclef={bad},features={run / 'features'}"),
                              str(tmp_path / "a"))
    with pytest.raises(ConfigError, match=r"1 image\(s\) of .* are not in .*not-in-the-cache.JPG"):
        fe.train_and_evaluate(evaluate_config.get_config(f"model={run},fungiclef={bad},image_root="
                                                         f"{test_csv.parents[2] / 'images/FungiTastic-FewShot/test/300p'}"),
                              str(tmp_path / "b"))
    renamed = tmp_path / "mine.csv"
    renamed.write_bytes(test_csv.read_bytes())
    with pytest.raises(ConfigError, match="set features_split"):
        fe.train_and_evaluate(evaluate_config.get_config(
            f"model={run},fungiclef={renamed},features={run / 'features'}"), str(tmp_path / "c"))
    with pytest.raises(ConfigError, match="stage-2 model"):
        scoring.open_run(str(next(p for p in (run / "stage1" / "checkpoints").iterdir() if p.name.isdigit())))


def test_real_csvs_have_the_columns_the_metadata_model_reads(shared_data):
    """The real Val-dev CSV passes the column check of a metadata_only run; the unlabelled Test
    CSV is refused with a message naming category_id."""
    from configs.fungiclef import get_config

    folder = shared_data / "fungiclef2025"
    config = get_config("metadata_only")
    rows = tables.read_csv_rows(str(folder / "FungiTastic-FewShot-Val-dev.csv"), config)
    assert len(rows) == 1185 and len({r["observationID"] for r in rows}) == 550
    assert tables.csv_split(str(folder / "FungiTastic-FewShot-Val-dev.csv")) == "val"
    with pytest.raises(ConfigError, match=r"FungiTastic-FewShot-Test.csv lacks column\(s\) category_id"):
        tables.read_csv_rows(str(folder / "FungiTastic-FewShot-Test.csv"), config)
