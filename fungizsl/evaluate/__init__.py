"""Evaluators as small plug-ins, in the style of big_vision, for FungalZSL's and FungiCLEF's metrics.

Each evaluator is a class built from its config (an `ml_collections.ConfigDict` or a plain dict)
whose `run(**inputs)` yields `(metric_name, value)` pairs. Evaluators consume *precomputed*
arrays, so they do not depend on the model code; a trainer's `Task.evaluate` (see
`fungizsl.train.core`) computes the inputs of a split once and hands the same keyword arguments
to every evaluator configured for that split. An evaluator takes the keywords it needs and must
accept (and ignore) the others via `**unused`.

Inputs (keyword names are the contract; N images, M texts, C classes, B observations of at most
G images each):

    zimg [N, D], image_labels [N], ztxt [M, D], text_labels [M], pairs [N] (optional),
    class_names (list of C names)                                    -- FungalZSL: zero-shot, Recall@K
    logits [B, G, C], image_mask [B, G] (bool, False on padding),
    labels [B], observation_ids [B], valid [B] (bool, False on padded observations)
                                                                     -- FungiCLEF: Top-K per observation

Configs live under `config.evals.<name>`; the key "type" picks the class (default: the name), so
two evaluations of one kind can sit side by side. The trainer core reads two more keys of every
entry, which evaluators ignore: `split` (the split it runs on during training, e.g. "val"; every
entry runs once more at the end on `config.final_eval_split`, "test") and `every` (steps between
runs; 0 = only the final pass):

    config.evals.zeroshot = dict(type="zeroshot", split="val", every=500, class_names=[...])
    config.evals.retrieval_gpt4o = dict(type="retrieval", split="val", every=500, ks=(1, 5, 10))
    for name, value in run_evaluators(config.evals, zimg=..., image_labels=..., ztxt=..., text_labels=...):
        writer.add_scalar(name, value, step)      # names are "<eval name>/<metric>"

Values are Python floats/ints except where a metric is an array (the confusion matrix); the
metrics_io writers skip non-scalars for TensorBoard and keep them in JSON. Plots are written
through etils.epath (`plot_dir` may be `gs://...`). New evaluators join with `@register("name")`.
"""

import os
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from fungizsl.evaluate import retrieval, zeroshot

EVALUATORS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding an evaluator to the registry under `name`."""
    def add(cls: type) -> type:
        if name in EVALUATORS and EVALUATORS[name] is not cls:
            raise ValueError(f"evaluator {name!r} is already registered as {EVALUATORS[name]}")
        EVALUATORS[name] = cls
        return cls
    return add


def get_evaluator(name: str) -> type:
    if name not in EVALUATORS:
        raise KeyError(f"unknown evaluator {name!r}; known: {sorted(EVALUATORS)}")
    return EVALUATORS[name]


def make_evaluator(name: str, config: Mapping[str, Any] | None = None):
    """Builds the evaluator `config["type"]` (default `name`) from its config."""
    config = {} if config is None else config
    return get_evaluator(config.get("type", name))(config)


def run_evaluators(evals_config: Mapping[str, Mapping[str, Any]], **inputs) -> Iterator[tuple[str, Any]]:
    """Runs every configured evaluator on the same inputs; yields ("<name>/<metric>", value)."""
    for name, config in evals_config.items():
        for metric, value in make_evaluator(name, config).run(**inputs):
            yield f"{name}/{metric}", value


@register("zeroshot")
class ZeroShotEvaluator:
    """Zero-shot classification: images against prompt-ensembled class embeddings.

    Config (other keys, such as the trainer's `split` or `sources`, are ignored here):
      class_names: names of the class ids 0..C-1. Optional: the trainer may instead pass
        `class_names=` to `run`; without either, classes are named "0".."C-1" with
        C = 1 + the largest label seen.
      ks: top-k accuracies to report (default (1, 5); k is clipped to C).
      plot_dir: if set, writes confusion_matrix.png and per_class_accuracy.png there.
      plot_title: title prefix for the plots (default "Zero-shot").
    Inputs: the caption embeddings `ztxt` with their class ids `text_labels` (several captions
    per class are averaged, CLIP's prompt ensemble); the images `zimg` with `image_labels`.
    Metrics: accuracy, mean_per_class_accuracy, top{k}, per_class/<class name>, confusion ([C, C]
    array, rows true, columns predicted).
    """

    def __init__(self, config: Mapping[str, Any]):
        names = config.get("class_names", None)
        self.class_names = None if names is None else list(names)
        self.ks = tuple(config.get("ks", (1, 5)))
        self.plot_dir = config.get("plot_dir", None)
        self.plot_title = config.get("plot_title", "Zero-shot")

    def run(self, *, zimg, image_labels, ztxt, text_labels, class_names=None,
            **unused) -> Iterator[tuple[str, Any]]:
        names = self.class_names if self.class_names is not None else class_names
        if names is None:
            num_classes = 1 + int(max(np.max(image_labels), np.max(text_labels)))
            names = [str(c) for c in range(num_classes)]
        names = list(names)
        class_emb = zeroshot.class_embeddings(zeroshot.group_by_label(ztxt, text_labels, len(names)))
        logits = zeroshot.zero_shot_predict(zimg, class_emb)
        m = zeroshot.zero_shot_metrics(logits, image_labels, names, self.ks)
        yield "accuracy", m["accuracy"]
        yield "mean_per_class_accuracy", m["mean_per_class_accuracy"]
        yield from m["top_k"].items()
        for name, acc in m["per_class_accuracy"].items():
            yield f"per_class/{name}", acc
        yield "confusion", m["confusion"]
        if self.plot_dir:
            from fungizsl.evaluate import plots  # matplotlib only when plotting

            plots.plot_confusion_matrix(m["confusion"], names,
                                        os.path.join(self.plot_dir, "confusion_matrix.png"),
                                        title=f"{self.plot_title} confusion matrix")
            plots.plot_per_class_accuracy(m["per_class_accuracy"],
                                          os.path.join(self.plot_dir, "per_class_accuracy.png"),
                                          title=f"{self.plot_title} per-class accuracy")


@register("retrieval")
class RetrievalEvaluator:
    """Recall@K image->text and text->image, class level and instance level side by side.

    Config:
      ks: K values (default (1, 5, 10); clipped to the number of candidates).
      levels: which of ("class", "instance") to report (default both).
    Metrics: "{level}/{direction}/recall@{K}", ".../median_rank", ".../num_queries"; see
    `fungizsl.evaluate.retrieval.recall_at_k` for the definitions and tie handling.
    """

    def __init__(self, config: Mapping[str, Any]):
        self.ks = tuple(config.get("ks", retrieval.DEFAULT_KS))
        self.levels = tuple(config.get("levels", ("class", "instance")))
        unknown = set(self.levels) - {"class", "instance"}
        if unknown:
            raise ValueError(f"unknown retrieval levels {sorted(unknown)}")

    def run(self, *, zimg, ztxt, image_labels=None, text_labels=None, pairs=None,
            **unused) -> Iterator[tuple[str, Any]]:
        if "class" not in self.levels:
            image_labels = text_labels = None
        results = retrieval.recall_at_k(zimg, ztxt, image_labels, text_labels, pairs, self.ks)
        yield from ((k, v) for k, v in results.items() if k.split("/", 1)[0] in self.levels)
