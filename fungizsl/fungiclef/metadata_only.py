"""The FungiCLEF 2025 metadata-only trainer (`configs/fungiclef.py:metadata_only`): stage 2 of Lu
et al. ("Few-Shot Classification of Fungi Species Using Contrastive Representation Learning and
Multimodal Fusion", 2nd place) without the image, on the shared training core.

An observation's metadata tokens (BERT token states of the paper's sentence, one embedding per
categorical field, a numeric projection) go through the Q-Former to a classifier trained with
cross-entropy (`models.fewshot.FusionClassifier`). With `use_prior` the count-based metadata
prior (naive Bayes with genus back-off and a geographic kernel, `metadata_prior.py`) adds its
log-probabilities to the logits with a learned scale (`models.fewshot.ResidualFusion`); the
prior of a training observation leaves that observation out.

Data: `config.data.train_csv` and `eval_csv`. Checkpoints are selected on a temporal hold-out of
the training observations (`tables.temporal_holdout`); the final numbers come from the evaluation
CSV. With `refit_on_all` the model is trained once more on every training observation for the
selected number of steps (`workdir/refit_all`), and that model's numbers are the summary's.

The count prior alone is a candidate of the selection too: when it beats the best trained model
on the temporal hold-out, it is the reported model (no refit), so what the
summary reports is never worse on validation than its own baseline; both candidates' numbers stay
in the summary (`candidates`, `reported`).
"""

from __future__ import annotations

import dataclasses

import jax
import ml_collections
import numpy as np

from fungizsl import metrics_io, runs
from fungizsl import workdir as workdir_lib
from fungizsl.evaluate import observations as obs_lib
from fungizsl.evaluate.registry import run_evaluators
from fungizsl.fungiclef import metadata as md
from fungizsl.fungiclef import metadata_inputs as inputs_lib
from fungizsl.fungiclef import tables
from fungizsl.fungiclef.report import HEADLINE, describe_metadata, eval_entries, summarise
from fungizsl.models.fewshot import FusionClassifier, ResidualFusion, classifier_parts
from fungizsl.train import core


@dataclasses.dataclass
class MetadataSplits:
    """Per-split model inputs (numpy, one row per observation) and labels."""

    arrays: dict[str, dict[str, np.ndarray]]
    tables: dict[str, tables.ObservationTable]
    num_classes: int
    field_sizes: tuple[int, ...]
    poisonous: np.ndarray


def build_metadata_splits(config, train_table: tables.ObservationTable, eval_table: tables.ObservationTable,
                          show_progress: bool = True, train_on_all: bool = False,
                          num_classes: int | None = None) -> MetadataSplits:
    """Inputs of the train / val (temporal hold-out of the training CSV) / test (eval CSV) splits;
    `train_on_all` trains on every training observation (the refit after selection).
    `num_classes` (default: 1 + the largest label of the training CSV: a species only the
    evaluation CSV names gets no output) is given when a trained model
    scores another CSV (`fungiclef/scoring.py`): the model's class count wins."""
    d, m = config.data, config.model
    if num_classes is None:
        num_classes = int(train_table.labels.max()) + 1
    train_pos, val_pos = tables.temporal_holdout(train_table, d.holdout_years)
    split_tables = {"train": train_table if train_on_all else train_table.subset(train_pos),
                    "val": train_table.subset(val_pos), "test": eval_table}
    fit = split_tables["train"]
    vocab = md.FieldVocab.build(fit.records, tuple(d.fields))
    priors = {}
    if m.use_prior:
        # The prior is counts, not weights: the evaluation split gets one fitted on every training
        # observation (validation ones included); training rows leave themselves out; the
        # validation split sees only the training part, as it must.
        priors["train"] = priors["val"] = inputs_lib.fit_prior(config, num_classes, fit, genus_from=train_table)
        priors["test"] = priors["train"] if train_on_all else inputs_lib.fit_prior(config, num_classes, train_table)
    sentence = {}
    if m.use_text:
        states, mask, sentence = inputs_lib.encode_sentences(
            config, {s: t.records for s, t in split_tables.items()}, show_progress)
    arrays = {}
    for split, table in split_tables.items():
        a = inputs_lib.field_inputs(vocab, table.records)
        a["label"] = table.labels.astype(np.int32)
        if priors:
            a["prior"] = inputs_lib.prior_inputs(priors[split], table.records, leave_one_out=split == "train")
        if sentence:
            a["text_states"] = states[sentence[split]]
            a["text_mask"] = mask[sentence[split]]
        arrays[split] = a
    return MetadataSplits(arrays, split_tables, num_classes, vocab.sizes(),
                          tables.poisonous_by_class(train_table, num_classes))


def make_metadata_model(config, splits: MetadataSplits) -> ResidualFusion:
    """The fusion classifier over metadata tokens, plus the prior's log-probabilities (when given)
    with a learned scale: parameters `fusion/...` and `prior_log_scale`."""
    m = config.model
    fusion = FusionClassifier(
        num_classes=splits.num_classes, use_visual=False, use_text=m.use_text,
        field_sizes=splits.field_sizes if m.use_fields else (),
        num_numeric=len(md.NUMERIC_FEATURES) if m.use_numeric else 0,
        width=m.qformer_width, depth=m.qformer_depth, num_heads=m.qformer_heads, num_queries=m.num_queries,
        dropout=m.dropout, dtype=m.dtype)
    return ResidualFusion(fusion, ("prior",))


def _model_inputs(arrays: dict, use_prior: bool) -> dict:
    keys = ("field_ids", "numeric", "text_states", "text_mask") + (("prior",) if use_prior else ())
    return {k: v for k, v in arrays.items() if k in keys}


class MetadataEvaluation:
    """Logits per observation of a split (one "image" per observation) -> the evaluators."""

    def __init__(self, config, model, splits: MetadataSplits, mesh):
        self.config, self.splits = config, splits
        self.apply = jax.jit(lambda p, b: model.apply({"params": p}, b)["logits"])
        self.use_prior = config.model.use_prior
        self.mesh = mesh

    def logits(self, params, split):
        arrays = _model_inputs(self.splits.arrays[split], self.use_prior)
        n = len(arrays["field_ids"])
        size = self.config.get("eval_batch_size", 512)
        out = []
        for start in range(0, n, size):
            chunk = {k: v[start:start + size] for k, v in arrays.items()}
            pad = size - len(chunk["field_ids"])
            chunk = {k: np.concatenate([v, np.repeat(v[-1:], pad, 0)]) for k, v in chunk.items()}
            out.append(np.asarray(self.apply(params, chunk))[:size - pad])
        return np.concatenate(out)

    def __call__(self, variables, split, evals, step, out_dir):
        logits = self.logits(variables["params"], split)
        table = self.splits.tables[split]
        inputs = dict(logits=logits[:, None], image_mask=np.ones((len(logits), 1), bool), labels=table.labels,
                      observation_ids=table.observation_ids, poisonous_by_class=self.splits.poisonous)
        if "prior" in self.splits.arrays[split]:
            inputs["metadata_scores"] = self.splits.arrays[split]["prior"]
        return dict(run_evaluators(eval_entries(evals, out_dir, split), **inputs))


def make_metadata_task(config, splits: MetadataSplits, mesh) -> core.Task:
    model = make_metadata_model(config, splits)
    use_prior = config.model.use_prior
    train = splits.arrays["train"]
    example = {k: v[:2] for k, v in _model_inputs(train, use_prior).items()}
    init_variables, loss_fn = classifier_parts(model, lambda batch: _model_inputs(batch, use_prior), example)

    iterator = tables.shuffled_batches(train, config.batch_size, config.data.seed, jax.process_index(),
                                       jax.process_count())
    return core.Task(name="fungiclef_metadata", init_variables=init_variables, loss_fn=loss_fn,
                     train_iterator=iterator, evaluate=MetadataEvaluation(config, model, splits, mesh),
                     summarise=summarise, describe=describe_metadata)


def refit_on_all(config, workdir, mesh, train_table, eval_table, selected: dict) -> dict:
    """Trains again on every training observation (validation part included) for the number of
    steps selected on validation, and evaluates that model once on the evaluation CSV. The
    validation split plays no further part (its rows are now training rows)."""
    steps = int(selected["selection"]["step"])
    refit = ml_collections.ConfigDict(config.to_dict())
    refit.total_steps = max(steps, refit.warmup_steps + 1)
    refit.final_eval_checkpoint = "last"
    refit.best_metric = ""
    for name in refit.evals:
        refit.evals[name].every = 0
    splits = build_metadata_splits(refit, train_table, eval_table, workdir_lib.is_main(), train_on_all=True)
    summary = core.run(refit, workdir / "refit_all", make_metadata_task(refit, splits, mesh), mesh)
    summary["selection"] = dict(summary["selection"], selected_on_val=selected["selection"],
                                note="refit on all training observations for the selected number of steps")
    summary["before_refit"] = {k: selected.get(k) for k in HEADLINE}
    if workdir_lib.is_main():
        metrics_io.write_json(workdir / runs.SUMMARY_FILE, summary)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    core.check_evals(config)  # before the tables are read
    workdir = workdir_lib.as_path(workdir)
    mesh = core.make_mesh(config)
    train_table = tables.table_from_csv(config.data.train_csv)
    eval_table = tables.table_from_csv(config.data.eval_csv)
    splits = build_metadata_splits(config, train_table, eval_table, workdir_lib.is_main())
    selected = core.run(config, workdir, make_metadata_task(config, splits, mesh), mesh)
    wins = prior_alone_wins(config, splits, selected)
    summary = selected
    if config.get("refit_on_all", False) and not wins:
        summary = refit_on_all(config, workdir, mesh, train_table, eval_table, selected)
    return report_with_prior_candidate(config, workdir, splits, summary, selected)


def _prior_val(config, splits: MetadataSplits) -> dict | None:
    """The count prior alone on the validation split (the temporal hold-out), or None without it."""
    if "prior" not in splits.arrays["val"]:
        return None
    ks = tuple(config.evals.fungiclef.get("ks", (1, 5, 10)))
    return obs_lib.observation_metrics(splits.arrays["val"]["prior"], splits.tables["val"].labels, ks,
                                       splits.poisonous)


def prior_alone_wins(config, splits: MetadataSplits, selected: dict) -> bool:
    """Selection with the prior alone as one more candidate: True when, on validation, it beats
    the selected model by the selection metric (`config.best_metric`); a tie keeps the model."""
    prior = _prior_val(config, splits)
    value = selected.get("selection", {}).get("selection_value")
    if prior is None or value is None:
        return False
    return prior[config.best_metric.split("/", 1)[1]] > value


def report_with_prior_candidate(config, workdir, splits: MetadataSplits, summary: dict, selected: dict) -> dict:
    """The summary with both candidates (`candidates`: the trained model and the prior alone, each
    on val and on the evaluation CSV) and the one selection chose on val (`reported`); `selected`
    is the run selected on val (`summary` itself, or the refit's source). When the prior wins, the
    headline numbers and `submission_test.csv` are the prior's (the model's submission stays as
    `submission_test_model.csv`)."""
    prior_val = _prior_val(config, splits)
    if prior_val is None:
        return summary
    metric = config.best_metric.split("/", 1)[1]
    base = summary.get("baselines") or {}
    prior_test = {k: base.get(f"metadata/{k}") for k in HEADLINE if f"metadata/{k}" in base}
    model_val = selected.get("selection", {}).get("selection_value")
    wins = prior_alone_wins(config, splits, selected)
    summary = dict(summary, reported="prior_alone" if wins else "model", candidates={
        "model": {"val": {metric: model_val}, "test": {k: summary.get(k) for k in HEADLINE}},
        "prior_alone": {"val": prior_val, "test": prior_test}})
    if wins:
        summary.update({k: prior_test.get(k, summary.get(k)) for k in HEADLINE})
        summary["selection"] = dict(summary["selection"], note=(
            f"the count prior alone ({metric} {prior_val[metric]:.4f} on val) beats the best trained model "
            f"({model_val:.4f}): the prior alone is reported"))
    if workdir_lib.is_main():
        if wins:
            test = splits.tables["test"]
            folder = workdir_lib.as_path(workdir)
            if (folder / "submission_test.csv").exists():
                (folder / "submission_test.csv").rename(folder / "submission_test_model.csv")
            obs_lib.write_submission(folder / "submission_test.csv", test.observation_ids, splits.arrays["test"]["prior"])
        metrics_io.write_json(workdir_lib.as_path(workdir) / runs.SUMMARY_FILE, summary)
    workdir_lib.barrier("fungiclef_metadata_reported")
    return summary
