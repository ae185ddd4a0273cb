"""Shifted test sets (fungizsl.data.robustness) and their evaluation after training."""

import json

import numpy as np
import pytest

from fungizsl.data import robustness, synthetic
from fungizsl.train import core
from trainer_runs import finish, start_training

BASE = synthetic.RenderConfig(image_size=48)
# the zoom shifts as the FungalZSL trainer draws them (fungalzsl/inputs.py): every image at the
# shifted magnification, no fields of small colonies (those keep their own low magnification)
SINGLE = synthetic.RenderConfig(image_size=48, field_fraction=0.0)


def _source(condition, n=3, base=BASE):
    return robustness.ShiftedSource(condition, synthetic.STAGES, n, seed=7, base=base)


def test_each_condition_changes_what_it_says_and_keeps_the_scene():
    plain = _source("size48")
    gray, paper = _source("gray"), _source("paper")
    for i in range(len(plain)):
        image = gray[i]["image"]
        assert image.shape == (48, 48, 3) and np.array_equal(image[..., 0], image[..., 1])
        # the same scene, colour removed: luma of the plain render
        assert np.abs(image[..., 0].astype(int) - robustness.to_gray(plain[i]["image"])[..., 0]).max() == 0
        assert gray[i]["label"] == plain[i]["label"] == paper[i]["label"]
        assert json.loads(paper[i]["scene"])["preset"] == "paper"
    assert not np.array_equal(plain[0]["image"][..., 0], plain[0]["image"][..., 2])  # plain has colour
    assert _source("size64")[0]["image"].shape == (64, 64, 3)


def test_zoom_conditions_draw_magnification_outside_the_training_range():
    train_lo, train_hi = synthetic.RenderConfig().magnification
    out = [json.loads(r["scene"])["magnification"] for r in (_source("zoom_out", base=SINGLE)[i] for i in range(9))]
    into = [json.loads(r["scene"])["magnification"] for r in (_source("zoom_in", base=SINGLE)[i] for i in range(9))]
    assert max(out) < train_lo and min(into) > train_hi


def test_bad_conditions_and_splits_are_named():
    with pytest.raises(ValueError, match="blurry"):
        robustness.check_condition("blurry")
    with pytest.raises(ValueError, match="'val'"):
        robustness.condition_of("val")
    with pytest.raises(ValueError, match="magnification"):
        synthetic.RenderConfig(magnification=(2.0, 1.0))


def test_final_pass_runs_final_only_variants_on_their_own_split():
    entries = {"zeroshot": {"split": "val", "every": 10}, "robust_gray": {"split": "test_gray", "every": 0},
               "later": {"split": "val", "every": 0}, "val_paper": {"split": "val_paper", "every": 10},
               "robust_paper": {"split": "test_paper", "every": 0}}
    passes = core.final_passes(entries, "test")
    assert set(passes["test"]) == {"zeroshot", "later"}
    assert set(passes["test_gray"]) == {"robust_gray"}
    # a shifted validation set ends on the same shift of the test scenes, not on the plain test split
    assert set(passes["test_paper"]) == {"val_paper", "robust_paper"}


def test_a_shifted_test_set_during_training_is_refused_before_anything_is_prepared(tmp_path):
    """A test variant with every > 0 would show the final split to training: the FungalZSL trainer
    refuses it before it renders a split or trains a tokenizer."""
    from configs import fungalzsl as fungalzsl_config
    from fungizsl.errors import ConfigError
    from fungizsl.fungalzsl import trainer

    config = fungalzsl_config.get_config("arch=tiny,runlocal,captions=templates")
    config.evals.robust_gray.every = 5
    with pytest.raises(ConfigError) as refused:
        trainer.train_and_evaluate(config, tmp_path / "run")
    assert str(refused.value) == (
        "config.evals.robust_gray.split='test_gray' is the final split 'test' (or a variant of it) and "
        "config.evals.robust_gray.every=5 would run it during training: set config.evals.robust_gray.every=0 "
        "or split='val'")
    assert not (tmp_path / "run").exists()


def test_a_run_reports_every_shifted_test_set(tmp_path):
    out = finish(start_training(tmp_path, "--config.batch_size=16", "--config.total_steps=4",
                                "--config.warmup_steps=1", "--config.checkpoint_every=4",
                                "--config.data.robustness_per_class=3"))
    assert "zero-shot on shifted test sets: " in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    shifts = {"gray", "zoom_out", "zoom_in", "size64", "size128"}
    assert set(summary["robustness"]) == {"paper", "unseen"} | shifts | {f"unseen_{s}" for s in shifts}
    assert summary["unseen_generator_zeroshot_accuracy"] == summary["robustness"]["unseen"]["zeroshot_accuracy"]
    for condition, numbers in summary["robustness"].items():
        assert 0.0 <= numbers["zeroshot_accuracy"] <= 1.0, condition
        assert set(numbers["per_class_accuracy"]) == {"spore", "hyphae", "mycelium"}
        # 3 images per class: accuracy is a multiple of 1/9 (summary values are rounded)
        assert abs(numbers["zeroshot_accuracy"] * 9 - round(numbers["zeroshot_accuracy"] * 9)) < 1e-3
    final = json.loads((tmp_path / "eval_metrics.json").read_text())["final"]
    assert "robust_paper/accuracy" in final and "robust_unseen/accuracy" in final and "zeroshot/accuracy" in final


def test_shifted_validation_splits_name_their_condition_and_never_the_unseen_generator():
    from fungizsl.fungalzsl import inputs

    assert inputs.validation_condition("val_paper") == "paper"
    assert inputs.validation_condition("val_size64") == "size64"
    assert inputs.validation_condition("val") is None and inputs.validation_condition("test_paper") is None
    for split in ("val_unseen", "val_unseen_gray"):
        with pytest.raises(ValueError, match="evaluation only"):
            inputs.validation_condition(split)
    with pytest.raises(ValueError, match="unknown robustness condition"):
        inputs.validation_condition("val_blurry")
