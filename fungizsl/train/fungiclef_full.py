"""The whole FungiCLEF 2025 system of Lu et al. ("Few-Shot Classification of Fungi Species Using
Contrastive Representation Learning and Multimodal Fusion", 2nd place) on the shared core:

    features (fungiclef/features.py, cached)  ->  stage 1  ->  stage 2  ->  ensemble, submission

* Stage 1 (`workdir/stage1`): a projection + Transformer layer + CLS over the cached token
  features (`models.fewshot.Stage1Model`) trained with DWCL (or SupCon) on class-balanced
  batches (`fungiclef.sampler`); rows that are copies of a lone instance get feature-level
  augmentation: view mixing here on the host, token dropout and noise in the step
  (`train/fungiclef_stage1.py`). Selected on validation Top-5 of a prototype classifier over its
  embeddings (each class's mean training embedding).
* Stage 2 (`workdir/stage2`): `FusionClassifier` whose visual encoder starts from the selected
  stage-1 weights (frozen or tuned), a Q-Former over its tokens and the metadata tokens (BERT
  states of the paper's sentence, field embeddings, numeric features), a linear classifier with
  cross-entropy; optionally the count-based metadata prior added to the logits (`use_prior`).
  One training row is one image (a random test-time view); at evaluation every view of every
  image is scored, views are averaged, and images are pooled per observation (mean / max /
  attention) by the `fungiclef_observations` evaluator, beside the organisers' baselines on the
  raw features (nearest neighbour, prototype) and the metadata-only prior.
* Ensemble: the soft vote of the stage-2 checkpoints kept at `ensemble_steps` (the paper votes
  epochs 50/100/150), scored on val and test.

Selection is on `val`; `test` is scored once per stage. `summary.json` in the workdir holds the
headline (stage 2 on test), the baselines, stage 1, the ensemble and the timings.
"""

from __future__ import annotations

import dataclasses
import time

import flax.linen as nn
import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from fungizsl import workdir as workdir_lib
from fungizsl.errors import ConfigError
from fungizsl.evaluate import metrics_io, run_evaluators
from fungizsl.evaluate import observations as obs_lib
from fungizsl.fungiclef import features as feat_lib
from fungizsl.fungiclef import metadata as md
from fungizsl.fungiclef.metadata_prior import MetadataPrior
from fungizsl.fungiclef.sampler import ClassBalancedSampler
from fungizsl.models.fewshot import FusionClassifier, Stage1Model
from fungizsl.train import checkpoint, core
from fungizsl.train import fungiclef_data as fd
from fungizsl.train import fungiclef_stage1 as s1
from fungizsl.train.fungiclef import HEADLINE, _log_softmax_np

SPLITS = ("train", "val", "test")


# -------------------------------------------------------------------------------------------------
# Data: features grouped by observation, metadata per observation
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class SplitData:
    tokens: np.ndarray  # float16 [N_img, V, T, D]
    image_obs: np.ndarray  # int [N_img]: position of the image's observation
    labels: np.ndarray  # int [N_img]
    obs_ids: np.ndarray  # int64 [N_obs]
    obs_labels: np.ndarray  # int [N_obs]
    groups: np.ndarray  # int [N_obs, G] image positions, -1 padding
    records: list  # metadata dict per observation
    inputs: dict  # per-observation metadata model inputs
    image_inputs: dict = dataclasses.field(default_factory=dict)  # per-image inputs (stage-1 prototype scores)


@dataclasses.dataclass
class FullData:
    splits: dict[str, SplitData]
    num_classes: int
    field_sizes: tuple[int, ...]
    poisonous: np.ndarray
    tower: str
    first_kept: int  # tower CLS + registers: tokens that feature augmentation never drops
    text_states: np.ndarray | None  # float16 [num_sentences, L, W]
    text_mask: np.ndarray | None


def _group(loaded: dict):
    order: dict[int, int] = {}
    image_obs = np.asarray([order.setdefault(int(o), len(order)) for o in loaded["observation_id"]])
    n_obs = len(order)
    members = [[] for _ in range(n_obs)]
    for i, o in enumerate(image_obs):
        members[o].append(i)
    width = max(len(m) for m in members)
    groups = np.full((n_obs, width), -1, np.int64)
    for o, m in enumerate(members):
        groups[o, :len(m)] = m
    first = groups[:, 0]
    return (image_obs, np.asarray(list(order), np.int64), loaded["category_id"][first].astype(np.int64), groups,
            [loaded["metadata"][i] for i in first])


def load_data(config, features_dir, show_progress: bool = True) -> FullData:
    return data_from_splits(config, {s: feat_lib.load_split(features_dir, s) for s in SPLITS}, show_progress)


def data_from_splits(config, loaded: dict, show_progress: bool = True, num_classes: int | None = None) -> FullData:
    """Model inputs of every split in `loaded` ({split: `features.load_split` dict}; "train" is
    required: the vocabulary, the prior and the prototypes come from it). `num_classes` (default:
    1 + the largest label) is given when a trained model scores new data
    (`train/fungiclef_evaluate.py`)."""
    d, m = config.data, config.model
    splits = {}
    for s, x in loaded.items():
        image_obs, obs_ids, obs_labels, groups, records = _group(x)
        splits[s] = SplitData(x["tokens"], image_obs, x["category_id"].astype(np.int64), obs_ids, obs_labels,
                              groups, records, {})
    train = splits["train"]
    if num_classes is None:
        num_classes = int(max(sp.labels.max() for sp in splits.values())) + 1
    table = fd.ObservationTable(train.records, train.obs_ids, train.obs_labels)
    vocab = md.FieldVocab.build(train.records, tuple(d.fields))
    prior = MetadataPrior(num_classes, geo_sigma_km=d.prior_geo_sigma_km, genus_weight=d.prior_genus_weight,
                          alpha=d.prior_alpha).fit(train.records, train.obs_labels,
                                                   fd.level_of_class(table, num_classes, "genus"))
    text_states = text_mask = None
    if m.use_text:
        from fungizsl.fungiclef import text as text_lib

        sentences = {s: [md.render_text(r, tuple(d.extra_text_fields), d.text_with_year) for r in sp.records]
                     for s, sp in splits.items()}
        unique = sorted({x for v in sentences.values() for x in v})
        text_states, text_mask = text_lib.encode_sentences(unique, m.text_model, d.text_max_length,
                                                           show_progress=show_progress)
        where = {x: i for i, x in enumerate(unique)}
    for s, sp in splits.items():
        sp.inputs = {"field_ids": vocab.encode(sp.records), "numeric": md.numeric_features(sp.records),
                     "prior": _log_softmax_np(prior.scores(sp.records, leave_one_out=s == "train")).astype(np.float32)}
        if m.use_text:
            sp.inputs["sentence"] = np.asarray([where[x] for x in sentences[s]], np.int64)
    info = loaded["train"]
    registers = info["num_registers"]
    return FullData(splits, num_classes, vocab.sizes(), fd.poisonous_by_class(table, num_classes),
                    info["tower"], 1 + registers, text_states, text_mask)


# -------------------------------------------------------------------------------------------------
# Host-side batches (random-access by step, so the Grain iterator state resumes exactly)
# -------------------------------------------------------------------------------------------------

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
            rows.append(s1.mix_views(views, rng, bool(aug) and self.mix))
        pi, pc = self.slot
        n = len(rows) // pc
        part = slice(pi * n, (pi + 1) * n)
        return {"tokens": np.stack(rows)[part].astype(np.float16), "label": b["label"][part],
                "augmented": b["augmented"][part], "valid": b["valid"][part]}


class Stage2Batch(grain.transforms.Map):
    """Step -> shuffled training images (one random view each) with their observation's metadata."""

    def __init__(self, data: SplitData, text_states, text_mask, batch_size: int, seed: int,
                 process_index: int, process_count: int):
        self.data, self.text_states, self.text_mask = data, text_states, text_mask
        self.batch_size, self.seed, self.slot = batch_size, seed, (process_index, process_count)

    def map(self, step):
        n = len(self.data.labels)
        epoch, at = divmod(int(step) * self.batch_size, n)
        rows = []
        while len(rows) < self.batch_size:  # walk the epoch permutations
            perm = np.random.default_rng([self.seed, epoch]).permutation(n)
            rows.extend(perm[at:at + self.batch_size - len(rows)])
            epoch, at = epoch + 1, 0
        rows = np.asarray(rows)
        pi, pc = self.slot
        local = self.batch_size // pc
        rows = rows[pi * local:(pi + 1) * local]
        rng = np.random.default_rng([self.seed, int(step), 2])
        views = rng.integers(0, self.data.tokens.shape[1], len(rows))
        obs = self.data.image_obs[rows]
        batch = {"tokens": self.data.tokens[rows, views], "label": self.data.labels[rows].astype(np.int32)}
        batch.update({k: v[obs] for k, v in self.data.inputs.items() if k != "sentence"})
        batch.update({k: v[rows] for k, v in self.data.image_inputs.items()})
        if "sentence" in self.data.inputs:
            sent = self.data.inputs["sentence"][obs]
            batch["text_states"], batch["text_mask"] = self.text_states[sent], self.text_mask[sent]
        return batch


def _iterator(transform, steps: int):
    return iter(grain.MapDataset.range(steps + 1).map(transform).to_iter_dataset())


# -------------------------------------------------------------------------------------------------
# Evaluation helpers
# -------------------------------------------------------------------------------------------------

def _obs_inputs(data: FullData, split: str) -> dict:
    sp = data.splits[split]
    mask = sp.groups >= 0
    raw = sp.tokens[np.maximum(sp.groups, 0)][..., 0, :].astype(np.float32).mean(2)  # tower CLS, views averaged
    train = data.splits["train"]
    return dict(image_mask=mask, labels=sp.obs_labels, observation_ids=sp.obs_ids, poisonous_by_class=data.poisonous,
                raw_features=raw, train_raw_features=train.tokens[:, :, 0].astype(np.float32).mean(1),
                train_raw_labels=train.labels, metadata_scores=sp.inputs["prior"])


def _eval_entries(evals, out_dir, split):
    entries = {}
    for name, cfg in evals.items():
        cfg = {k: v for k, v in dict(cfg).items() if k not in ("split", "every")}
        write = cfg.pop("write_submission", False)
        if out_dir is not None and write:
            cfg["submission_path"] = str(workdir_lib.as_path(out_dir) / f"submission_{split}.csv")
        entries[name] = cfg
    return entries


def _image_to_obs(image_logits: np.ndarray, groups: np.ndarray) -> np.ndarray:
    return image_logits[np.maximum(groups, 0)]  # [N_obs, G, C]; padding masked by image_mask


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield start, min(n, start + size)


def _pad_rows(x: np.ndarray, size: int) -> np.ndarray:
    return np.concatenate([x, np.repeat(x[-1:], size - len(x), 0)]) if len(x) < size else x


# -------------------------------------------------------------------------------------------------
# Stage 1
# -------------------------------------------------------------------------------------------------

def stage1_model(config, data: FullData) -> Stage1Model:
    s = config.stage1
    return Stage1Model(data.num_classes, width=s.width, depth=s.depth, num_heads=s.heads, dtype=s.dtype)


def stage1_embeddings(apply, params, tokens: np.ndarray, batch: int = 256) -> np.ndarray:
    """L2-normalised CLS embeddings [N, D], averaged over views."""
    n, v = tokens.shape[:2]
    flat = tokens.reshape((n * v,) + tokens.shape[2:])
    out = []
    for a, b in _chunks(len(flat), batch):
        out.append(np.asarray(apply(params, _pad_rows(flat[a:b], batch)))[:b - a])
    e = np.concatenate(out).reshape(n, v, -1)
    e = e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)
    e = e.mean(1)
    return e / np.maximum(np.linalg.norm(e, axis=-1, keepdims=True), 1e-12)


def make_stage1_task(config, data: FullData) -> core.Task:
    s = config.stage1
    model = stage1_model(config, data)
    train = data.splits["train"]
    sampler = ClassBalancedSampler(train.labels, config.batch_size, s.instances_per_class, s.min_instances,
                                   seed=config.data.seed)
    iterator = _iterator(Stage1Batch(sampler, train.tokens, config.data.seed, s.view_mixing,
                                     jax.process_index(), jax.process_count()), config.total_steps)
    example = jnp.zeros((2,) + train.tokens.shape[2:], jnp.float32)
    loss_fn = s1.make_stage1_loss(model, s.loss, s.temperature, s.aux_weight, token_drop=s.token_drop,
                                  noise_std=s.noise_std, first_kept=data.first_kept)
    apply = jax.jit(lambda p, x: model.apply({"params": p}, x.astype(jnp.float32))["embedding"])

    def evaluate(variables, split, evals, step, out_dir):
        params = variables["params"]
        emb_train = stage1_embeddings(apply, params, train.tokens)
        emb = stage1_embeddings(apply, params, data.splits[split].tokens)
        logits = obs_lib.prototype_logits(emb, emb_train, train.labels, data.num_classes)
        inputs = _obs_inputs(data, split)
        return dict(run_evaluators(_eval_entries(evals, out_dir, split),
                                   logits=_image_to_obs(logits, data.splits[split].groups), **inputs))

    return core.Task(name="fungiclef_stage1", init_variables=lambda rng: model.init(rng, example),
                     loss_fn=loss_fn, train_iterator=iterator, evaluate=evaluate, summarise=_summarise,
                     describe=_describe)


# -------------------------------------------------------------------------------------------------
# Stage 2
# -------------------------------------------------------------------------------------------------

class ResidualFusion(nn.Module):
    """FusionClassifier logits + exp(learned log-scale) x each given log-score input: the metadata
    prior (`prior`) and the stage-1 prototype classifier (`proto`). Missing inputs add nothing."""

    fusion: FusionClassifier
    residuals: tuple[str, ...] = ()

    @nn.compact
    def __call__(self, batch, train: bool = False):
        out = self.fusion(batch, train)
        for name in self.residuals:
            if name in batch:
                scale = jnp.exp(self.param(f"{name}_log_scale", nn.initializers.zeros, ()))
                out["logits"] = out["logits"] + scale * jax.nn.log_softmax(batch[name].astype(jnp.float32), -1)
        return out


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


def stage2_model(config, data: FullData):
    m, s = config.model, config.stage1
    fusion = FusionClassifier(
        num_classes=data.num_classes, use_visual=m.use_visual, use_text=m.use_text,
        field_sizes=data.field_sizes if m.use_fields else (),
        num_numeric=len(md.NUMERIC_FEATURES) if m.use_numeric else 0,
        encoder_width=s.width, encoder_depth=s.depth, encoder_heads=s.heads,
        width=m.qformer_width, depth=m.qformer_depth, num_heads=m.qformer_heads, num_queries=m.num_queries,
        dropout=m.dropout, dtype=m.dtype)
    return ResidualFusion(fusion, ("prior", "proto"))


def _stage2_inputs(batch: dict, config) -> dict:
    keys = ["field_ids", "numeric", "text_states", "text_mask", "tokens"]
    if config.model.use_prior:
        keys.append("prior")
    if config.model.use_stage1_prototypes:
        keys.append("proto")
    return {k: batch[k] for k in keys if k in batch}


class Stage2Scorer:
    """Image logits of a split [N_img, C], every view scored, log-probabilities averaged over views."""

    def __init__(self, config, model, data: FullData):
        self.config, self.data = config, data
        self.apply = jax.jit(lambda p, b: model.apply({"params": p}, _stage2_inputs(b, config))["logits"])

    def image_logits(self, params, split: str, batch: int = 256) -> np.ndarray:
        sp = self.data.splits[split]
        n, v = sp.tokens.shape[:2]
        out = np.zeros((n, self.data.num_classes), np.float64)
        for view in range(v):
            for a, b in _chunks(n, batch):
                rows = np.arange(a, b)
                obs = sp.image_obs[rows]
                chunk = {"tokens": sp.tokens[rows, view]}
                chunk.update({k: x[obs] for k, x in sp.inputs.items() if k != "sentence"})
                chunk.update({k: x[rows] for k, x in sp.image_inputs.items()})
                if "sentence" in sp.inputs:
                    sent = sp.inputs["sentence"][obs]
                    chunk["text_states"], chunk["text_mask"] = self.data.text_states[sent], self.data.text_mask[sent]
                chunk = {k: _pad_rows(x, batch) for k, x in chunk.items()}
                out[a:b] += _log_softmax_np(np.asarray(self.apply(params, chunk), np.float64)[:b - a])
        return out / v

    def obs_logits(self, params, split: str) -> np.ndarray:
        return _image_to_obs(self.image_logits(params, split), self.data.splits[split].groups)


def make_stage2_task(config, data: FullData, stage1_params=None) -> core.Task:
    model = stage2_model(config, data)
    train = data.splits["train"]
    iterator = _iterator(Stage2Batch(train, data.text_states, data.text_mask, config.batch_size, config.data.seed,
                                     jax.process_index(), jax.process_count()), config.total_steps)
    example = {k: jnp.asarray(v) for k, v in
               _stage2_inputs(Stage2Batch(train, data.text_states, data.text_mask, 2, 0, 0, 1).map(0), config).items()}
    scorer = Stage2Scorer(config, model, data)

    def init_variables(rng):
        return model.init({"params": rng, "dropout": rng}, example)

    def load_variables():
        variables = jax.device_get(jax.jit(init_variables)(jax.random.key(config.seed)))
        if stage1_params is not None and config.model.use_visual:
            params = dict(variables["params"])
            fusion = dict(params["fusion"])
            fusion["visual_encoder"] = jax.tree.map(np.asarray, stage1_params["encoder"])
            params["fusion"] = fusion
            variables = dict(variables, params=params)
        return variables

    def loss_fn(params, extra, batch, rng):
        logits = model.apply({"params": params}, _stage2_inputs(batch, config), train=True,
                             rngs={"dropout": rng})["logits"]
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, ({"train_top1": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}, extra)

    def evaluate(variables, split, evals, step, out_dir):
        logits = scorer.obs_logits(variables["params"], split)
        return dict(run_evaluators(_eval_entries(evals, out_dir, split), logits=logits, **_obs_inputs(data, split)))

    return core.Task(name="fungiclef_stage2", init_variables=init_variables, loss_fn=loss_fn,
                     train_iterator=iterator, evaluate=evaluate,
                     load_variables=load_variables if stage1_params is not None else None,
                     summarise=_summarise, describe=_describe), scorer


def _summarise(results: dict, eval_name: str = "fungiclef") -> dict:
    from fungizsl.train.fungiclef import summarise

    return summarise(results, eval_name)


def _describe(results: dict) -> str:
    keep = ("top1", "top5", "baselines/prototype/top5", "baselines/metadata/top5")
    return ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in results.items() if k.split("/", 1)[1] in keep)


# -------------------------------------------------------------------------------------------------
# Ensemble of stage-2 checkpoints
# -------------------------------------------------------------------------------------------------

def ensemble(config, workdir, task, scorer, data: FullData, mesh) -> dict:
    """Soft vote of the kept stage-2 checkpoints listed in `config.ensemble_steps` (all kept when
    empty), scored on val and test."""
    ckpt = checkpoint.RunCheckpoints(workdir, keep=config.keep_checkpoints)
    kept = sorted(ckpt.all_steps())
    steps = [s for s in (config.ensemble_steps or kept) if s in kept]
    if len(steps) < 2:
        ckpt.close()
        return {"members": steps, "note": "fewer than 2 kept checkpoints; no ensemble"}
    trainable = core.build(config, task, mesh)
    abstract = core.sharded_abstract(trainable)
    member = {"val": [], "test": []}
    for step in steps:
        params = ckpt.restore(abstract, None, step=step)["params"]
        for split in member:
            member[split].append(scorer.obs_logits(params, split))
    ckpt.close()
    out = {"members": steps, "kind": config.get("ensemble_kind", "soft"),
           "weights": list(config.get("ensemble_weights", ())) or "equal"}
    for split, logits in member.items():
        sp = data.splits[split]
        mask = sp.groups >= 0
        pooled = [obs_lib.pool_observations(lg, mask, config.evals.fungiclef.get("pooling", "mean")) for lg in logits]
        weights = tuple(config.get("ensemble_weights", ())) or None
        if weights is not None and len(weights) != len(steps):
            raise ConfigError(f"config.ensemble_weights {weights} must give one weight per member {steps}")
        votes = obs_lib.weighted_vote(pooled, weights, kind=config.get("ensemble_kind", "soft"))
        labelled = sp.obs_labels >= 0
        if labelled.any():
            out[split] = obs_lib.observation_metrics(votes[labelled], sp.obs_labels[labelled], (1, 5, 10),
                                                     data.poisonous)
        if split == "test" and workdir_lib.is_main():
            obs_lib.write_submission(workdir_lib.as_path(workdir) / "submission_test_ensemble.csv", sp.obs_ids, votes)
    return out


# -------------------------------------------------------------------------------------------------
# The pipeline
# -------------------------------------------------------------------------------------------------

def _stage_config(config, stage: str):
    """The core's view of one stage: its steps, lr, batch and schedule under the top-level names."""
    c = ml_collections.ConfigDict(config.to_dict())
    s = config[stage]
    for key in ("total_steps", "batch_size", "lr", "wd", "warmup_steps", "log_every", "checkpoint_every",
                "keep_checkpoints"):
        c[key] = s[key]
    c.optim.frozen = tuple(s.get("frozen", ()))
    c.evals = ml_collections.ConfigDict({"fungiclef": dict(config.evals.fungiclef.to_dict(), every=s.eval_every)})
    return c


def ensure_features(config, workdir, show_progress: bool = True):
    d = config.data
    folder = d.features_dir or str(workdir_lib.as_path(workdir) / "features")
    if feat_lib.is_complete(folder):
        return folder
    if not d.tfds_dir:
        raise ConfigError(f"no complete feature cache at {folder} and no config.data.tfds_dir to extract it from "
                          f"(a prepared fungiclef2025/{d.tfds_config} dataset)")
    f = config.features
    cfg = feat_lib.FeatureConfig(tower=f.tower, image_size=f.image_size, keep=f.keep, views=tuple(f.views),
                                 batch_size=f.batch_size, shard_size=f.shard_size, small_steps=f.small_steps,
                                 seed=f.seed)
    feat_lib.extract(feat_lib.sources_from_tfds(d.tfds_dir, d.tfds_config, SPLITS), folder, cfg, show_progress)
    return folder


def train_and_evaluate(config, workdir) -> dict:
    workdir = workdir_lib.as_path(workdir)
    show = workdir_lib.is_main()
    timings = {}
    start = time.perf_counter()
    features_dir = ensure_features(config, workdir, show)
    timings["features_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    data = load_data(config, features_dir, show)
    timings["load_and_text_s"] = round(time.perf_counter() - start, 1)
    if show:
        print(f"FungiCLEF features: {data.tower}; " + ", ".join(
            f"{s} {len(sp.obs_ids)} observations / {len(sp.labels)} images" for s, sp in data.splits.items()),
            flush=True)

    stage1_params, stage1 = None, None
    if config.stage1.total_steps > 0 and config.model.use_visual:
        start = time.perf_counter()
        c1 = _stage_config(config, "stage1")
        mesh = core.make_mesh(c1)
        stage1 = core.run(c1, workdir / "stage1", make_stage1_task(c1, data), mesh)
        stage1_params = checkpoint.load_params(workdir / "stage1" / "checkpoints" / str(stage1["step"]))
        if config.model.use_stage1_prototypes:
            model = stage1_model(c1, data)
            apply = jax.jit(lambda p, x: model.apply({"params": p}, x.astype(jnp.float32))["embedding"])
            stage1_prototype_scores(apply, stage1_params, data)
        timings["stage1_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    c2 = _stage_config(config, "stage2")
    if stage1_params is None:
        c2.optim.frozen = ()
    mesh = core.make_mesh(c2)
    task, scorer = make_stage2_task(c2, data, stage1_params)
    stage2 = core.run(c2, workdir / "stage2", task, mesh)
    timings["stage2_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    ens = ensemble(c2, workdir / "stage2", task, scorer, data, mesh) if config.ensemble else {}
    timings["ensemble_s"] = round(time.perf_counter() - start, 1)

    summary = {k: stage2.get(k) for k in HEADLINE}
    summary.update(baselines=stage2.get("baselines", {}), pooling=stage2.get("pooling", {}),
                   stage1={k: stage1.get(k) for k in HEADLINE} if stage1 else None,
                   ensemble=ens, tower=data.tower, is_dinov2=("DINOv2" in data.tower and "not DINOv2" not in data.tower),
                   selection=dict(stage2["selection"], stage1=stage1 and stage1["selection"]),
                   split="test", timings=timings,
                   settings={"stage1_loss": config.stage1.loss, "stage1_heads": config.stage1.heads,
                             "stage1_frozen_in_stage2": bool(config.stage2.frozen),
                             "pooling": config.evals.fungiclef.get("pooling", "mean"),
                             "use_visual": config.model.use_visual, "use_text": config.model.use_text,
                             "use_prior": config.model.use_prior,
                             "use_stage1_prototypes": config.model.use_stage1_prototypes})
    if show:
        metrics_io.write_json(workdir / core.SUMMARY_FILE, summary)
        print(format_table(summary), flush=True)
    workdir_lib.barrier("fungiclef_full_done")
    return summary


def format_table(summary: dict) -> str:
    rows = [("stage 2 (features + Transformer + metadata)", summary)]
    if summary.get("stage1"):
        rows.append(("stage 1 only (prototype over DWCL embeddings)", summary["stage1"]))
    ens = summary.get("ensemble") or {}
    if "test" in ens:
        rows.append((f"ensemble of steps {ens['members']}", ens["test"]))
    names = {"nearest_neighbour": "baseline: nearest neighbour on raw features",
             "prototype": "baseline: prototype on raw features", "metadata": "baseline: metadata prior only"}
    base = summary.get("baselines") or {}
    for key, label in names.items():
        row = {m: base.get(f"{key}/{m}") for m in ("top1", "top5", "macro_f1", "poison_cost")}
        if row["top5"] is not None:
            rows.append((label, row))
    fmt = lambda v: "-" if v is None else f"{v:.3f}"
    lines = [f"FungiCLEF (test split, {summary.get('num_observations')} observations; tower: {summary['tower']})",
             f"{'':52s} {'top1':>6s} {'top5':>6s} {'macroF1':>7s} {'poison':>7s}"]
    for label, r in rows:
        lines.append(f"{label:52s} {fmt(r.get('top1')):>6s} {fmt(r.get('top5')):>6s} {fmt(r.get('macro_f1')):>7s} "
                     f"{fmt(r.get('poison_cost')):>7s}")
    return "\n".join(lines)
