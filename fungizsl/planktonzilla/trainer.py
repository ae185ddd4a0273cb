"""The supervised side of Planktonzilla's comparison: a FungalZSL image tower with a linear head.

``config.trainer = "fungizsl.planktonzilla.trainer"``. Everything but the objective is the
FungalZSL trainer's: the architecture and initialisation (:func:`fungizsl.fungalzsl.model.build_model`:
from scratch, a Hugging Face or open_clip folder, an earlier run), the images, splits,
augmentation and batch stream (:class:`fungizsl.fungalzsl.inputs.FungalZSLData`, captions drawn and
ignored), the optimizer, schedule, checkpoints and selection on val (:mod:`fungizsl.train.core`).
The image tower's embedding goes through one ``Dense(num_classes)`` (zero-initialised, so the first
step predicts uniformly) and the loss is softmax cross-entropy on the labels, with optional label
smoothing (``config.loss.label_smoothing``).

Evaluators: an entry of ``config.evals`` with ``type="classify"`` scores the head's argmax on its
split (``<name>/accuracy``, ``mean_per_class_accuracy``, ``per_class/<class>``, ``confusion``,
``top2``); robustness splits (``test_paper``, ``test_unseen``, ...) work as in FungalZSL. The
summary uses FungalZSL's names (``zeroshot_accuracy`` is then the head's accuracy, marked by
``"objective": "supervised"``) so one table reads both kinds of run. A supervised model cannot
name a class it was not trained on; that column of the comparison stays empty for it.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils

from fungizsl import placement, xla_options
from fungizsl import workdir as workdir_lib
from fungizsl.evaluate import plots, zeroshot
from fungizsl.fungalzsl import inputs
from fungizsl.fungalzsl import trainer as fungalzsl_trainer
from fungizsl.fungalzsl.model import build_model, check_init, make_tokenizer
from fungizsl.models import two_towers
from fungizsl.train import core

EVAL_TYPE = "classify"


class Classifier(nn.Module):
    """The CLIP model's image tower (its text tower is never called, so it has no parameters) and
    a linear head over the tower's output embedding."""

    clip: two_towers.ClipConfig
    num_classes: int

    def setup(self):
        self.towers = two_towers.ClipModel(self.clip)
        self.head = nn.Dense(self.num_classes, kernel_init=nn.initializers.zeros, name="head")

    def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
        return self.head(self.towers.encode_image(images, train=train))


def make_loss_fn(model: Classifier, label_smoothing: float = 0.0):
    """Mean softmax cross-entropy over the global batch; a BatchNorm tower uses the batch's statistics."""
    def loss_fn(params, extra, batch, rng):
        del rng  # no dropout
        variables = {"params": params, **extra}
        if extra:
            logits, extra = model.apply(variables, batch["image"], train=True, mutable=list(extra))
        else:
            logits = model.apply(variables, batch["image"])
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], model.num_classes), label_smoothing)
        loss = optax.softmax_cross_entropy(logits, targets).mean()
        accuracy = jnp.mean(jnp.argmax(logits, -1) == batch["label"])
        return loss, ({"train_accuracy": accuracy}, extra)
    return loss_fn


def with_loaded_tower(fresh: dict, loaded: dict, source: str = "the loaded model") -> dict:
    """``fresh`` classifier variables with the tower's entries replaced by a loaded CLIP's
    (``build_model``'s variables); the head stays as initialised. A collection the loaded model
    lacks, or a tower entry it does not have, is an error: the run would silently train from scratch."""
    out = {}
    for collection, tree in fresh.items():
        tower = dict(tree["towers"])
        if collection not in loaded:
            raise ValueError(f"{source} has no {collection!r} variables for the image tower (a model of another "
                             f"architecture than config.model.arch?)")
        missing = [k for k in tower if k not in loaded[collection]]
        if missing:
            raise ValueError(f"{source} lacks image-tower {collection} entries {missing} (a model of another "
                             f"architecture than config.model.arch?)")
        out[collection] = dict(tree, towers={k: loaded[collection][k] for k in tower})
    return out


class Evaluation:
    """The Task's ``evaluate``: the head's logits on a split, then every ``classify`` entry."""

    def __init__(self, config, data, model, tokenizer, mesh):
        self.data, self.tokenizer, self.mesh = data, tokenizer, mesh
        self.logits = xla_options.jit(lambda variables, images: model.apply(variables, images))
        size = max(mesh.size, config.get("eval_batch_size", config.batch_size))
        self.batch_size = -(-size // mesh.size) * mesh.size

    def split_logits(self, variables, split: str) -> tuple[np.ndarray, np.ndarray]:
        logits, labels = [], []
        for batch in self.data.eval_iterator(split, self.batch_size, self.tokenizer):
            placed = placement.to_global_batch(batch, self.mesh)
            out, label, valid = multihost_utils.process_allgather(
                (self.logits(variables, placed["image"]), placed["label"], placed["valid"]), tiled=True)
            logits.append(np.asarray(out)[valid])
            labels.append(np.asarray(label)[valid])
        return np.concatenate(logits), np.concatenate(labels)

    def __call__(self, variables, split, evals, step, out_dir):
        unknown = {n: c.get("type", n) for n, c in evals.items() if c.get("type", n) != EVAL_TYPE}
        if unknown:
            raise ValueError(f"the supervised trainer only runs type={EVAL_TYPE!r} evaluators, got {unknown}")
        logits, labels = self.split_logits(variables, split)
        names = self.data.class_names
        metrics = zeroshot.zero_shot_metrics(logits, labels, names, ks=(2,))
        results = {}
        for name in evals:
            results.update({f"{name}/accuracy": metrics["accuracy"],
                            f"{name}/mean_per_class_accuracy": metrics["mean_per_class_accuracy"],
                            f"{name}/top2": metrics["top_k"]["top2"], f"{name}/confusion": metrics["confusion"]})
            results.update({f"{name}/per_class/{c}": a for c, a in metrics["per_class_accuracy"].items()})
        if out_dir is not None and workdir_lib.is_main():
            plots.plot_confusion_matrix(metrics["confusion"], names, str(epath.Path(out_dir) / "confusion_matrix.png"),
                                        title=f"Supervised head ({split}, step {step})")
        return results


def summarise(results: dict, class_names, robust: dict[str, str]) -> dict:
    """FungalZSL's summary names for the numbers a supervised head has (no retrieval, no text)."""
    name = "classify"
    summary = {
        "objective": "supervised",
        "zeroshot_accuracy": results[f"{name}/accuracy"],
        "zeroshot_mean_per_class_accuracy": results[f"{name}/mean_per_class_accuracy"],
        "top2_accuracy": results[f"{name}/top2"],
        "per_class_accuracy": {c: results[f"{name}/per_class/{c}"] for c in class_names},
        "confusion_matrix": np.asarray(results[f"{name}/confusion"]).tolist(),
        "robustness": {
            condition: {"zeroshot_accuracy": results[f"{entry}/accuracy"],
                        "zeroshot_mean_per_class_accuracy": results[f"{entry}/mean_per_class_accuracy"],
                        "per_class_accuracy": {c: results[f"{entry}/per_class/{c}"] for c in class_names}}
            for entry, condition in robust.items() if f"{entry}/accuracy" in results},
    }
    unseen = summary["robustness"].get("unseen")
    if unseen is not None:
        summary["unseen_generator_zeroshot_accuracy"] = unseen["zeroshot_accuracy"]
    return summary


def make_task(config, workdir: epath.Path, mesh) -> core.Task:
    data = inputs.FungalZSLData(config)
    robust = fungalzsl_trainer.robustness_entries(config)
    tokenizer, _ = make_tokenizer(config, data.tokenizer_corpus, workdir)  # the batches carry captions
    clip, loaded = build_model(config, tokenizer)
    model = Classifier(clip.config, len(data.class_names))
    image = jnp.zeros((1, config.data.image_size, config.data.image_size, 3), jnp.float32)

    def init_variables(rng):
        return dict(model.init(rng, image))

    load = None
    if loaded is not None:
        def load():
            return with_loaded_tower(jax.tree.map(np.asarray, init_variables(jax.random.PRNGKey(config.seed))),
                                     dict(loaded), source=f"config.model.init={config.model.init}")

    def describe(results):
        shifted = [f"{c} {results[f'{n}/accuracy']:.3f}" for n, c in robust.items() if f"{n}/accuracy" in results]
        return f"supervised accuracy {results['classify/accuracy']:.4f}" + (
            ", on shifted test sets: " + ", ".join(shifted) if shifted else "")

    return core.Task(
        name="planktonzilla_supervised",
        init_variables=init_variables,
        load_variables=load,
        loss_fn=make_loss_fn(model, config.loss.get("label_smoothing", 0.0)),
        train_iterator=data.train_iterator(tokenizer),
        evaluate=Evaluation(config, data, model, tokenizer, mesh),
        summarise=lambda results: summarise(results, data.class_names, robust) | {
            "arch": config.model.arch, "init": config.model.init, "preset": config.data.preset,
            "seed": config.seed, "data_seed": config.get("data_seed", 0)},
        describe=describe)


def check_config(config: ml_collections.ConfigDict) -> None:
    """Before anything is rendered or written: the init folder, the evaluators and the selection."""
    check_init(config.model.init)
    inputs.check_data(config)
    core.check_evals(config)
    wrong = {n: c.get("type", n) for n, c in config.get("evals", {}).items() if c.get("type", n) != EVAL_TYPE}
    if wrong:
        raise ValueError(f"config.evals: the supervised trainer runs only type={EVAL_TYPE!r} entries, got {wrong}")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    check_config(config)
    workdir = workdir_lib.as_path(workdir)
    mesh = core.make_mesh(config)
    return core.run(config, workdir, make_task(config, workdir, mesh), mesh)
