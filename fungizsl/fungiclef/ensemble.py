"""The ensembles of the full FungiCLEF system (`full.py`), and the paper preset's epochs.

Two kinds, chosen by the config:

* `config.ensemble_runs` empty (every preset but `paper`): `checkpoint_ensemble`, the vote of the
  kept checkpoints of the one stage-2 run (`config.ensemble_steps`; all kept when empty).
* `config.ensemble_runs` = stage-2 epoch counts (`paper`: (50, 100, 150)): `runs_ensemble`,
  separately trained stage-2 models, one run per count, all on the one stage-1 model, each
  selected on val as usual; their weighted vote. Lu et al. (sec. 4.3, Table 4): "the model
  achieved high scores at 50, 100, and 150 training epochs. Building upon these three optimal
  results, we adopted a weighted voting ensemble approach [25] to integrate predictions from
  these top-performing models as our final competition submission" (Top-5 78.137 against 76.991
  for the 100-epoch model). The paper gives no weights; we weight each member by its own val
  value of `config.ensemble_weight_metric` (`fungiclef/top5`: the accuracy the paper's Table 4
  ranks the three by), or by `config.ensemble_weights` when given, and vote soft (the weighted
  mean of the members' probabilities; `config.ensemble_kind=hard` gives weighted Top-1 votes).

Each member trains in `<workdir>/stage2_e<epochs>`, except the member whose step count equals the
headline stage-2 run's (`<workdir>/stage2`; `paper`: 100 epochs): that run is the same training
(same config, seed and data), so it is reused instead of trained twice.

Both kinds are scored per observation on val and test (images pooled as the evaluator pools them)
and write their own Kaggle submission: `stage2/submission_test_ensemble.csv` (checkpoints) or
`submission_test_ensemble.csv` in the workdir (runs).

Epochs (`resolve_epochs`): a stage with `epochs > 0` gets its `total_steps` from the training
split at run time, and `eval_every` / `checkpoint_every` from `eval_every_epochs`:

* stage 1, an epoch of the class-balanced sampler: every class drawn once, each contributing
  max(min(n_c, instances_per_class), min_instances) rows, so
  steps = ceil(epochs x sum_c max(min(n_c, 4), 2) / batch). The real training set (7,819 images
  of 2,427 classes) gives 6,872 rows an epoch: 100 epochs at batch 1024 = 672 steps.
* stage 2, an epoch of `Stage2Batch`: one pass over the training images,
  steps = ceil(epochs x N_images / batch): 100 epochs of 7,819 images at batch 1024 = 764 steps
  (50: 382, 150: 1146).
"""

from __future__ import annotations

import math

import ml_collections
import numpy as np

from fungizsl import workdir as workdir_lib
from fungizsl.errors import ConfigError
from fungizsl.evaluate import observations as obs_lib
from fungizsl.fungiclef.report import HEADLINE
from fungizsl.fungiclef.splits import FullData
from fungizsl.train import checkpoint, core

SUBMISSION = "submission_test_ensemble.csv"


# -------------------------------------------------------------------------------------------------
# Epochs -> steps
# -------------------------------------------------------------------------------------------------

def sampler_epoch_rows(labels, instances_per_class: int = 4, min_instances: int = 2) -> int:
    """Rows of one class-balanced sampler epoch (every class drawn once): the sum over classes of
    max(min(n_c, instances_per_class), min_instances)."""
    counts = np.bincount(np.asarray(labels, np.int64))
    counts = counts[counts > 0]
    return int(np.maximum(np.minimum(counts, instances_per_class), min_instances).sum())


def epoch_steps(epochs: float, rows_per_epoch: int, batch_size: int) -> int:
    """ceil(epochs x rows_per_epoch / batch_size), at least 1."""
    return max(1, math.ceil(epochs * rows_per_epoch / batch_size - 1e-9))


def stage_rows_per_epoch(config, stage: str, data: FullData) -> int:
    labels = data.splits["train"].labels
    if stage == "stage1":
        s = config.stage1
        return sampler_epoch_rows(labels, s.instances_per_class, s.min_instances)
    return len(labels)


def check_ensemble(config) -> None:
    """The ensemble settings a run would otherwise stop on only after training stage 2."""
    runs = tuple(config.get("ensemble_runs", ()))
    if not (config.get("ensemble", False) and runs):
        return
    if len(runs) < 2 or any(e <= 0 for e in runs):
        raise ConfigError(f"config.ensemble_runs={runs}: give two or more positive stage-2 epoch counts, or () for "
                          f"the checkpoint ensemble of the one run")
    weights = tuple(config.get("ensemble_weights", ()))
    if weights and len(weights) != len(runs):
        raise ConfigError(f"config.ensemble_weights {weights} must give one weight per member {runs}")
    metric = config.get("ensemble_weight_metric", "")
    if not weights and metric and metric != config.get("best_metric"):
        raise ConfigError(f"config.ensemble_weight_metric={metric!r} must be the selection metric "
                          f"config.best_metric={config.get('best_metric')!r} (or '' for equal weights)")


def resolve_epochs(config, data: FullData) -> dict:
    """Checks the ensemble settings (`check_ensemble`); sets `total_steps` (and `eval_every` =
    `checkpoint_every` from `eval_every_epochs`) of each stage whose `epochs` is positive, from the
    training split; returns what it set, by stage."""
    check_ensemble(config)
    out = {}
    for stage in ("stage1", "stage2"):
        s = config[stage]
        epochs = s.get("epochs", 0)
        if not epochs:
            continue
        rows = stage_rows_per_epoch(config, stage, data)
        s.total_steps = epoch_steps(epochs, rows, s.batch_size)
        if s.get("eval_every_epochs", 0):
            s.eval_every = s.checkpoint_every = min(epoch_steps(s.eval_every_epochs, rows, s.batch_size),
                                                    s.total_steps)
        if s.warmup_steps >= s.total_steps:
            raise ConfigError(f"config.{stage}.warmup_steps={s.warmup_steps} must be below the "
                              f"{s.total_steps} steps of {epochs} epochs; lower --config.{stage}.warmup_steps")
        unit = "sampler rows" if stage == "stage1" else "images"
        out[stage] = {"epochs": epochs, "rows_per_epoch": rows, "unit": unit, "batch_size": s.batch_size,
                      "total_steps": s.total_steps, "eval_every": s.eval_every}
    if out and workdir_lib.is_main():
        print("epochs -> steps: " + "; ".join(
            f"{k} {v['epochs']} epochs x {v['rows_per_epoch']} {v['unit']} / batch {v['batch_size']} = "
            f"{v['total_steps']} steps (evaluated every {v['eval_every']})" for k, v in out.items()), flush=True)
    return out


# -------------------------------------------------------------------------------------------------
# The vote
# -------------------------------------------------------------------------------------------------

def vote_and_score(config, data: FullData, member_logits: dict, weights, kind: str, submission) -> dict:
    """The weighted vote of the members' image logits per split ({split: [[N_obs, G, C], ...]}),
    pooled per observation as the evaluator pools them; metrics where the split has labels; the
    Kaggle CSV of the test vote at `submission`."""
    out = {}
    pooling = config.evals.fungiclef.get("pooling", "mean")
    for split, logits in member_logits.items():
        sp = data.splits[split]
        mask = sp.groups >= 0
        pooled = [obs_lib.pool_observations(lg, mask, pooling) for lg in logits]
        votes = obs_lib.weighted_vote(pooled, weights, kind=kind)
        labelled = sp.obs_labels >= 0
        if labelled.any():
            out[split] = obs_lib.observation_metrics(votes[labelled], sp.obs_labels[labelled], (1, 5, 10),
                                                     data.poisonous)
        if split == "test" and workdir_lib.is_main():
            obs_lib.write_submission(submission, sp.obs_ids, votes)
    return out


def _given_weights(config, members: list):
    weights = tuple(config.get("ensemble_weights", ())) or None
    if weights is not None and len(weights) != len(members):
        raise ConfigError(f"config.ensemble_weights {weights} must give one weight per member {members}")
    return weights


def checkpoint_ensemble(config, workdir, task, scorer, data: FullData, mesh) -> dict:
    """Vote of the kept stage-2 checkpoints listed in `config.ensemble_steps` (all kept when
    empty), scored on val and test (weights `config.ensemble_weights`, equal when empty)."""
    workdir = workdir_lib.as_path(workdir)
    ckpt = checkpoint.RunCheckpoints(workdir, keep=config.keep_checkpoints)
    kept = sorted(ckpt.all_steps())
    steps = [s for s in (config.ensemble_steps or kept) if s in kept]
    if len(steps) < 2:
        ckpt.close()
        return {"members": steps, "note": "fewer than 2 kept checkpoints; no ensemble"}
    weights = _given_weights(config, steps)
    trainable = core.build(config, task, mesh)
    abstract = core.sharded_abstract(trainable)
    member = {"val": [], "test": []}
    for step in steps:
        params = ckpt.restore(abstract, None, step=step)["params"]
        for split, scores in member.items():
            scores.append(scorer.obs_logits(params, split))
    ckpt.close()
    kind = config.get("ensemble_kind", "soft")
    out = {"members": steps, "kind": kind, "weights": list(weights) if weights else "equal"}
    out.update(vote_and_score(config, data, member, weights, kind, workdir / SUBMISSION))
    return out


# Kept under its old name: `full.ensemble` was this function.
ensemble = checkpoint_ensemble


def member_config(c2, total_steps: int, eval_every: int) -> ml_collections.ConfigDict:
    """The headline stage-2 run's config (`full.stage_config` view) with another step count."""
    c = ml_collections.ConfigDict(c2.to_dict())
    c.total_steps = total_steps
    c.checkpoint_every = eval_every
    c.evals.fungiclef.every = eval_every
    return c


def member_weights(config, members: list[dict]) -> list[float] | None:
    """`config.ensemble_weights` when given; else each member's val value of
    `config.ensemble_weight_metric` (its selected checkpoint's); else None (equal)."""
    given = _given_weights(config, [m["epochs"] for m in members])
    if given:
        return list(given)
    metric = config.get("ensemble_weight_metric", "")
    if not metric:
        return None
    values = [m.get("weight_value") for m in members]
    if any(v is None for v in values):
        raise ConfigError(f"config.ensemble_weight_metric={metric!r}: a member has no val value of it "
                          f"({dict(zip([m['run'] for m in members], values))}); members are weighted by the "
                          f"metric their checkpoint was selected on (config.best_metric)")
    return [float(v) for v in values]


def runs_ensemble(config, c2, workdir, scorer, data: FullData, mesh, headline: dict, make_task) -> dict:
    """Separately trained stage-2 models at `config.ensemble_runs` epochs (one run each, reusing
    the headline run `<workdir>/stage2` where its step count is the same) and their weighted
    vote, scored on val and test. `c2` is the headline run's config, `headline` its summary,
    `make_task(c)` the stage-2 task of config `c` (the one stage-1 model inside)."""
    workdir = workdir_lib.as_path(workdir)
    s2 = config.stage2
    rows = stage_rows_per_epoch(config, "stage2", data)
    check_ensemble(config)
    members, logits = [], {"val": [], "test": []}
    for epochs in config.ensemble_runs:
        steps = epoch_steps(epochs, rows, c2.batch_size)
        every = (epoch_steps(s2.eval_every_epochs, rows, c2.batch_size) if s2.get("eval_every_epochs", 0)
                 else c2.evals.fungiclef.every)
        if steps == c2.total_steps:
            name, summary = "stage2", headline
        else:
            name = f"stage2_e{epochs:g}"
            c = member_config(c2, steps, min(every, steps))
            summary = core.run(c, workdir / name, make_task(c), mesh)
        step = summary["selection"]["step"]
        params = checkpoint.load_params(workdir / name / "checkpoints" / str(step))
        for split, scores in logits.items():
            scores.append(scorer.obs_logits(params, split))
        members.append({"epochs": epochs, "run": name, "total_steps": steps, "step": step,
                        "weight_value": summary["selection"].get("selection_value"),
                        "test": {k: summary.get(k) for k in HEADLINE}})
    weights = member_weights(config, members)
    kind = config.get("ensemble_kind", "soft")
    out = {"members": [m["run"] for m in members], "epochs": list(config.ensemble_runs), "runs": members,
           "kind": kind, "weights": weights or "equal",
           "weighted_by": ("config.ensemble_weights" if config.get("ensemble_weights", ()) else
                           config.get("ensemble_weight_metric", "") or "equal"),
           "label": f"weighted vote of stage-2 runs at {'/'.join(f'{e:g}' for e in config.ensemble_runs)} epochs",
           "submission": str(workdir / SUBMISSION)}
    out.update(vote_and_score(config, data, logits, weights, kind, workdir / SUBMISSION))
    return out


def run_ensemble(config, c2, workdir, task, scorer, data: FullData, mesh, headline: dict, make_task) -> dict:
    """The ensemble the config asks for: `runs_ensemble` when `config.ensemble_runs` is set, else
    `checkpoint_ensemble` of the headline run (`<workdir>/stage2`)."""
    workdir = workdir_lib.as_path(workdir)
    if config.get("ensemble_runs", ()):
        return runs_ensemble(config, c2, workdir, scorer, data, mesh, headline, make_task)
    return checkpoint_ensemble(c2, workdir / "stage2", task, scorer, data, mesh)
