"""FungalZSL trainer: CLIP fine-tuned with the symmetric contrastive loss on synthetic growth stages.

Rani, Arroyo, Durdevic (2025), "FungalZSL: Zero-Shot Fungal Classification with Image Captioning
Using a Synthetic Data Approach". One linear script in big_vision's style; sections: mesh, input,
model, optimizer and sharding, update step, checkpoints, evaluation, loop.
"""

import dataclasses
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.experimental import multihost_utils
from tensorboardX import SummaryWriter
from tqdm import tqdm

from fungizsl import losses, tokenizers, weights
from fungizsl.data import pipeline
from fungizsl.evaluate import metrics_io, run_evaluators
from fungizsl.models import two_towers
from fungizsl.train import checkpoint, fungalzsl_data, optim, sharding
from fungizsl.weights.convert import stack_layers

SUMMARY_FILE = "summary.json"


# ---------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------

def build_model(config, caption_texts, workdir):
    """(module, variables or None, tokenizer, tokenizer_folder). variables ({"params": ...,
    optional "batch_stats": ...}) is None for a fresh init."""
    init, m = config.model.init, config.model
    if init != "scratch" and os.path.isfile(os.path.join(init, "config.json")):
        model, params = weights.load_pretrained(init, dtype=m.dtype, scan=m.scan, remat=m.remat)
        return model, {"params": params}, tokenizers.load_tokenizer(init), init
    if init != "scratch" and weights.open_clip.is_open_clip_checkpoint(init):
        model, variables = weights.open_clip.load_open_clip(
            init, dtype=m.dtype, scan=m.scan, remat=m.remat,
            frozen_batch_norm=m.get("freeze_bn_stats", False))
        tokenizer, tokenizer_dir = weights.open_clip.load_open_clip_tokenizer(init, workdir)
        return model, variables, tokenizer, tokenizer_dir
    tokenizer_dir = os.path.join(workdir, "tokenizer")
    if init != "scratch":  # an earlier fungizsl run: reuse its tokenizer and model shape
        tokenizer_dir = os.path.join(_run_dir(init), "tokenizer")
    if os.path.isfile(os.path.join(tokenizer_dir, "tokenizer.json")):
        tokenizer = tokenizers.load_tokenizer(tokenizer_dir, length=m.text_context)
    elif init == "scratch":
        tokenizer = tokenizers.train_bpe_tokenizer(caption_texts, m.vocab_size, tokenizer_dir,
                                                   context_length=m.text_context)
    else:
        raise FileNotFoundError(f"{tokenizer_dir} is missing: config.model.init={init!r} is not a fungizsl run")
    clip = two_towers.clip_config(m.arch, dtype=m.dtype, scan=m.scan, remat=m.remat)
    if two_towers.is_resnet(clip):
        vision = dataclasses.replace(clip.vision, image_size=config.data.image_size,
                                     frozen_batch_norm=m.get("freeze_bn_stats", False),
                                     **({"width": m.resnet_width} if m.get("resnet_width") else {}),
                                     **({"layers": tuple(m.resnet_layers)} if m.get("resnet_layers") else {}))
        if m.get("resnet_width"):
            vision = dataclasses.replace(vision, heads=max(1, vision.width * 32 // 64))
    else:
        vision = dataclasses.replace(clip.vision, image_size=config.data.image_size,
                                     patch_size=m.get("patch_size") or clip.vision.patch_size)
    clip = dataclasses.replace(
        clip, vision=vision,
        text=dataclasses.replace(clip.text, vocab_size=tokenizer.vocab_size, eot_token_id=tokenizer.eot_id,
                                 context_length=tokenizer.context_length))
    model = two_towers.ClipModel(clip)
    variables = None if init == "scratch" else checkpoint.load_variables(init)
    if variables is not None and m.scan and "layers" not in variables["params"]["vision_model"]["encoder"]:
        variables["params"] = stack_layers(variables["params"])
    return model, variables, tokenizer, tokenizer_dir


def _run_dir(path):
    path = os.path.abspath(path)
    while path != "/" and not os.path.isdir(os.path.join(path, "tokenizer")):
        path = os.path.dirname(path)
    return path


def _variables(state) -> dict:
    """The model's variables in a train state: params plus any non-parameter collections
    (a ResNet tower's `batch_stats`)."""
    return {k: v for k, v in state.items() if k not in ("step", "opt_state")}


def _encode(model):
    def encode(variables, images, input_ids):
        return (two_towers.l2_normalize(model.apply(variables, images, method="encode_image")),
                two_towers.l2_normalize(model.apply(variables, input_ids, method="encode_text")))
    return encode


# ---------------------------------------------------------------------------------------------
# Update step
# ---------------------------------------------------------------------------------------------

def make_train_step(model, optimizer, schedule, class_aware: bool):
    encode = _encode(model)

    def train_step(state, batch):
        # Collections other than params (a ResNet's batch_stats) are updated by the forward pass.
        extra = {k: v for k, v in _variables(state).items() if k != "params"}

        def loss_fn(params):
            variables = {"params": params, **extra}
            if extra:  # BatchNorm: batch statistics over the global batch (see models/resnet.py)
                zimg, new_extra = model.apply(variables, batch["image"], train=True, method="encode_image",
                                              mutable=list(extra))
                zimg = two_towers.l2_normalize(zimg)
            else:
                zimg, new_extra = two_towers.l2_normalize(
                    model.apply(variables, batch["image"], method="encode_image")), {}
            ztxt = two_towers.l2_normalize(model.apply(variables, batch["input_ids"], method="encode_text"))
            scale = jnp.exp(jnp.minimum(params["logit_scale"], two_towers.MAX_LOGIT_SCALE))
            loss, metrics = losses.contrastive_loss(zimg, ztxt, scale, labels=batch["label"],
                                                    class_aware=class_aware)
            return loss, (metrics, new_extra)

        (_, (metrics, new_extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        # CLIP clamps the learnable temperature so that logits never exceed 100.
        params["logit_scale"] = jnp.minimum(params["logit_scale"], two_towers.MAX_LOGIT_SCALE)
        metrics = dict(metrics, grad_norm=optax.global_norm(grads), lr=schedule(state["step"]),
                       temperature_scale=jnp.exp(params["logit_scale"]))
        return {"step": state["step"] + 1, "params": params, "opt_state": opt_state, **new_extra}, metrics

    return train_step


# ---------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------

def embed_split(encode_fn, params, iterator, mesh, desc):
    """Normalised image and paired-caption embeddings of one evaluation split, on every host."""
    zimg, ztxt, labels = [], [], []
    for batch in tqdm(iterator, desc=desc, leave=False, disable=jax.process_index() != 0):
        placed = pipeline.to_global_batch(batch, mesh)
        zi, zt = encode_fn(params, placed["image"], placed["input_ids"])
        zi, zt, label, valid = multihost_utils.process_allgather(
            (zi, zt, placed["label"], placed["valid"]), tiled=True)
        zimg.append(zi[valid])
        ztxt.append(zt[valid])
        labels.append(label[valid])
    return np.concatenate(zimg), np.concatenate(ztxt), np.concatenate(labels)


def embed_texts(encode_text_fn, params, tokenizer, texts, mesh, batch_size):
    out = []
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start:start + batch_size])
        padded = chunk + [""] * (batch_size - len(chunk))
        ids = pipeline.to_global_batch({"input_ids": tokenizer(padded)["input_ids"]}, mesh)["input_ids"]
        out.append(multihost_utils.process_allgather(encode_text_fn(params, ids), tiled=True)[:len(chunk)])
    return np.concatenate(out)


def make_eval_fns(model):
    """Compiled once per run: (encode images and captions, encode captions)."""
    encode_text = jax.jit(lambda variables, ids: two_towers.l2_normalize(
        model.apply(variables, ids, method="encode_text")))
    return jax.jit(_encode(model)), encode_text


def evaluate(config, data, eval_fns, params, mesh, tokenizer, workdir, step):
    """`params` are the model's variables ({"params": ..., optional "batch_stats": ...})."""
    encode, encode_text = eval_fns
    eval_batch = max(mesh.size, config.get("eval_batch_size", config.batch_size))
    results = {}
    zimg, ztxt, labels = embed_split(encode, params, data.eval_iterator("test", eval_batch, tokenizer),
                                     mesh, f"embed test images (step {step})")
    retrieval_cfg = dict(config.evals.retrieval)
    for name, value in run_evaluators({"retrieval": retrieval_cfg}, zimg=zimg, image_labels=labels,
                                      ztxt=ztxt, text_labels=labels):
        results[name] = value
    zeroshot_cfg = config.evals.zeroshot
    for i, source in enumerate(zeroshot_cfg.sources):
        by_class = data.captions_for_eval(source)
        texts = [t for c in data.class_names for t in by_class[c]]
        text_labels = np.asarray([k for k, c in enumerate(data.class_names) for _ in by_class[c]])
        class_ztxt = embed_texts(encode_text, params, tokenizer, texts, mesh, eval_batch)
        prefix = "zeroshot" if i == 0 else f"zeroshot_{data.source_label(source)}"
        evaluator = {"type": "zeroshot", "plot_dir": workdir if i == 0 else None,
                     "plot_title": f"Zero-shot ({data.source_label(source)} captions, step {step})"}
        for name, value in run_evaluators({prefix: evaluator}, zimg=zimg, image_labels=labels,
                                          ztxt=class_ztxt, text_labels=text_labels,
                                          class_names=data.class_names):
            results[name] = value
        results[f"zeroshot_by_source/{data.source_label(source)}"] = results[f"{prefix}/accuracy"]
    return results


def summarise(results: dict, class_names) -> dict:
    """The headline numbers, flat, under the names the README and launch/local.sh print."""
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
    return summary


# ---------------------------------------------------------------------------------------------
# Train and evaluate
# ---------------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    os.makedirs(workdir, exist_ok=True)
    is_main = jax.process_index() == 0

    # Mesh.
    mesh = sharding.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
    if config.batch_size % mesh.size:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {mesh.size} devices")

    # Input and model.
    data = fungalzsl_data.FungalZSLData(config, workdir)
    model, variables, tokenizer, tokenizer_dir = build_model(config, data.tokenizer_corpus(), workdir)
    train_iter = data.train_iterator(tokenizer)
    if is_main:
        with open(os.path.join(workdir, "fungizsl_config.json"), "w") as f:
            f.write(config.to_json_best_effort(indent=2))

    # Optimizer and sharding.
    if variables is None:
        variables = model.init(jax.random.key(config.seed), *weights.clip.dummy_inputs(model.config))
    init_params = variables["params"]
    extra = {k: v for k, v in variables.items() if k != "params"}  # e.g. a ResNet's batch_stats
    optimizer, schedule = optim.make_optimizer(
        init_params, learning_rate=config.lr, total_steps=config.total_steps,
        warmup_steps=config.warmup_steps, weight_decay=config.wd, b2=config.optim.b2,
        grad_clip_norm=config.optim.grad_clip_norm, frozen=tuple(config.optim.frozen),
        layer_decay=config.optim.layer_decay)

    def init_state(p, extra):
        return {"step": jnp.zeros((), jnp.int32), "params": p, "opt_state": optimizer.init(p), **extra}

    abstract = jax.eval_shape(init_state, init_params, extra)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    state_sharding = sharding.fsdp_sharding(abstract, mesh, rules) if rules else jax.tree.map(
        lambda _: sharding.replicated(mesh), abstract)
    state = jax.jit(init_state, out_shardings=state_sharding)(init_params, extra)
    del init_params, variables, extra

    # Update step.
    step_fn = jax.jit(make_train_step(model, optimizer, schedule, config.loss.class_aware),
                      in_shardings=(state_sharding, sharding.batch_sharding(mesh)),
                      out_shardings=(state_sharding, sharding.replicated(mesh)), donate_argnums=0)
    eval_fns = make_eval_fns(model)

    # Checkpoints: resume automatically from the workdir.
    ckpt = checkpoint.RunCheckpoints(workdir, keep=config.keep_checkpoints, best_metric=config.best_metric)
    if ckpt.latest_step() is not None:
        abstract_sharded = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                                        abstract, state_sharding)
        state = ckpt.restore(abstract_sharded, train_iter)
    first_step = int(state["step"])
    if first_step and is_main:
        print(f"resumed from step {first_step} of {config.total_steps} in {ckpt.directory}", flush=True)

    writer = SummaryWriter(os.path.join(workdir, "tb")) if is_main else None
    results, last_eval = {}, None
    progress = tqdm(total=config.total_steps, initial=first_step, desc="train", disable=not is_main)
    tick, tick_step = time.perf_counter(), first_step
    audit = [] if config.data.get("audit_indices", False) else None
    for step in range(first_step + 1, config.total_steps + 1):
        local_batch = next(train_iter)
        if audit is not None:  # which records this process trained on, step by step
            audit.append(np.asarray(local_batch["index"]))
        batch = pipeline.to_global_batch(local_batch, mesh)
        state, metrics = step_fn(state, batch)
        progress.update(1)
        if step % config.log_every == 0 or step == config.total_steps:
            metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
            elapsed = time.perf_counter() - tick
            metrics["img/sec/core"] = config.batch_size * (step - tick_step) / elapsed / jax.device_count()
            tick, tick_step = time.perf_counter(), step
            progress.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}")
            if writer:
                metrics_io.write_scalars(writer, metrics, step, prefix="train")
        if step % config.eval_every == 0 or step == config.total_steps:
            results = evaluate(config, data, eval_fns, _variables(state), mesh, tokenizer, workdir, step)
            last_eval = step
            if writer:
                metrics_io.write_scalars(writer, results, step, prefix="eval")
            progress.write(f"step {step}: zero-shot accuracy {results['zeroshot/accuracy']:.4f}, "
                           f"image->text R@1 {results['retrieval/class/image_to_text/recall@1']:.4f}")
        if step % config.checkpoint_every == 0 or step == config.total_steps:
            scalars = metrics_io.scalars(results) if last_eval == step else None
            ckpt.save(step, state, train_iter, metrics=scalars, force=True)
    progress.close()
    ckpt.close()
    if audit:
        os.makedirs(os.path.join(workdir, "audit"), exist_ok=True)
        np.save(os.path.join(workdir, "audit", f"process_{jax.process_index()}.npy"), np.stack(audit))
    if not results:  # resumed after the last step: evaluate the restored state
        results = evaluate(config, data, eval_fns, _variables(state), mesh, tokenizer, workdir,
                           int(state["step"]))
    summary = summarise(results, data.class_names)
    summary.update(step=int(state["step"]), arch=config.model.arch, init=config.model.init,
                   captions=config.data.captions, preset=config.data.preset)
    # Every process takes part in gathering (FSDP-sharded params span hosts); one writes.
    export = (multihost_utils.process_allgather(_variables(state), tiled=True) if config.get("export_hf", True)
              else None)
    if is_main:
        metrics_io.write_json(os.path.join(workdir, SUMMARY_FILE), summary)
        metrics_io.write_json(os.path.join(workdir, "eval_metrics.json"), results)
        if export is not None and two_towers.is_resnet(model.config):  # no HF class: open_clip format
            weights.open_clip.export_open_clip(model, export, os.path.join(workdir, "open_clip_export"),
                                               tokenizer_from=tokenizer_dir)
        elif export is not None:  # usable from PyTorch: transformers.CLIPModel.from_pretrained
            weights.export_pretrained(model, export["params"], os.path.join(workdir, "hf_export"),
                                      tokenizer_from=tokenizer_dir)
        if writer:
            writer.close()
    return summary
