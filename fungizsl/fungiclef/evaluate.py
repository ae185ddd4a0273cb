"""Evaluation-only runs of a trained FungiCLEF 2025 model on a FungiCLEF CSV, per observation.

The model is a workdir of the FungiCLEF trainers (Lu et al., "Few-Shot Classification of Fungi
Species Using Contrastive Representation Learning and Multimodal Fusion", FungiCLEF 2025, 2nd
place; `configs/fungiclef.py`); the costs are those of FungiCLEF 2023/24 (100 x poisonous called
edible, 1 x edible called poisonous).

    python -m fungizsl.main --config=configs/evaluate.py:model=RUN,fungiclef=CSV --workdir=DIR
    python -m fungizsl.main --config=configs/evaluate.py:model=RUN,fungiclef=CSV,features=CACHE --workdir=DIR

Models (`model=`):
  * a metadata-only run: its refit on every training observation (`RUN/refit_all`, the model
    its summary.json reports) or, without a refit, the checkpoint it selected on validation;
  * a full-system run (`./launch/local.sh fungiclef`): the stage-2 checkpoint selected on
    validation (`RUN/stage2`), with the selected stage-1 checkpoint for the prototype scores;
  * one step folder of either (`RUN/checkpoints/<step>`, `RUN/refit_all/checkpoints/<step>`,
    `RUN/stage2/checkpoints/<step>`).
  It is rebuilt by the trainer's own code (`scoring.py`) from the run's `fungizsl_config.json`
  and its training data: the training CSV the run names (`config.data.train_csv` overrides it)
  or the run's feature cache (`config.data.run_features` overrides it). So vocabulary, count
  prior, text states and prototypes are those of training, and a run evaluated on its own
  evaluation CSV reproduces its summary's numbers (tested).
Data: a FungiTastic-FewShot CSV with labels (`category_id`) and the metadata columns the model
  reads. The full system also needs image features, from
  * a feature cache (`features=`, as `fungizsl fungiclef features` writes; split
    `features_split`, default from the CSV's name), matched to the CSV by filename and made
    by the run's tower, or else
  * the images (`image_root`; default the Kaggle layout beside the CSV,
    `images/FungiTastic-FewShot/<split>/<resolution>/`), given features by the run's very tower
    in a temporary cache that is deleted afterwards.

Writes DIR/summary.json (process 0) and nothing else: Top-1/5/10, macro-F1 and poison cost per
observation (evaluator `fungiclef_observations`), Top-K at every rank (`evaluate/taxonomy.py`;
lineages from the training data and the CSV's taxonomy columns), and argmax vs expected-cost
decisions (`evaluate/decisions.py`, costs from `config.evals.decisions.costs`), with the model,
checkpoint and data used. With `config.evals.decisions.calibrate = "temperature"` (the default)
the expected-cost rule is also scored on probabilities divided by one temperature
(`evaluate/calibration.py`) fitted on the run's own validation split, never on the evaluated CSV:
  * metadata_only: the temporal hold-out of the training CSV that selected the checkpoint, scored
    by the selection checkpoint (trained without it); a refit on every training observation has
    seen the hold-out, so it takes the temperature of its selection checkpoint;
  * full: the `val` split of the run's feature cache, scored by the evaluated checkpoint.
  Hold-out observations that also appear in the evaluated CSV are left out of the fit.
Poisonous flags per class are the training data's; a class that the training data lacks takes
the evaluated CSV's flag (the summary counts such classes). A class that neither flags stays
unknown: every reported poison cost (the headline and the decisions') comes from the one
definition, `decisions.poison_costs`, under which an observation whose true or predicted species
is unknown costs nothing (as in the trainers' numbers); the expected-cost rule decides on such a
class as edible.
"""

from __future__ import annotations

from typing import Any

import ml_collections
import numpy as np

from fungizsl import metrics_io, runs
from fungizsl import workdir as workdir_lib
from fungizsl.errors import ConfigError
from fungizsl.evaluate import calibration as calibration_lib
from fungizsl.evaluate import observations
from fungizsl.evaluate import taxonomy as taxonomy_lib
from fungizsl.evaluate.registry import make_evaluator
from fungizsl.fungiclef.scoring import Scored, open_run, score_full_run, score_metadata_run


def class_taxonomy(records_with_labels, num_classes: int) -> taxonomy_lib.Taxonomy:
    """Lineage of classes 0..C-1 (named by their category id) from rows with taxonomy columns;
    a class no row describes has a blank lineage (left out of every rank's accuracy)."""
    rows = [dict(r, category_id=str(int(c))) for r, c in records_with_labels if 0 <= int(c) < num_classes]
    columns = {r: r for r in taxonomy_lib.RANKS}
    found = taxonomy_lib.Taxonomy.from_rows(rows, "category_id", columns) if rows else None
    lineage = dict(zip(found.classes, found.lineages)) if found else {}
    classes = tuple(str(c) for c in range(num_classes))
    return taxonomy_lib.Taxonomy(classes, tuple(lineage.get(c, {}) for c in classes))


def poisonous_flags(scored: Scored, num_classes: int) -> tuple[np.ndarray, dict[str, int]]:
    """int64 [C]: 1 poisonous, 0 edible, -1 unknown; the training data's flags, and classes it
    lacks take the evaluated CSV's flag."""
    flags = np.full(num_classes, -1, np.int64)
    flags[:len(scored.poisonous_by_class)] = scored.poisonous_by_class
    from_training = int((flags >= 0).sum())
    filled = 0
    for record, label in zip(scored.records, scored.labels):
        p = int(record.get("poisonous", -1))
        if 0 <= label < num_classes and flags[label] < 0 and p >= 0:
            flags[label] = p
            filled += 1
    counts = {"classes_flagged_by_training": from_training, "classes_flagged_by_evaluated_csv_only": filled,
              "classes_without_flag": int((flags < 0).sum()), "poisonous_classes": int((flags == 1).sum())}
    return flags, counts


def _pad_classes(logits: np.ndarray, num_classes: int) -> np.ndarray:
    """Logits over `num_classes`: classes the model has no output for get -1e9 (never named)."""
    missing = num_classes - logits.shape[-1]
    if missing <= 0:
        return logits
    return np.concatenate([logits, np.full(logits.shape[:-1] + (missing,), -1e9, logits.dtype)], -1)


def calibrate_method(config) -> str:
    return (config.get("evals", {}) or {}).get("decisions", {}).get("calibrate", "temperature") or "none"


def scores_summary(logits, image_mask, labels, poisonous, taxonomy, config, pooling: str = "mean",
                   calibration: tuple[np.ndarray, np.ndarray] | None = None,
                   calibration_info: dict | None = None) -> dict:
    """Top-K, macro-F1, poison cost (`fungiclef_observations`), Top-K at every rank (`taxonomy`) and
    argmax vs expected-cost decisions (`decisions`) of image logits [N_obs, G, C] of labelled
    observations; `poisonous` [C] 1 / 0 / -1 unknown (see `decisions.poison_costs`).
    `calibration` (observation log-scores [M, C], labels [M] of held-out data, never these
    observations) adds the rule on temperature-scaled probabilities; `calibration_info` (where
    they come from) goes into `decisions["calibration"]`."""
    ev = config.get("evals", {}) or {}
    ks = tuple(config.get("ks", (1, 5, 10)))
    headline = dict(make_evaluator("fungiclef_observations", dict(ks=ks, pooling=pooling, compare_pooling=False)).run(
        logits=logits, image_mask=image_mask, labels=labels, poisonous_by_class=poisonous))
    log_probs = observations.pool_observations(logits, image_mask, pooling)
    ranks: dict[str, dict] = {}
    for name, value in make_evaluator("taxonomy", dict(ks=ks)).run(logits=log_probs, image_labels=labels,
                                                                    taxonomy=taxonomy):
        rank, metric = name.split("/", 1)
        ranks.setdefault(rank, {})["num_observations" if metric == "num_images" else metric] = value
    decide = make_evaluator("decisions", dict(costs=dict(ev.get("decisions", {}).get("costs", {}) or {}),
                                              calibrate=calibrate_method(config)))
    decisions: dict[str, Any] = {"costs": dict(decide.costs), "calibration": dict(calibration_info or {})}
    fit = dict(calibration_logits=calibration[0], calibration_labels=calibration[1]) if calibration else {}
    for name, value in decide.run(logits=log_probs, image_labels=labels, poisonous=poisonous, **fit):
        rule, _, metric = name.partition("/")
        if metric:
            decisions.setdefault(rule, {})[metric] = value
        else:
            decisions["num_observations"] = value
    summary = {k: headline[k] for k in [f"top{k}" for k in ks] + ["macro_f1", "poison_cost", "num_observations"]}
    summary.update(ranks=ranks, decisions=decisions)
    return summary


def calibration_fit_set(scored: Scored, model_classes: int) -> tuple[np.ndarray | None, dict[str, Any]]:
    """(bool mask over `scored.calibration`'s observations the temperature may be fitted on, or None;
    description for the summary). Observations that the evaluated CSV also holds are left out, as are
    unlabelled ones and ones of classes the model has no output for."""
    cal = scored.calibration
    if cal is None:
        return None, {"method": "none", "why": scored.calibration_missing or "no validation scores of the run were given"}
    in_evaluated = np.isin(cal.observation_ids, scored.observation_ids)
    usable = (cal.labels >= 0) & (cal.labels < model_classes)
    keep = usable & ~in_evaluated
    info = dict(method="temperature", fitted_on=dict(cal.described, num_observations=int(keep.sum()),
                left_out_as_in_evaluated_csv=int((usable & in_evaluated).sum()),
                left_out_unlabelled_or_unknown_class=int((~usable).sum())))
    if not keep.any():
        return None, dict(info, method="none", why=f"no observation of the run's {cal.described['split']} split is "
                          f"left to fit on once those in the evaluated CSV are left out")
    return keep, info


def observation_summary(scored: Scored, config, pooling: str = "mean") -> dict[str, Any]:
    """`scores_summary` of the model and of each baseline, over the labelled observations (images
    pooled per observation by `pooling`, as the run's evaluator did)."""
    labelled = scored.labels >= 0
    if not labelled.any():
        raise ConfigError(f"{scored.data['csv']}: no observation has a label (category_id); nothing to evaluate")
    labels = scored.labels[labelled]
    model_classes = scored.logits.shape[-1]
    num_classes = max(model_classes, int(labels.max()) + 1)
    poisonous, flag_counts = poisonous_flags(scored, num_classes)
    taxonomy = class_taxonomy(list(zip(scored.train_records, scored.train_labels)) +
                              list(zip(scored.records, scored.labels)), num_classes)
    fit, cal_info = calibration_fit_set(scored, model_classes) if calibrate_method(config) != "none" else \
        (None, {"method": "none", "why": "config.evals.decisions.calibrate is 'none'"})
    cal, cal_baselines = None, {}
    if fit is not None:
        c = scored.calibration
        cal = (observations.pool_observations(_pad_classes(c.logits[fit], num_classes), c.image_mask[fit], pooling),
               c.labels[fit])
        cal_baselines = {name: (calibration_lib.log_softmax(_pad_classes(np.asarray(x)[fit], num_classes)), c.labels[fit])
                         for name, x in c.baselines.items()}
    summary = scores_summary(_pad_classes(scored.logits[labelled], num_classes), scored.image_mask[labelled],
                             labels, poisonous, taxonomy, config, pooling, cal, cal_info)
    summary.update(pooling=pooling, poisonous_flags=flag_counts,
                   observations_of_classes_the_model_lacks=int((labels >= model_classes).sum()))
    if scored.baselines:
        # a baseline's temperature is fitted on its own scores of the same observations (no checkpoint)
        fitted_on = {k: v for k, v in cal_info.get("fitted_on", {}).items() if k not in ("checkpoint", "note")}
        summary["baselines"] = {
            name: scores_summary(_pad_classes(np.asarray(x)[labelled][:, None], num_classes),
                                 np.ones((len(labels), 1), bool), labels, poisonous, taxonomy, config,
                                 calibration=cal_baselines.get(name),
                                 calibration_info=dict(cal_info, fitted_on=fitted_on) if name in cal_baselines else
                                 {"method": "none", "why": cal_info.get("why", "no validation scores of this baseline")})
            for name, x in scored.baselines.items()}
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """The trainer module of `configs/evaluate.py` with `fungiclef=CSV` (no training)."""
    specs = [s for s in (config.get("models", ()) or ()) if s]
    if len(specs) != 1:
        raise ConfigError(f"fungiclef= evaluates one FungiCLEF run at a time (model=RUN); got {specs or 'none'}")
    d = config.data
    if not d.get("fungiclef_csv"):
        raise ConfigError("config.data.fungiclef_csv is empty: name the FungiCLEF CSV to evaluate (fungiclef=CSV)")
    show = workdir_lib.is_main()
    run = open_run(specs[0])
    if run.system == "metadata_only":
        if d.get("features"):
            raise ConfigError(f"model {run.spec} is a metadata-only run: it reads no image features "
                              f"(drop features={d.features})")
        scored = score_metadata_run(run, d.fungiclef_csv, d.get("train_csv", ""), show,
                                    calibrate=calibrate_method(config) != "none")
    else:
        scored = score_full_run(run, d.fungiclef_csv, d.get("features", ""), d.get("features_split", ""),
                                d.get("image_root", ""), d.get("run_features", ""), show,
                                calibrate=calibrate_method(config) != "none")
    summary = observation_summary(scored, config, run.config.evals.fungiclef.get("pooling", "mean"))
    summary["model"] = run.describe()
    summary["data"] = dict(scored.data, num_images=scored.num_images, num_observations_in_csv=len(scored.labels),
                           num_labelled_observations=int((scored.labels >= 0).sum()))
    if show:
        out = workdir_lib.as_path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        metrics_io.write_json(out / runs.SUMMARY_FILE, summary)
        print(format_table(summary), flush=True)
    workdir_lib.barrier("fungiclef_evaluate_done")
    return {k: v for k, v in summary.items()
            if k not in ("ranks", "decisions", "model", "data", "poisonous_flags", "baselines")}


def format_table(summary: dict) -> str:
    """The summary as a few lines: the model, then each baseline."""
    lines = [f"FungiCLEF evaluation of {summary['model']['source']} on {summary['data']['csv']} "
             f"({summary['num_observations']} labelled observations)"]
    for label, s in [("model", summary)] + [(f"baseline {k}", v) for k, v in summary.get("baselines", {}).items()]:
        lines.append(f"{label}: " + ", ".join(f"{k} {s[k]:.4f}" for k in ("top1", "top5", "top10", "macro_f1")
                                             if s.get(k) is not None))
        lines.append("  top1/top5 by rank: " + ", ".join(
            f"{rank} {m['top1']:.3f}/{m.get('top5', float('nan')):.3f}" for rank, m in s["ranks"].items() if "top1" in m))
        cal = s["decisions"]["calibration"]
        if "temperature" in cal:
            lines.append(f"  calibration: temperature {cal['temperature']:.3f} fitted on {cal['fitted_on']['split']} "
                         f"({cal['fitted_on']['num_observations']} observations); ECE on the evaluated CSV "
                         f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}")
        else:
            lines.append(f"  calibration: none ({cal.get('why', '')})")
        for rule in ("argmax", "expected_cost", "expected_cost_calibrated"):
            if rule not in s["decisions"]:
                continue
            r = s["decisions"][rule]
            lines.append(f"  {rule + ':':14s} accuracy {r['accuracy']:.4f}, poison cost {r['poison_cost']:.4f} "
                         f"({r['poisonous_as_edible']} poisonous called edible, {r['edible_as_poisonous']} edible "
                         f"called poisonous), total cost {r['total_cost']:.4f}")
    return "\n".join(lines)
