"""Stage 2 of the full FungiCLEF 2025 system (Lu et al., sec. 3.3): image tokens and metadata
fused by a Q-Former, classified with cross-entropy.

The model (`stage2_model`) is a `models.fewshot.FusionClassifier`: the stage-1 tokens (with stage
1 frozen, the default, its encoder's output tokens computed once, `reads_encoded_tokens`; tuned,
the encoder inside, starting from the selected stage-1 weights), a Q-Former over them and the
metadata tokens (BERT states of the paper's sentence, field embeddings, numeric
features) and a linear classifier; wrapped in a `ResidualFusion` that adds, with learned scales,
the count prior's log-probabilities (`use_prior`) and the stage-1 prototype scores
(`use_stage1_prototypes`) to the logits.

One training row is one image, a random test-time view, with its observation's metadata
(`Stage2Batch`). At evaluation `Stage2Scorer` scores every view of every image and averages the
views' log-probabilities; the `fungiclef_observations` evaluator pools the images per
observation.
"""

from __future__ import annotations

import re

import grain
import jax
import jax.numpy as jnp
import numpy as np

from fungizsl.evaluate.calibration import log_softmax
from fungizsl.evaluate.registry import run_evaluators
from fungizsl.fungiclef import metadata as md
from fungizsl.fungiclef.report import describe, eval_entries, summarise
from fungizsl.fungiclef.splits import FullData, SplitData, chunks, grain_iterator, image_to_obs, obs_inputs, pad_rows
from fungizsl.models.fewshot import FusionClassifier, ResidualFusion, classifier_parts
from fungizsl.train import core

ENCODER_PATH = "fusion/visual_encoder/proj/kernel"  # a parameter of the stage-1 encoder inside stage 2


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
        tokens = self.data.stage2_tokens
        # the global batch's views, drawn before this process takes its slice, so the batch is the
        # same whatever the number of processes
        views = np.random.default_rng([self.seed, int(step), 2]).integers(0, tokens.shape[1], len(rows))
        pi, pc = self.slot
        local = self.batch_size // pc
        part = slice(pi * local, (pi + 1) * local)
        rows, views = rows[part], views[part]
        obs = self.data.image_obs[rows]
        batch = {"tokens": tokens[rows, views], "label": self.data.labels[rows].astype(np.int32)}
        batch.update({k: v[obs] for k, v in self.data.inputs.items() if k != "sentence"})
        batch.update({k: v[rows] for k, v in self.data.image_inputs.items()})
        if "sentence" in self.data.inputs:
            sent = self.data.inputs["sentence"][obs]
            batch["text_states"], batch["text_mask"] = self.text_states[sent], self.text_mask[sent]
        return batch


def reads_encoded_tokens(config) -> bool:
    """Whether stage 2 reads the frozen stage-1 encoder's output tokens, computed once
    (`stage1.stage1_tokens`), instead of running the encoder at every step: a visual model whose
    stage 1 is trained and stays frozen in stage 2 (`config.stage2.frozen` names the encoder),
    unless `config.stage2.encode_once` is False."""
    s2 = config.stage2
    frozen = any(re.fullmatch(p, ENCODER_PATH) for p in s2.get("frozen", ()))
    return bool(config.model.use_visual and config.stage1.total_steps > 0 and frozen and s2.get("encode_once", True))


def trained_patterns(frozen, encoded: bool) -> tuple[str, ...]:
    """`config.stage2.frozen` for a model without the encoder (`encoded`): its patterns dropped,
    since they would match no parameter."""
    return tuple(p for p in frozen if not (encoded and re.fullmatch(p, ENCODER_PATH)))


def stage2_model(config, data: FullData) -> ResidualFusion:
    encoded = data.splits["train"].encoded is not None
    return stage2_model_for(config, data.num_classes, data.field_sizes, encoded)


def stage2_model_for(config, num_classes: int, field_sizes: tuple[int, ...], encoded: bool = False) -> ResidualFusion:
    """The stage-2 model; `encoded`: its visual input is the frozen stage-1 encoder's output
    tokens (no encoder inside)."""
    m, s = config.model, config.stage1
    fusion = FusionClassifier(
        num_classes=num_classes, use_visual=m.use_visual, use_text=m.use_text,
        field_sizes=field_sizes if m.use_fields else (),
        num_numeric=len(md.NUMERIC_FEATURES) if m.use_numeric else 0,
        encoder_width=s.width, encoder_depth=s.depth, encoder_heads=s.heads,
        width=m.qformer_width, depth=m.qformer_depth, num_heads=m.qformer_heads, num_queries=m.num_queries,
        dropout=m.dropout, fusion=m.get("fusion", "cross"), dtype=m.dtype, encoded_tokens=encoded)
    return ResidualFusion(fusion, ("prior", "proto"))


def _stage2_inputs(batch: dict, config) -> dict:
    keys = ["field_ids", "numeric", "text_states", "text_mask", "tokens"]
    if config.model.use_prior:
        keys.append("prior")
    if config.model.use_stage1_prototypes:
        keys.append("proto")
    return {k: batch[k] for k in keys if k in batch}


def scoring_fn(config, model):
    """jitted (params, batch) -> logits: the step `Stage2Scorer` scores every chunk with."""
    return jax.jit(lambda p, b: model.apply({"params": p}, _stage2_inputs(b, config))["logits"])


def stage2_step_parts(config, model, example: dict):
    """(init_variables, loss_fn) of the stage-2 task, `example` a batch (any row count) of the
    builder's keys: what `make_stage2_task` trains, built from shapes alone (the memory planner,
    `fungizsl.bench.plan`, compiles its step without data)."""
    return classifier_parts(model, lambda batch: _stage2_inputs(batch, config), example)


class Stage2Scorer:
    """Image logits of a split [N_img, C], every view scored, log-probabilities averaged over views."""

    def __init__(self, config, model, data: FullData):
        self.config, self.data = config, data
        self.apply = scoring_fn(config, model)

    def image_logits(self, params, split: str, batch: int = 256) -> np.ndarray:
        sp = self.data.splits[split]
        tokens = sp.stage2_tokens
        n, v = tokens.shape[:2]
        out = np.zeros((n, self.data.num_classes), np.float64)
        for view in range(v):
            for a, b in chunks(n, batch):
                rows = np.arange(a, b)
                obs = sp.image_obs[rows]
                chunk = {"tokens": tokens[rows, view]}
                chunk.update({k: x[obs] for k, x in sp.inputs.items() if k != "sentence"})
                chunk.update({k: x[rows] for k, x in sp.image_inputs.items()})
                if "sentence" in sp.inputs:
                    sent = sp.inputs["sentence"][obs]
                    chunk["text_states"], chunk["text_mask"] = self.data.text_states[sent], self.data.text_mask[sent]
                chunk = {k: pad_rows(x, batch) for k, x in chunk.items()}
                out[a:b] += log_softmax(np.asarray(self.apply(params, chunk), np.float64)[:b - a])
        return out / v

    def obs_logits(self, params, split: str) -> np.ndarray:
        return image_to_obs(self.image_logits(params, split), self.data.splits[split].groups)


def make_stage2_task(config, data: FullData, stage1_params=None) -> tuple[core.Task, Stage2Scorer]:
    """(the core's task of stage 2, the scorer of its checkpoints); `stage1_params` (the selected
    stage-1 model) replace the visual encoder's initial weights (none when the splits carry the
    frozen encoder's tokens: the model then has no encoder)."""
    model = stage2_model(config, data)
    train = data.splits["train"]
    iterator = grain_iterator(Stage2Batch(train, data.text_states, data.text_mask, config.batch_size,
                                          config.data.seed, jax.process_index(), jax.process_count()),
                              config.total_steps)
    example = {k: jnp.asarray(v) for k, v in
               Stage2Batch(train, data.text_states, data.text_mask, 2, 0, 0, 1).map(0).items()}
    init_variables, loss_fn = stage2_step_parts(config, model, example)
    scorer = Stage2Scorer(config, model, data)

    def load_variables():
        variables = jax.device_get(jax.jit(init_variables)(jax.random.key(config.seed)))
        if stage1_params is not None and config.model.use_visual and train.encoded is None:
            params = dict(variables["params"])
            fusion = dict(params["fusion"])
            fusion["visual_encoder"] = jax.tree.map(np.asarray, stage1_params["encoder"])
            params["fusion"] = fusion
            variables = dict(variables, params=params)
        return variables

    def evaluate(variables, split, evals, step, out_dir):
        logits = scorer.obs_logits(variables["params"], split)
        return dict(run_evaluators(eval_entries(evals, out_dir, split), logits=logits, **obs_inputs(data, split)))

    return core.Task(name="fungiclef_stage2", init_variables=init_variables, loss_fn=loss_fn,
                     train_iterator=iterator, evaluate=evaluate,
                     load_variables=load_variables if stage1_params is not None else None,
                     summarise=summarise, describe=describe), scorer
