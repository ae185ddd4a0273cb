"""The whole FungiCLEF 2025 system of Lu et al. ("Few-Shot Classification of Fungi Species Using
Contrastive Representation Learning and Multimodal Fusion", 2nd place), `configs/fungiclef.py`
(what `./launch/local.sh fungiclef` runs), on the shared training core:

    features (features.py, cached)  ->  stage 1 (stage1.py)  ->  stage 2 (stage2.py)  ->  ensemble

* Features: token features of a frozen image tower, extracted once from a built `fungiclef2025`
  TFDS dataset into `workdir/features` (or read from `config.data.features_dir`); the data of
  every split, grouped by observation with its metadata inputs, comes from `splits.py`.
* Stage 1 (`workdir/stage1`): DWCL over the tokens on class-balanced batches; selected on
  validation Top-5 of a prototype classifier over its embeddings.
* Stage 2 (`workdir/stage2`): the Q-Former fusion of the stage-1 tokens and the metadata: with
  stage 1 frozen (the default) its encoder's output tokens are computed once into a local
  temporary folder (`config.stage2.encoded_dir`, default the system's) and read by every step;
  tuned, the visual encoder inside starts from the selected stage-1 weights; optionally the count prior and the
  stage-1 prototype scores added to the logits. Scored per observation beside the organisers'
  baselines on the raw features and the metadata prior alone.
* Ensemble (`ensemble.py`): the soft (or hard) vote of the stage-2 checkpoints kept at
  `ensemble_steps`, or (`ensemble_runs`, the `paper` preset) the weighted vote of separately
  trained stage-2 runs at 50/100/150 epochs; scored on val and test, with its own Kaggle
  submission. Stages given in `epochs` get their steps from the training split
  (`ensemble.resolve_epochs`).

Selection is on `val`; `test` is scored once per stage. `summary.json` in the workdir holds the
headline (stage 2 on test), the baselines, stage 1, the ensemble and the timings.
"""

from __future__ import annotations

import tempfile
import time

import ml_collections

from fungizsl import metrics_io, runs
from fungizsl import workdir as workdir_lib
from fungizsl.errors import ConfigError
from fungizsl.fungiclef import ensemble as ensemble_lib
from fungizsl.fungiclef import features as feat_lib
from fungizsl.fungiclef.report import HEADLINE, format_table
from fungizsl.fungiclef.splits import SPLITS, load_data
from fungizsl.fungiclef.stage1 import (embedding_fn, make_stage1_task, stage1_model, stage1_prototype_scores,
                                       stage1_tokens, tokens_fn)
from fungizsl.fungiclef.stage2 import make_stage2_task, reads_encoded_tokens, trained_patterns
from fungizsl.train import checkpoint, core


def stage_config(config, stage: str):
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
    for stage in ("stage1", "stage2"):  # evaluators and selection, before features are extracted
        if config[stage].total_steps > 0:
            core.check_evals(stage_config(config, stage))
    workdir = workdir_lib.as_path(workdir)
    show = workdir_lib.is_main()
    timings = {}
    start = time.perf_counter()
    features_dir = ensure_features(config, workdir, show)
    timings["features_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    data = load_data(config, features_dir, show)
    ensemble_lib.resolve_epochs(config, data)  # stages given in epochs (the paper preset): their steps
    timings["load_and_text_s"] = round(time.perf_counter() - start, 1)
    if show:
        print(f"FungiCLEF features: {data.tower}; " + ", ".join(
            f"{s} {len(sp.obs_ids)} observations / {len(sp.labels)} images" for s, sp in data.splits.items()),
            flush=True)

    stage1_params, stage1 = None, None
    if config.stage1.total_steps > 0 and config.model.use_visual:
        start = time.perf_counter()
        c1 = stage_config(config, "stage1")
        mesh = core.make_mesh(c1)
        stage1 = core.run(c1, workdir / "stage1", make_stage1_task(c1, data), mesh)
        stage1_params = checkpoint.load_params(workdir / "stage1" / "checkpoints" / str(stage1["step"]))
        if config.model.use_stage1_prototypes:
            stage1_prototype_scores(embedding_fn(stage1_model(c1, data)), stage1_params, data)
        timings["stage1_s"] = round(time.perf_counter() - start, 1)

    encoded = None  # the frozen stage-1 encoder's tokens, computed once (removed with this object)
    if stage1_params is not None and reads_encoded_tokens(config):
        start = time.perf_counter()
        encoded = tempfile.TemporaryDirectory(prefix="fungizsl-stage1-tokens-",
                                              dir=config.stage2.get("encoded_dir") or None)
        stage1_tokens(tokens_fn(stage1_model(c1, data)), stage1_params, data, encoded.name)
        timings["stage1_tokens_s"] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    c2 = stage_config(config, "stage2")
    if stage1_params is None:
        c2.optim.frozen = ()
    else:
        c2.optim.frozen = trained_patterns(c2.optim.frozen, encoded is not None)
    mesh = core.make_mesh(c2)
    task, scorer = make_stage2_task(c2, data, None if encoded is not None else stage1_params)
    stage2 = core.run(c2, workdir / "stage2", task, mesh)
    timings["stage2_s"] = round(time.perf_counter() - start, 1)
    start = time.perf_counter()
    ens = ensemble_lib.run_ensemble(  # checkpoints of stage2/, or separately trained runs (ensemble_runs)
        config, c2, workdir, task, scorer, data, mesh, stage2,
        lambda c: make_stage2_task(c, data, None if encoded is not None else stage1_params)[0],
    ) if config.ensemble else {}
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
                             "use_stage1_prototypes": config.model.use_stage1_prototypes,
                             "fusion": config.model.get("fusion", "cross"), "preset": config.get("preset", "full"),
                             "stage2_reads_encoded_tokens": reads_encoded_tokens(config),
                             "stage1_remat_chunks": config.stage1.get("remat_chunks", 1)})
    if show:
        metrics_io.write_json(workdir / runs.SUMMARY_FILE, summary)
        print(format_table(summary), flush=True)
    workdir_lib.barrier("fungiclef_full_done")
    return summary
