"""Metadata-only selection with the count prior alone as a candidate (issue 21, point 8): the
reported model is never worse on the temporal hold-out than its own baseline. Numbers by hand."""

import json
import types

import ml_collections
import numpy as np
import pytest

from fungizsl.fungiclef import metadata_only


def _config():
    config = ml_collections.ConfigDict({"best_metric": "fungiclef/top5",
                                        "evals": {"fungiclef": {"ks": (1, 5)}}})
    return config


def _splits():
    # 4 val observations over 6 classes. The prior ranks classes 0..5 in the order of its scores:
    # row scores are set so that the true class is 1st, 3rd, 6th and 6th: top1 1/4, top5 2/4.
    val_prior = np.asarray([[6, 5, 4, 3, 2, 1],    # label 0: rank 1
                            [6, 5, 4, 3, 2, 1],    # label 2: rank 3
                            [6, 5, 4, 3, 2, 1],    # label 5: rank 6
                            [1, 2, 3, 4, 5, 6]],   # label 0: rank 6
                           np.float64)
    test_prior = np.asarray([[0, 1, 2, 3, 4, 5], [5, 4, 3, 2, 1, 0]], np.float64)
    tables = {"val": types.SimpleNamespace(labels=np.asarray([0, 2, 5, 0])),
              "test": types.SimpleNamespace(labels=np.asarray([5, 0]), observation_ids=np.asarray([71, 72]))}
    return metadata_only.MetadataSplits({"val": {"prior": val_prior}, "test": {"prior": test_prior},
                                         "train": {}}, tables, 6, (), np.asarray([0, 0, 0, 0, 0, 1]))


def _selected(value):
    return {"top1": 0.25, "top5": 0.5, "top10": None, "macro_f1": 0.1, "poison_cost": 0.0, "num_observations": 2,
            "selection": {"selection_value": value, "step": 40},
            "baselines": {"metadata/top1": 1.0, "metadata/top5": 1.0, "metadata/macro_f1": 1.0,
                          "metadata/poison_cost": 0.0, "metadata/num_observations": 2}}


def test_the_prior_wins_when_it_is_at_least_as_good_on_val():
    config, splits = _config(), _splits()
    assert metadata_only.prior_alone_wins(config, splits, _selected(0.25))
    assert not metadata_only.prior_alone_wins(config, splits, _selected(0.5))  # a tie keeps the model
    assert not metadata_only.prior_alone_wins(config, splits, _selected(0.75))
    assert not metadata_only.prior_alone_wins(config, splits, _selected(None))


def test_a_winning_prior_is_reported_with_its_submission(tmp_path):
    config, splits = _config(), _splits()
    (tmp_path / "submission_test.csv").write_text("the model's\n")
    summary = metadata_only.report_with_prior_candidate(config, tmp_path, splits, _selected(0.25), _selected(0.25))
    assert summary["reported"] == "prior_alone"
    assert summary["top5"] == 1.0 and summary["top1"] == 1.0  # the prior's test numbers
    assert summary["candidates"]["prior_alone"]["val"]["top1"] == 0.25
    assert summary["candidates"]["prior_alone"]["val"]["top5"] == 0.5
    assert summary["candidates"]["model"] == {"val": {"top5": 0.25}, "test": {
        "top1": 0.25, "top5": 0.5, "top10": None, "macro_f1": 0.1, "poison_cost": 0.0, "num_observations": 2}}
    assert (tmp_path / "submission_test_model.csv").read_text() == "the model's\n"
    lines = (tmp_path / "submission_test.csv").read_text().splitlines()
    assert lines[0] == "observationId,predictions"
    assert lines[1] == "71,5 4 3 2 1 0" and lines[2] == "72,0 1 2 3 4 5"
    assert json.loads((tmp_path / "summary.json").read_text())["reported"] == "prior_alone"


def test_a_better_model_stays_reported(tmp_path):
    config, splits = _config(), _splits()
    summary = metadata_only.report_with_prior_candidate(config, tmp_path, splits, _selected(0.75), _selected(0.75))
    assert summary["reported"] == "model" and summary["top5"] == 0.5
    assert not (tmp_path / "submission_test.csv").exists()
    assert summary["candidates"]["prior_alone"]["test"]["top5"] == 1.0
