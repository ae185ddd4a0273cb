"""FungiCLEF 2025 few-shot trainer (Lu et al., "Few-Shot Classification of Fungi Species Using
Contrastive Representation Learning and Multimodal Fusion", 2nd place), on the shared core.

`config.system` picks what runs:

* `metadata_only`: stage 2 without the image: metadata tokens (BERT token states of the paper's
  sentence, one embedding per categorical field, a numeric projection) fused by the Q-Former and a
  classifier trained with cross-entropy, on top of a count-based metadata prior (naive Bayes with
  genus back-off and a geographic kernel, `fungiclef/metadata_prior.py`) whose log-scores enter
  the logits with a learned scale; the prior of a training observation leaves that observation
  out. Checkpoints are selected on a temporal hold-out of the training observations; the final
  numbers come from `config.data.eval_csv`.
* `full` (features -> DWCL stage 1 -> Q-Former stage 2 on images -> checkpoint ensemble):
  `train/fungiclef_full.py`.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath

from fungizsl import workdir as workdir_lib
from fungizsl.evaluate import run_evaluators
from fungizsl.fungiclef import metadata as md
from fungizsl.fungiclef.metadata_prior import MetadataPrior
from fungizsl.models.fewshot import FusionClassifier
from fungizsl.train import core
from fungizsl.train import fungiclef_data as fd

HEADLINE = ("top1", "top5", "top10", "macro_f1", "poison_cost", "num_observations")


class PriorPlusFusion(nn.Module):
    """FusionClassifier logits + exp(prior_log_scale) * log_softmax(prior scores)."""

    fusion: FusionClassifier

    @nn.compact
    def __call__(self, batch, train: bool = False):
        out = self.fusion(batch, train)
        if "prior" in batch:
            scale = jnp.exp(self.param("prior_log_scale", nn.initializers.zeros, ()))
            out["logits"] = out["logits"] + scale * jax.nn.log_softmax(batch["prior"].astype(jnp.float32), -1)
        return out


def _log_softmax_np(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


@dataclasses.dataclass
class MetadataSplits:
    """Per-split model inputs (numpy, one row per observation) and labels."""

    arrays: dict[str, dict[str, np.ndarray]]
    tables: dict[str, fd.ObservationTable]
    num_classes: int
    field_sizes: tuple[int, ...]
    poisonous: np.ndarray


def build_metadata_splits(config, train_table: fd.ObservationTable, eval_table: fd.ObservationTable,
                          show_progress: bool = True, train_on_all: bool = False,
                          num_classes: int | None = None) -> MetadataSplits:
    """Inputs of the train / val (temporal hold-out of the training CSV) / test (eval CSV) splits;
    `train_on_all` trains on every training observation (the refit after selection).
    `num_classes` (default: 1 + the largest label of both CSVs) is given when a trained model
    scores another CSV (`train/fungiclef_evaluate.py`): the model's class count wins."""
    d, m = config.data, config.model
    if num_classes is None:
        num_classes = int(max(train_table.labels.max(), eval_table.labels.max())) + 1
    train_pos, val_pos = fd.temporal_holdout(train_table, d.holdout_years)
    tables = {"train": train_table if train_on_all else train_table.subset(train_pos),
              "val": train_table.subset(val_pos), "test": eval_table}
    fit = tables["train"]
    vocab = md.FieldVocab.build(fit.records, tuple(d.fields))
    priors = {}
    if m.use_prior:
        # The prior is counts, not weights: the evaluation split gets one fitted on every training
        # observation (validation ones included); training rows leave themselves out; the
        # validation split sees only the training part, as it must.
        genus = fd.level_of_class(train_table, num_classes, "genus")
        make = lambda: MetadataPrior(num_classes, geo_sigma_km=d.prior_geo_sigma_km,
                                     genus_weight=d.prior_genus_weight, alpha=d.prior_alpha)
        priors["train"] = priors["val"] = make().fit(fit.records, fit.labels, genus)
        priors["test"] = priors["train"] if train_on_all else make().fit(train_table.records, train_table.labels, genus)
    texts = {}
    if m.use_text:
        from fungizsl.fungiclef import text as text_lib

        sentences = {s: [md.render_text(r, tuple(d.extra_text_fields), d.text_with_year)
                         for r in t.records] for s, t in tables.items()}
        unique = sorted({x for v in sentences.values() for x in v})
        states, mask = text_lib.encode_sentences(unique, m.text_model, d.text_max_length,
                                                 show_progress=show_progress)
        where = {x: i for i, x in enumerate(unique)}
        texts = {s: np.asarray([where[x] for x in v]) for s, v in sentences.items()}
    arrays = {}
    for split, table in tables.items():
        a = {"field_ids": vocab.encode(table.records), "numeric": md.numeric_features(table.records),
             "label": table.labels.astype(np.int32)}
        if priors:
            scores = priors[split].scores(table.records, leave_one_out=split == "train")
            a["prior"] = _log_softmax_np(scores).astype(np.float32)
        if texts:
            a["text_states"] = states[texts[split]]
            a["text_mask"] = mask[texts[split]]
        arrays[split] = a
    return MetadataSplits(arrays, tables, num_classes, vocab.sizes(),
                          fd.poisonous_by_class(train_table, num_classes))


def make_metadata_model(config, splits: MetadataSplits) -> PriorPlusFusion:
    m = config.model
    fusion = FusionClassifier(
        num_classes=splits.num_classes, use_visual=False, use_text=m.use_text,
        field_sizes=splits.field_sizes if m.use_fields else (),
        num_numeric=len(md.NUMERIC_FEATURES) if m.use_numeric else 0,
        width=m.qformer_width, depth=m.qformer_depth, num_heads=m.qformer_heads, num_queries=m.num_queries,
        dropout=m.dropout, dtype=m.dtype)
    return PriorPlusFusion(fusion)


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
        entries = {}
        for name, cfg in evals.items():
            cfg = {k: v for k, v in dict(cfg).items() if k not in ("split", "every")}
            if out_dir is not None and cfg.get("submission_path") == "":
                cfg.pop("submission_path")
            elif out_dir is not None and cfg.get("write_submission", False):
                cfg["submission_path"] = str(epath.Path(out_dir) / f"submission_{split}.csv")
            cfg.pop("write_submission", None)
            entries[name] = cfg
        inputs = dict(logits=logits[:, None], image_mask=np.ones((len(logits), 1), bool), labels=table.labels,
                      observation_ids=table.observation_ids, poisonous_by_class=self.splits.poisonous)
        if "prior" in self.splits.arrays[split]:
            inputs["metadata_scores"] = self.splits.arrays[split]["prior"]
        return dict(run_evaluators(entries, **inputs))


def summarise(results: dict, eval_name: str = "fungiclef") -> dict:
    summary = {k: results.get(f"{eval_name}/{k}") for k in HEADLINE}
    baselines = {k[len(eval_name) + len("/baselines/"):]: v for k, v in results.items()
                 if k.startswith(f"{eval_name}/baselines/")}
    if baselines:
        summary["baselines"] = baselines
    pooling = {k[len(eval_name) + len("/pooling/"):]: v for k, v in results.items()
               if k.startswith(f"{eval_name}/pooling/")}
    if pooling:
        summary["pooling"] = pooling
    return summary


def make_metadata_task(config, splits: MetadataSplits, mesh) -> core.Task:
    model = make_metadata_model(config, splits)
    use_prior = config.model.use_prior
    train = splits.arrays["train"]
    example = {k: v[:2] for k, v in _model_inputs(train, use_prior).items()}

    def init_variables(rng):
        return model.init({"params": rng, "dropout": rng}, example)

    def loss_fn(params, extra, batch, rng):
        logits = model.apply({"params": params}, _model_inputs(batch, use_prior), train=True,
                             rngs={"dropout": rng})["logits"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"train_top1": accuracy}, extra)

    iterator = fd.shuffled_batches(train, config.batch_size, config.data.seed, jax.process_index(),
                                   jax.process_count())
    return core.Task(name="fungiclef_metadata", init_variables=init_variables, loss_fn=loss_fn,
                     train_iterator=iterator, evaluate=MetadataEvaluation(config, model, splits, mesh),
                     summarise=summarise, describe=lambda r: ", ".join(
                         f"{k.split('/', 1)[1]} {v:.4f}" for k, v in r.items()
                         if k.split("/", 1)[1] in ("top1", "top5", "baselines/metadata/top5")))


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
        from fungizsl.evaluate import metrics_io

        metrics_io.write_json(workdir / core.SUMMARY_FILE, summary)
    return summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    workdir = workdir_lib.as_path(workdir)
    if config.system == "metadata_only":
        mesh = core.make_mesh(config)
        train_table = fd.table_from_csv(config.data.train_csv)
        eval_table = fd.table_from_csv(config.data.eval_csv)
        splits = build_metadata_splits(config, train_table, eval_table, workdir_lib.is_main())
        summary = core.run(config, workdir, make_metadata_task(config, splits, mesh), mesh)
        if not config.get("refit_on_all", False):
            return summary
        return refit_on_all(config, workdir, mesh, train_table, eval_table, summary)
    if config.system == "full":
        from fungizsl.train import fungiclef_full

        return fungiclef_full.train_and_evaluate(config, workdir)
    raise ValueError(f"config.system must be 'metadata_only' or 'full', got {config.system!r}")
