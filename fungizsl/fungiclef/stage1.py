"""Stage 1 of the full FungiCLEF 2025 system (Lu et al., sec. 3.2): a Transformer layer over frozen
token features trained with the Dynamic Weighting Contrastive Loss (or SupCon).

The model (`models.fewshot.Stage1Model`) is a projection, a Transformer layer and a CLS token over
the cached tower tokens. The loss of one step, on the global batch drawn by
`sampler.ClassBalancedSampler` (`Stage1Batch` builds it on the host, by step):

* feature-level augmentation of the rows marked `augmented` (copies that give a lone instance a
  positive): view mixing on the host, where the other test-time views are (`mix_views`); token
  dropout (each non-CLS token kept with probability 1 - `token_drop`, at least the tower's CLS and
  registers kept) and Gaussian noise of `noise_std` times the token's RMS in the step
  (`augment_tokens`);
* the encoder's CLS embedding enters `losses.dwcl_loss` with padding rows masked;
* `p_i` of the entropy weight comes from an auxiliary cosine classifier over all classes, fed
  the stop-gradient embedding and trained by its own cross-entropy (`aux_weight`), so the weights
  reflect how ambiguous each sample currently is; `w_i` carries no gradient.

Checkpoints are selected on validation Top-5 of a prototype classifier over the embeddings (each
class's mean training embedding). `stage1_prototype_scores` gives stage 2 that classifier's
scores as an input, and `stage1_tokens` the frozen encoder's output tokens, computed once.

Memory at the paper's sizes (batch 1024 x 258 tokens x width 2048): `config.stage1.remat_chunks`
groups of rows are encoded one after another under `jax.checkpoint` (`chunked_embeddings`), so
the backward pass holds one group's activations at a time; `fungizsl.bench.plan` measures it.
"""

from __future__ import annotations

import os

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax

from fungizsl import losses
from fungizsl.evaluate import observations as obs_lib
from fungizsl.evaluate.registry import run_evaluators
from fungizsl.fungiclef.report import describe, eval_entries, summarise
from fungizsl.fungiclef.sampler import ClassBalancedSampler
from fungizsl.fungiclef.splits import FullData, chunks, grain_iterator, image_to_obs, obs_inputs, pad_rows
from fungizsl.models.fewshot import Stage1Model
from fungizsl.train import core


def augment_tokens(tokens, augmented, rng, token_drop: float = 0.25, noise_std: float = 0.1,
                   first_kept: int = 1):
    """(tokens, token_mask) with dropout and noise on the `augmented` rows only."""
    k_drop, k_noise = jax.random.split(rng)
    b, t = tokens.shape[:2]
    keep = jax.random.uniform(k_drop, (b, t)) >= token_drop
    keep = keep.at[:, :first_kept].set(True)  # the tower's CLS (and registers) stay
    augmented = augmented.astype(bool)
    token_mask = jnp.where(augmented[:, None], keep, True)
    rms = jnp.sqrt(jnp.mean(jnp.square(tokens.astype(jnp.float32)), -1, keepdims=True))
    noise = noise_std * rms * jax.random.normal(k_noise, tokens.shape)
    tokens = jnp.where(augmented[:, None, None], tokens + noise, tokens)
    return tokens, token_mask


def chunked_embeddings(encode, tokens, token_mask, chunks: int = 1):
    """`encode(tokens, token_mask)` -> [B, D] computed `chunks` row groups at a time, each under
    `jax.checkpoint`: the backward pass recomputes one group's activations at a time instead of
    keeping the whole batch's (the encoder's temporaries shrink `chunks`-fold; the contrastive loss
    still sees every embedding of the batch at once). Group j holds rows j, j + chunks, ...: a
    batch split over devices stays split the same way inside every group."""
    if chunks <= 1:
        return encode(tokens, token_mask)
    b = tokens.shape[0]
    if b % chunks:
        raise ValueError(f"stage-1 batch {b} is not divisible by remat_chunks {chunks}")
    split = lambda x: x.reshape((b // chunks, chunks) + x.shape[1:]).swapaxes(0, 1)
    emb = jax.lax.map(jax.checkpoint(lambda xs: encode(*xs)), (split(tokens), split(token_mask)))
    return emb.swapaxes(0, 1).reshape((b,) + emb.shape[2:])


def make_stage1_loss(model, loss: str = "dwcl", temperature: float = 0.07, aux_weight: float = 1.0,
                     min_positives: int = 1, token_drop: float = 0.25, noise_std: float = 0.1,
                     first_kept: int = 1, remat_chunks: int = 1):
    if loss not in ("dwcl", "supcon"):
        raise ValueError(f"stage-1 loss must be 'dwcl' or 'supcon', got {loss!r}")

    def loss_fn(params, extra, batch, rng):
        tokens, token_mask = augment_tokens(batch["tokens"].astype(jnp.float32), batch["augmented"], rng,
                                            token_drop, noise_std, first_kept)
        encode = lambda t, m: model.apply({"params": params}, t, m, method=Stage1Model.encode)["embedding"]
        embedding = chunked_embeddings(encode, tokens, token_mask, remat_chunks)
        aux_logits = model.apply({"params": params}, embedding, method=Stage1Model.aux)
        valid = batch["valid"].astype(bool)
        labels = batch["label"]
        weights = losses.entropy_weights(aux_logits) if loss == "dwcl" else None
        contrastive, m = losses.dwcl_loss(embedding, labels, weights, valid, temperature, min_positives)
        ce = optax.softmax_cross_entropy_with_integer_labels(aux_logits, jnp.maximum(labels, 0))
        aux = jnp.sum(jnp.where(valid, ce, 0.0)) / jnp.maximum(valid.sum(), 1)
        metrics = {"contrastive": contrastive, "aux_ce": aux, "num_anchors": m["num_anchors"],
                   "mean_weight": m["mean_weight"]}
        return contrastive + aux_weight * aux, (metrics, extra)

    return loss_fn


def mix_views(views: np.ndarray, rng: np.random.Generator, mix: bool) -> np.ndarray:
    """One row's token features from its test-time views [V, T, D]: a random view, or (mix) a
    convex mixture of two random views (view mixing for augmented copies)."""
    a = views[rng.integers(len(views))].astype(np.float32)
    if not mix or len(views) < 2:
        return a
    b = views[rng.integers(len(views))].astype(np.float32)
    lam = rng.uniform(0.5, 1.0)
    return lam * a + (1 - lam) * b


class Stage1Batch(grain.transforms.Map):
    """Step -> this process's rows of the class-balanced batch: one random view per row, a
    mixture of two views for augmented copies."""

    def __init__(self, sampler: ClassBalancedSampler, tokens: np.ndarray, seed: int, mix: bool,
                 process_index: int, process_count: int):
        self.sampler, self.tokens, self.seed, self.mix = sampler, tokens, seed, mix
        self.slot = (process_index, process_count)

    def map(self, step):
        b = self.sampler[int(step)]
        rng = np.random.default_rng([self.seed, int(step), 1])
        rows = []
        for i, aug in zip(b["index"], b["augmented"]):
            views = self.tokens[max(int(i), 0)]
            rows.append(mix_views(views, rng, bool(aug) and self.mix))
        pi, pc = self.slot
        n = len(rows) // pc
        part = slice(pi * n, (pi + 1) * n)
        return {"tokens": np.stack(rows)[part].astype(np.float16), "label": b["label"][part],
                "augmented": b["augmented"][part], "valid": b["valid"][part]}


def stage1_model(config, data: FullData) -> Stage1Model:
    return stage1_model_for(config, data.num_classes)


def stage1_model_for(config, num_classes: int) -> Stage1Model:
    s = config.stage1
    return Stage1Model(num_classes, width=s.width, depth=s.depth, num_heads=s.heads, dtype=s.dtype)


def stage1_step_parts(config, num_classes: int, token_shape: tuple, first_kept: int):
    """(model, init_variables, loss_fn) of the stage-1 task for cached tokens of shape [T, D]:
    what `make_stage1_task` trains, built from shapes alone (the memory planner,
    `fungizsl.bench.plan`, compiles its step without data)."""
    s = config.stage1
    model = stage1_model_for(config, num_classes)
    example = jnp.zeros((2,) + tuple(token_shape), jnp.float32)
    loss_fn = make_stage1_loss(model, s.loss, s.temperature, s.aux_weight, token_drop=s.token_drop,
                               noise_std=s.noise_std, first_kept=first_kept,
                               remat_chunks=s.get("remat_chunks", 1))
    return model, (lambda rng: model.init(rng, example)), loss_fn


def embedding_fn(model: Stage1Model):
    """jitted (params, tokens) -> the model's CLS embedding."""
    return jax.jit(lambda p, x: model.apply({"params": p}, x.astype(jnp.float32))["embedding"])


def tokens_fn(model: Stage1Model):
    """jitted (params, tokens) -> the encoder's output tokens [B, 1 + T, width], float16: what
    stage 2 reads when stage 1 stays frozen (`stage1_tokens`)."""
    encode = lambda p, x: model.apply({"params": p}, x.astype(jnp.float32), method=Stage1Model.encode)["tokens"]
    return jax.jit(lambda p, x: encode(p, x).astype(jnp.float16))


def stage1_tokens(apply, params, data: FullData, folder, batch: int = 256) -> None:
    """Sets `encoded` of every split: the frozen stage-1 encoder's output tokens of every image
    and view [N, V, 1 + T, width] (float16), computed once here so stage 2 trains and scores
    without the encoder (no forward, no backward through it at every step). Each split is a
    memory-mapped .npy in `folder` (a local temporary folder: at the paper's sizes the training
    split alone is 7,819 x 2 views x 258 x 2048 x 2 bytes = 16.5 GB), filled chunk by chunk."""
    folder = os.fspath(folder)
    for name, sp in data.splits.items():
        n, v = sp.tokens.shape[:2]
        flat = sp.tokens.reshape((n * v,) + sp.tokens.shape[2:])
        first = np.asarray(apply(params, pad_rows(flat[:1], 1)))
        out = np.lib.format.open_memmap(os.path.join(folder, f"{name}.npy"), mode="w+", dtype=np.float16,
                                        shape=(n * v,) + first.shape[1:])
        for a, b in chunks(len(flat), batch):
            out[a:b] = np.asarray(apply(params, pad_rows(flat[a:b], batch)))[:b - a]
        out.flush()
        sp.encoded = out.reshape((n, v) + first.shape[1:])


def stage1_embeddings(apply, params, tokens: np.ndarray, batch: int = 256) -> np.ndarray:
    """L2-normalised CLS embeddings [N, D], averaged over views."""
    n, v = tokens.shape[:2]
    flat = tokens.reshape((n * v,) + tokens.shape[2:])
    out = []
    for a, b in chunks(len(flat), batch):
        out.append(np.asarray(apply(params, pad_rows(flat[a:b], batch)))[:b - a])
    e = np.concatenate(out).reshape(n, v, -1)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    e = e.mean(1)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def make_stage1_task(config, data: FullData) -> core.Task:
    s = config.stage1
    train = data.splits["train"]
    model, init_variables, loss_fn = stage1_step_parts(config, data.num_classes, train.tokens.shape[2:],
                                                       data.first_kept)
    sampler = ClassBalancedSampler(train.labels, config.batch_size, s.instances_per_class, s.min_instances,
                                   seed=config.data.seed)
    iterator = grain_iterator(Stage1Batch(sampler, train.tokens, config.data.seed, s.view_mixing,
                                          jax.process_index(), jax.process_count()), config.total_steps)
    apply = embedding_fn(model)

    def evaluate(variables, split, evals, step, out_dir):
        params = variables["params"]
        emb_train = stage1_embeddings(apply, params, train.tokens)
        emb = stage1_embeddings(apply, params, data.splits[split].tokens)
        logits = obs_lib.prototype_logits(emb, emb_train, train.labels, data.num_classes)
        inputs = obs_inputs(data, split)
        return dict(run_evaluators(eval_entries(evals, out_dir, split),
                                   logits=image_to_obs(logits, data.splits[split].groups), **inputs))

    return core.Task(name="fungiclef_stage1", init_variables=init_variables,
                     loss_fn=loss_fn, train_iterator=iterator, evaluate=evaluate, summarise=summarise,
                     describe=describe)


def stage1_prototype_scores(apply, params, data: FullData, scale: float = 16.0) -> None:
    """Adds `image_inputs["proto"]` to every split: scale x cosine of each image's stage-1
    embedding to each class's prototype (mean training embedding). A training image's prototypes
    leave its own observation out (its other photos are the same specimen), so stage 2 learns how
    far to trust this evidence on images the prototypes have not seen."""
    train = data.splits["train"]
    emb_train = stage1_embeddings(apply, params, train.tokens)
    C = data.num_classes
    sums = np.zeros((C, emb_train.shape[1]))
    np.add.at(sums, train.labels, emb_train)
    counts = np.bincount(train.labels, minlength=C).astype(np.float64)
    for name, sp in data.splits.items():
        emb = emb_train if name == "train" else stage1_embeddings(apply, params, sp.tokens)
        logits = np.empty((len(emb), C), np.float32)
        for o, members in enumerate(sp.groups):
            members = members[members >= 0]
            s_, n_ = sums, counts
            if name == "train":  # leave this observation out
                c = sp.labels[members[0]]
                s_, n_ = sums.copy(), counts.copy()
                s_[c] -= emb_train[members].sum(0)
                n_[c] -= len(members)
            protos = s_ / np.maximum(np.linalg.norm(s_, axis=1, keepdims=True), 1e-12)
            cos = emb[members] @ protos.T
            cos[:, n_ <= 0] = -1.0
            logits[members] = scale * cos
        sp.image_inputs["proto"] = logits
