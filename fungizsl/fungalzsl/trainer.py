"""FungalZSL trainer: CLIP fine-tuned with the symmetric contrastive loss on synthetic growth stages.

Rani, Arroyo, Durdevic (2025), "FungalZSL: Zero-Shot Fungal Classification with Image Captioning
Using a Synthetic Data Approach". This module is the paper's :class:`~fungizsl.train.core.Task`
(``config.trainer = "fungizsl.fungalzsl.trainer"``): the CLIP model of
:mod:`fungizsl.fungalzsl.model` (a ViT, modified-ResNet or small conv image tower; from scratch with
a BPE trained on the captions, from a Hugging Face or open_clip folder, or from an earlier run) fed
by :mod:`fungizsl.fungalzsl.inputs`, the loss ``L_image + L_text`` (optionally class-aware), the
evaluators (zero-shot accuracy, Recall@K) and the export (Hugging Face, or open_clip for a ResNet
tower). Entries of ``config.evals`` on a robustness split (``test_paper``, ``test_gray``,
``test_unseen``, ...; :mod:`fungizsl.data.robustness`) run once, after training, and land under
``robustness/<condition>`` in ``summary.json``; ``test_unseen`` (the independent generator) also
as ``unseen_generator_zeroshot_accuracy``. The loop is :mod:`fungizsl.train.core`.
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from fungizsl import losses, placement, weights, xla_options
from fungizsl import workdir as workdir_lib
from fungizsl.data import robustness
from fungizsl.evaluate.registry import run_evaluators
from fungizsl.fungalzsl import inputs
from fungizsl.fungalzsl.model import build_model, check_init, make_tokenizer
from fungizsl.models import two_towers
from fungizsl.train import core


def make_encoder(model):
    """(variables, images, input_ids) -> L2-normalised (image, text) embeddings: the evaluation step."""
    def encode(variables, images, input_ids):
        return (two_towers.l2_normalize(model.apply(variables, images, method="encode_image")),
                two_towers.l2_normalize(model.apply(variables, input_ids, method="encode_text")))
    return encode


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

def make_loss_fn(model, class_aware: bool, combine: str, instance_weight: float = 0.0):
    """The Task's loss: the symmetric contrastive loss on the global batch (class-aware, plus
    `instance_weight` times the per-image term: :func:`fungizsl.losses.contrastive_loss`)."""
    encode = make_encoder(model)

    def loss_fn(params, extra, batch, rng):
        del rng  # CLIP has no dropout
        variables = {"params": params, **extra}
        if extra:  # a ResNet tower: BatchNorm on the global batch's statistics (models/resnet.py)
            zimg, extra = model.apply(variables, batch["image"], train=True, method="encode_image",
                                      mutable=list(extra))
            zimg = two_towers.l2_normalize(zimg)
            ztxt = two_towers.l2_normalize(model.apply(variables, batch["input_ids"], method="encode_text"))
        else:
            zimg, ztxt = encode(variables, batch["image"], batch["input_ids"])
        scale = jnp.exp(jnp.minimum(params["logit_scale"], two_towers.MAX_LOGIT_SCALE))
        loss, metrics = losses.contrastive_loss(zimg, ztxt, scale, labels=batch["label"],
                                                class_aware=class_aware, combine=combine,
                                                instance_weight=instance_weight)
        return loss, (dict(metrics, temperature_scale=scale), extra)

    return loss_fn


def clamp_logit_scale(params):
    """CLIP clamps the learnable temperature so that logits never exceed 100."""
    return dict(params, logit_scale=jnp.minimum(params["logit_scale"], two_towers.MAX_LOGIT_SCALE))


def init_fn(model):
    def init_variables(rng):  # params, and a ResNet tower's batch_stats
        return dict(model.init(rng, *weights.clip.dummy_inputs(model.config)))
    return init_variables


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def embed_split(encode_fn, params, iterator, mesh, desc):
    """Normalised image and paired-caption embeddings of one evaluation split, on every host."""
    zimg, ztxt, labels = [], [], []
    quiet = not (workdir_lib.is_main() and sys.stderr.isatty())  # no bar in logs (CI, SLURM)
    for batch in tqdm(iterator, desc=desc, leave=False, disable=quiet):
        placed = placement.to_global_batch(batch, mesh)
        zi, zt = encode_fn(params, placed["image"], placed["input_ids"])
        zi, zt, label, valid = multihost_utils.process_allgather(
            (zi, zt, placed["label"], placed["valid"]), tiled=True)
        zimg.append(zi[valid])
        ztxt.append(zt[valid])
        labels.append(label[valid])
    return np.concatenate(zimg), np.concatenate(ztxt), np.concatenate(labels)


def embed_texts(encode_text_fn, params, tokenizer, texts, mesh, batch_size):
    """Text embeddings of ``texts`` in order. Each global batch is cut into one slice per process:
    every process tokenizes and feeds only its slice, and the results are gathered."""
    count, me = jax.process_count(), jax.process_index()
    local = batch_size // count
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        slices = [chunk[p * local:(p + 1) * local] for p in range(count)]
        mine = slices[me] + [""] * (local - len(slices[me]))
        ids = placement.to_global_batch({"input_ids": tokenizer(mine)["input_ids"]}, mesh)["input_ids"]
        gathered = multihost_utils.process_allgather(encode_text_fn(params, ids), tiled=True)
        valid = np.concatenate([np.arange(local) < len(s) for s in slices])
        out.append(np.asarray(gathered)[valid])
    return np.concatenate(out)


class Evaluation:
    """The Task's ``evaluate``: embeds a split once, then runs the configured evaluators.

    Inputs handed to every evaluator (the :mod:`fungizsl.evaluate` contract): ``zimg [N, D]``,
    ``image_labels [N]``, ``ztxt [N, D]`` (each image's own caption), ``text_labels [N]``,
    ``class_names``. ``zeroshot`` entries instead get, per caption source in their ``sources``,
    the embeddings of that source's texts for the split (prompt ensemble per class).
    """

    def __init__(self, config, data, model, tokenizer, mesh):
        self.config, self.data, self.tokenizer, self.mesh = config, data, tokenizer, mesh
        self.encode = xla_options.jit(make_encoder(model))
        self.encode_text = xla_options.jit(lambda variables, ids: two_towers.l2_normalize(
            model.apply(variables, ids, method="encode_text")))
        size = max(mesh.size, config.get("eval_batch_size", config.batch_size))
        self.batch_size = -(-size // mesh.size) * mesh.size

    def __call__(self, variables, split, evals, step, out_dir):
        params, data = variables, self.data  # all collections (a ResNet's batch_stats too)
        zimg, ztxt, labels = embed_split(self.encode, params,
                                         data.eval_iterator(split, self.batch_size, self.tokenizer),
                                         self.mesh, f"embed {split} images (step {step})")
        results = {}
        plain = {n: c for n, c in evals.items() if c.get("type", n) != "zeroshot"}
        results.update(run_evaluators(plain, zimg=zimg, image_labels=labels, ztxt=ztxt, text_labels=labels,
                                      class_names=data.class_names))
        for name, cfg in evals.items():
            if cfg.get("type", name) == "zeroshot":
                results.update(self._zeroshot(name, cfg, params, split, step, zimg, labels, out_dir))
        return results

    def _zeroshot(self, name, cfg, params, split, step, zimg, labels, out_dir):
        data, results = self.data, {}
        for i, source in enumerate(cfg.get("sources", ("templates",))):
            by_class = data.captions(source, split)
            texts = [t for c in data.class_names for t in by_class[c]]
            text_labels = np.asarray([k for k, c in enumerate(data.class_names) for _ in by_class[c]])
            class_ztxt = embed_texts(self.encode_text, params, self.tokenizer, texts, self.mesh, self.batch_size)
            label = data.source_label(source)
            prefix = name if i == 0 else f"{name}_{label}"
            evaluator = {k: v for k, v in cfg.items() if k not in ("sources", "split", "every")}
            evaluator.update(type="zeroshot", plot_title=f"Zero-shot ({label} captions, {split}, step {step})",
                             plot_dir=out_dir if (i == 0 and out_dir is not None and workdir_lib.is_main()) else None)
            results.update(run_evaluators({prefix: evaluator}, zimg=zimg, image_labels=labels, ztxt=class_ztxt,
                                          text_labels=text_labels, class_names=data.class_names))
            results[f"{name}_by_source/{label}"] = results[f"{prefix}/accuracy"]
        return results


def robustness_entries(config) -> dict[str, str]:
    """eval name -> condition, for the entries of config.evals on a shifted test set."""
    return {name: robustness.condition_of(cfg["split"]) for name, cfg in config.get("evals", {}).items()
            if robustness.is_robustness_split(cfg["split"])}


def summarise(results: dict, class_names, robust: dict[str, str] | None = None) -> dict:
    """The headline numbers, flat, under the names the README and launch/local.sh print;
    ``robustness/<condition>`` holds each shifted test set's zero-shot numbers."""
    summary = {
        "zeroshot_accuracy": results["zeroshot/accuracy"],
        "zeroshot_mean_per_class_accuracy": results["zeroshot/mean_per_class_accuracy"],
        "recall@1_image_to_text": results["retrieval/class/image_to_text/recall@1"],
        "recall@1_text_to_image": results["retrieval/class/text_to_image/recall@1"],
        "recall@5_image_to_text": results["retrieval/class/image_to_text/recall@5"],
        "recall@5_text_to_image": results["retrieval/class/text_to_image/recall@5"],
        "recall@10_image_to_text": results.get("retrieval/class/image_to_text/recall@10"),
        "recall@10_text_to_image": results.get("retrieval/class/text_to_image/recall@10"),
        "instance_recall@1_image_to_text": results.get("retrieval/instance/image_to_text/recall@1"),
        "instance_recall@1_text_to_image": results.get("retrieval/instance/text_to_image/recall@1"),
        "instance_recall@5_image_to_text": results.get("retrieval/instance/image_to_text/recall@5"),
        "instance_recall@5_text_to_image": results.get("retrieval/instance/text_to_image/recall@5"),
        "instance_recall@10_image_to_text": results.get("retrieval/instance/image_to_text/recall@10"),
        "instance_recall@10_text_to_image": results.get("retrieval/instance/text_to_image/recall@10"),
        "per_class_accuracy": {c: results[f"zeroshot/per_class/{c}"] for c in class_names},
        "confusion_matrix": np.asarray(results["zeroshot/confusion"]).tolist(),
    }
    # Zero-shot accuracy with each evaluation caption source, for the caption-source cross table.
    summary["zeroshot_accuracy_by_caption_source"] = {
        k.split("/", 1)[1]: v for k, v in results.items() if k.startswith("zeroshot_by_source/")}
    summary["robustness"] = {
        condition: {"zeroshot_accuracy": results[f"{name}/accuracy"],
                    "zeroshot_mean_per_class_accuracy": results[f"{name}/mean_per_class_accuracy"],
                    "per_class_accuracy": {c: results[f"{name}/per_class/{c}"] for c in class_names}}
        for name, condition in (robust or {}).items() if f"{name}/accuracy" in results}
    # the headline of issue 21: images of an independent, evaluation-only generator
    if robustness.UNSEEN in summary["robustness"]:
        summary["unseen_generator_zeroshot_accuracy"] = summary["robustness"][robustness.UNSEEN]["zeroshot_accuracy"]
    return summary


def describe(results: dict, robust: dict[str, str] | None = None) -> str:
    parts = []
    if "zeroshot/accuracy" in results:
        parts.append(f"zero-shot accuracy {results['zeroshot/accuracy']:.4f}")
    if "retrieval/class/image_to_text/recall@1" in results:
        parts.append(f"image->text R@1 {results['retrieval/class/image_to_text/recall@1']:.4f}")
    shifted = [f"{condition} {results[f'{name}/accuracy']:.3f}" for name, condition in (robust or {}).items()
               if f"{name}/accuracy" in results]
    if shifted:
        parts.append("zero-shot on shifted test sets: " + ", ".join(shifted))
    return ", ".join(parts) or "done"


# ---------------------------------------------------------------------------------------------
# The task
# ---------------------------------------------------------------------------------------------

def make_task(config, workdir: epath.Path, mesh) -> core.Task:
    data = inputs.FungalZSLData(config)
    robust = robustness_entries(config)
    tokenizer, tokenizer_dir = make_tokenizer(config, data.tokenizer_corpus, workdir)
    model, variables = build_model(config, tokenizer)

    def export(variables, out_dir):
        if two_towers.is_convnet(model.config):
            print("export: the cnn_tiny tower has no Hugging Face or open_clip format; evaluate or "
                  f"fine-tune the run folder itself ({out_dir})", flush=True)
        elif two_towers.is_resnet(model.config):  # no Hugging Face class for it: open_clip's format
            weights.open_clip.export_open_clip(model, variables, str(out_dir / "open_clip_export"),
                                               tokenizer_from=str(tokenizer_dir))
        else:  # usable from PyTorch: transformers.CLIPModel.from_pretrained
            weights.export_pretrained(model, variables["params"], out_dir / "hf_export",
                                      tokenizer_from=tokenizer_dir)

    return core.Task(
        name="fungalzsl",
        init_variables=init_fn(model),
        load_variables=(lambda: variables) if variables is not None else None,
        loss_fn=make_loss_fn(model, config.loss.class_aware, config.loss.get("combine", "mean"),
                             config.loss.get("instance_weight", 0.0)),
        post_update=clamp_logit_scale,
        train_iterator=data.train_iterator(tokenizer),
        evaluate=Evaluation(config, data, model, tokenizer, mesh),
        export=export if config.get("export_hf", True) else None,
        summarise=lambda results: summarise(results, data.class_names, robust) | {
            "arch": config.model.arch, "init": config.model.init, "captions": config.data.captions,
            "preset": config.data.preset, "seed": config.seed, "data_seed": config.get("data_seed", 0)},
        describe=lambda results: describe(results, robust))


def check_config(config: ml_collections.ConfigDict) -> None:
    """What ``fungizsl.main`` checks before anything is rendered, trained or written: the
    ``config.model.init`` folder and the evaluators' splits (one-line
    :class:`~fungizsl.errors.ConfigError` otherwise), before the workdir is created."""
    check_init(config.model.init)
    inputs.check_data(config)
    core.check_evals(config)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    core.check_evals(config)  # before the tokenizer is trained or a split rendered
    workdir = workdir_lib.as_path(workdir)
    mesh = core.make_mesh(config)
    return core.run(config, workdir, make_task(config, workdir, mesh), mesh)
