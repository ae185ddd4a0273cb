"""FungalZSL trainer: CLIP fine-tuned with the symmetric contrastive loss on synthetic growth stages.

Rani, Arroyo, Durdevic (2025), "FungalZSL: Zero-Shot Fungal Classification with Image Captioning
Using a Synthetic Data Approach". This module is the paper's :class:`~fungizsl.train.core.Task`:
the CLIP model with a ViT or modified-ResNet image tower (from scratch with a BPE trained on the
captions, from a Hugging Face or open_clip folder, or from an earlier run), the loss
``L_image + L_text`` (optionally class-aware), the evaluators (zero-shot accuracy, Recall@K) and
the export (Hugging Face, or open_clip for a ResNet tower). Entries of ``config.evals`` on a
robustness split (``test_paper``, ``test_gray``, ...; :mod:`fungizsl.data.robustness`) run once,
after training, and land under ``robustness/<condition>`` in ``summary.json``. The loop is :mod:`fungizsl.train.core`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import sys
import tempfile

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from etils import epath
from jax.experimental import multihost_utils
from tqdm import tqdm

from fungizsl import losses, placement, tokenizers, weights
from fungizsl.data import robustness
from fungizsl import workdir as workdir_lib
from fungizsl.evaluate import run_evaluators
from fungizsl.models import convnet, resnet, two_towers
from fungizsl.train import checkpoint, core, fungalzsl_data
from fungizsl.weights.convert import stack_layers

SUMMARY_FILE = core.SUMMARY_FILE


# ---------------------------------------------------------------------------------------------
# Tokenizer and model
# ---------------------------------------------------------------------------------------------

def _is_hf_folder(init: str) -> bool:
    return init != "scratch" and (epath.Path(init) / "config.json").is_file()


def _is_open_clip_folder(init: str) -> bool:
    return init != "scratch" and weights.open_clip.is_open_clip_checkpoint(init)


def _run_dir(path) -> epath.Path:
    """The workdir of an earlier run, given it or a folder inside it (a checkpoint step)."""
    path = workdir_lib.as_path(path)
    for candidate in (path, *path.parents):
        if (candidate / "tokenizer").is_dir():
            return candidate
    raise FileNotFoundError(f"config.model.init={str(path)!r}: no fungizsl run (with a tokenizer folder) there")


def make_tokenizer(config, corpus, workdir: epath.Path):
    """(tokenizer, folder it lives in). From scratch, process 0 trains the BPE on the training
    captions and writes it into the workdir; the others wait and read that same file."""
    init, m = config.model.init, config.model
    if _is_hf_folder(init):
        return tokenizers.load_tokenizer(init), epath.Path(init)
    if _is_open_clip_folder(init):  # its own tokenizer files, else CLIP's BPE (same on every process)
        local = tempfile.mkdtemp(prefix="open_clip_bpe_")
        tokenizer, folder = weights.open_clip.load_open_clip_tokenizer(init, local)
        return tokenizer, epath.Path(folder)
    folder = workdir / "tokenizer" if init == "scratch" else _run_dir(init) / "tokenizer"
    exists = (folder / "tokenizer.json").exists()
    workdir_lib.barrier("tokenizer_checked")  # every process has looked before anyone writes
    if not exists:
        if init != "scratch":
            raise FileNotFoundError(f"{folder} is missing: config.model.init={init!r} is not a fungizsl run")
        if workdir_lib.is_main():
            with tempfile.TemporaryDirectory() as local:
                tokenizers.train_bpe_tokenizer(corpus, m.vocab_size, local, context_length=m.text_context)
                workdir_lib.upload_dir(local, folder)
        workdir_lib.barrier("tokenizer_written")
    local = workdir_lib.local_dir(folder)
    tokenizer = tokenizers.load_tokenizer(local, length=m.text_context)
    digest = hashlib.sha256((epath.Path(local) / "tokenizer.json").read_bytes()).hexdigest()[:16]
    print(f"process {jax.process_index()}: tokenizer {folder} sha256 {digest}", flush=True)
    return tokenizer, folder


def tower_config(config, vision):
    """The architecture's image tower at the data's resolution, with the from-scratch overrides."""
    m = config.model
    if isinstance(vision, resnet.ResNetConfig):
        width = m.get("resnet_width") or vision.width
        return dataclasses.replace(vision, image_size=config.data.image_size, width=width,
                                   heads=vision.heads if width == vision.width else max(1, width * 32 // 64),
                                   layers=tuple(m.get("resnet_layers") or vision.layers),
                                   frozen_batch_norm=m.get("freeze_bn_stats", False))
    if isinstance(vision, convnet.ConvNetConfig):
        return dataclasses.replace(vision, image_size=config.data.image_size,
                                   widths=tuple(m.get("convnet_widths") or vision.widths),
                                   standardize_input=m.get("standardize_input", vision.standardize_input),
                                   frozen_batch_norm=m.get("freeze_bn_stats", False))
    return dataclasses.replace(vision, image_size=config.data.image_size,
                               patch_size=m.get("patch_size") or vision.patch_size)


def build_model(config, tokenizer):
    """(module, host variables or None): {"params": ...} plus "batch_stats" for a conv tower;
    None for a fresh init."""
    init, m = config.model.init, config.model
    if _is_hf_folder(init):
        model, params = weights.load_pretrained(init, dtype=m.dtype, scan=m.scan, remat=m.remat)
        return model, {"params": params}
    if _is_open_clip_folder(init):
        return weights.open_clip.load_open_clip(init, dtype=m.dtype, scan=m.scan, remat=m.remat,
                                                frozen_batch_norm=m.get("freeze_bn_stats", False))
    clip = two_towers.clip_config(m.arch, dtype=m.dtype, scan=m.scan, remat=m.remat)
    clip = dataclasses.replace(
        clip, vision=tower_config(config, clip.vision),
        text=dataclasses.replace(clip.text, vocab_size=tokenizer.vocab_size, eot_token_id=tokenizer.eot_id,
                                 context_length=tokenizer.context_length))
    model = two_towers.ClipModel(clip)
    variables = None if init == "scratch" else checkpoint.load_variables(init)
    if variables is not None and m.scan and "layers" not in variables["params"]["vision_model"]["encoder"]:
        variables["params"] = stack_layers(variables["params"])
    return model, variables


def _encode(model):
    def encode(variables, images, input_ids):
        return (two_towers.l2_normalize(model.apply(variables, images, method="encode_image")),
                two_towers.l2_normalize(model.apply(variables, input_ids, method="encode_text")))
    return encode


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------

def make_loss_fn(model, class_aware: bool, combine: str):
    """The Task's loss: the symmetric contrastive loss on the global batch."""
    encode = _encode(model)

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
                                                class_aware=class_aware, combine=combine)
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
        self.encode = jax.jit(_encode(model))
        self.encode_text = jax.jit(lambda variables, ids: two_towers.l2_normalize(
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
        "instance_recall@1_image_to_text": results.get("retrieval/instance/image_to_text/recall@1"),
        "instance_recall@1_text_to_image": results.get("retrieval/instance/text_to_image/recall@1"),
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
    data = fungalzsl_data.FungalZSLData(config)
    robust = robustness_entries(config)
    tokenizer, tokenizer_dir = make_tokenizer(config, data.tokenizer_corpus(), workdir)
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
        loss_fn=make_loss_fn(model, config.loss.class_aware, config.loss.get("combine", "mean")),
        post_update=clamp_logit_scale,
        train_iterator=data.train_iterator(tokenizer),
        evaluate=Evaluation(config, data, model, tokenizer, mesh),
        export=export if config.get("export_hf", True) else None,
        summarise=lambda results: summarise(results, data.class_names, robust) | {
            "arch": config.model.arch, "init": config.model.init, "captions": config.data.captions,
            "preset": config.data.preset, "seed": config.seed, "data_seed": config.get("data_seed", 0)},
        describe=lambda results: describe(results, robust))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    workdir = workdir_lib.as_path(workdir)
    mesh = core.make_mesh(config)
    return core.run(config, workdir, make_task(config, workdir, mesh), mesh)
