"""A trained FungiCLEF run, found and rebuilt, scores the observations of a CSV.

The evaluation-only runner (`fungiclef/evaluate.py`) names a run (`model=`); this module finds
out which system made it and which checkpoint to score, rebuilds the model with the trainer's own
code (`metadata_only.py`, or `splits.py`, `stage1.py`, `stage2.py` of the full system) from the
run's recorded config (`fungizsl_config.json`) and its training data, and returns the scores:

* `open_run` / `find_run_root`: a FungiCLEF run is a workdir whose recorded config names the
  metadata-only trainer, or whose `stage2/` names the full system (`runs.trainer_module`, so
  runs recorded with the older `trainer="fungiclef"` + `system` are recognised too). The
  metadata-only system is scored by its refit on every training observation (`refit_all`) when
  there is one, else by the checkpoint it selected; the full system by the selected stage-2
  checkpoint, with the selected stage-1 one for the prototype scores; a step folder names one
  checkpoint.
* `score_metadata_run` / `score_full_run`: a `Scored` of per-observation image logits with the
  labels, the poisonous flags of the training data, the run's count prior as a baseline and, for
  the decisions' temperature, the scores of the run's own validation split (`CalibrationScores`;
  never the evaluated CSV). The full system's image features come from a feature cache or are
  extracted from the CSV's images by the run's very tower (`CsvImages`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath
from PIL import Image

from fungizsl import runs
from fungizsl.errors import ConfigError
from fungizsl.fungiclef import features as feat_lib
from fungizsl.fungiclef import metadata_only, splits, stage1, stage2, tables
from fungizsl.train import checkpoint

# The run's count-based metadata prior alone (`fungiclef/metadata_prior.py`), the trainer's
# "baselines/metadata": a naive Bayes over the metadata with genus back-off and a geographic kernel.
METADATA_PRIOR = "metadata_prior"
#: trainer module -> system
SYSTEMS = {"fungizsl.fungiclef.metadata_only": "metadata_only", "fungizsl.fungiclef.full": "full"}


# -------------------------------------------------------------------------------------------------
# The run: which system, which checkpoint, which config
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class FungiClefRun:
    spec: str
    root: epath.Path
    system: str  # "metadata_only" | "full"
    config: ml_collections.ConfigDict  # the config the scored checkpoint was trained with
    checkpoint: epath.Path  # the step folder that is scored
    step: int
    trained_on_all: bool = False  # metadata_only: the refit on every training observation
    stage1_checkpoint: epath.Path | None = None  # full: the stage-1 weights (prototypes, frozen-encoder tokens)
    prior_alone: bool = False  # metadata_only: selection on val chose the count prior over every checkpoint

    def describe(self) -> dict[str, Any]:
        out = {"source": self.spec, "kind": f"fungiclef_{self.system}", "run": str(self.root),
               "checkpoint": str(self.checkpoint), "step": self.step}
        if self.prior_alone:
            out["reported"] = "prior_alone: the count prior beat every checkpoint on the run's validation split"
        if self.system == "metadata_only":
            out["trained_on"] = "every training observation (refit)" if self.trained_on_all else \
                "training observations less the temporal validation hold-out"
        if self.stage1_checkpoint is not None:
            out["stage1_checkpoint"] = str(self.stage1_checkpoint)
        return out


def _read_config(folder: epath.Path, system: str | None = None) -> ml_collections.ConfigDict | None:
    """The config recorded in `folder` when it is one of a FungiCLEF trainer (of `system`, if
    given), else None."""
    config = runs.read_config(folder)
    found = None if config is None else SYSTEMS.get(runs.trainer_module(config))
    return config if found is not None and system in (None, found) else None


def _summary_step(folder: epath.Path, spec: str) -> int:
    summary = runs.read_summary(folder)
    if summary is None:
        raise ConfigError(f"model {spec}: {folder / runs.SUMMARY_FILE} is missing, so the run has not finished and no "
                          f"checkpoint was selected; name a step folder {folder / 'checkpoints' / '<step>'} instead")
    return int(summary["step"])


def find_run_root(path) -> tuple[epath.Path, str] | None:
    """(root, system) when `path` is (inside) a FungiCLEF run, else None."""
    folder, _ = runs.split_step(epath.Path(path))
    for root in (folder.parent,) if folder.name in ("refit_all", "stage1", "stage2") else (folder,):
        if _read_config(root / "stage2", "full") is not None:
            return root, "full"
        if _read_config(root, "metadata_only") is not None:
            return root, "metadata_only"
    return None


def open_run(spec: str) -> FungiClefRun:
    """The FungiCLEF run `spec` names (a workdir or a step folder, see the module doc)."""
    path = epath.Path(spec)
    if not path.is_dir():
        raise ConfigError(f"model {spec}: no such folder")
    found = find_run_root(path)
    if found is None:
        raise ConfigError(
            f"model {spec} is not a FungiCLEF run: expected {path / runs.CONFIG_FILE} with trainer "
            f"'fungizsl.fungiclef.metadata_only' (or 'fungiclef' and system 'metadata_only'), or "
            f"{path / 'stage2' / runs.CONFIG_FILE} of the full system (a workdir of configs/fungiclef.py)")
    root, system = found
    folder, step = runs.split_step(path)
    if system == "metadata_only":
        explicit, refit = step, root / "refit_all"
        if step is not None:  # an explicit step folder: of the refit, or of the selection run
            on_all = folder == refit
        else:
            on_all = (refit / "checkpoints").is_dir()
            folder = refit if on_all else root
            step = _summary_step(folder, spec)
        config = _read_config(folder) or _read_config(root)
        prior_alone = explicit is None and (runs.read_summary(root) or {}).get("reported") == "prior_alone"
        return FungiClefRun(spec, root, system, config, folder / "checkpoints" / str(step), step, on_all,
                            prior_alone=prior_alone)
    stage2_dir = root / "stage2"
    if step is not None and folder != stage2_dir:
        raise ConfigError(f"model {spec}: a full-system run is scored by its stage-2 model; name "
                          f"{stage2_dir / 'checkpoints' / '<step>'} or the run {root}")
    step = step if step is not None else _summary_step(stage2_dir, spec)
    config = _read_config(stage2_dir)
    stage1_ckpt = None
    if config.model.use_visual and config.stage1.total_steps > 0:  # prototype scores, frozen-encoder tokens
        stage1_ckpt = root / "stage1" / "checkpoints" / str(_summary_step(root / "stage1", spec))
    return FungiClefRun(spec, root, system, config, stage2_dir / "checkpoints" / str(step), step,
                        stage1_checkpoint=stage1_ckpt)


def _num_classes(params) -> int:
    return int(np.shape(params["fusion"]["classifier"]["kernel"])[-1])


class CsvImages:
    """Random-access records of a CSV's images (for `features.extract`): the decoded RGB image
    with the row's fields."""

    def __init__(self, rows: list[dict], image_dir: epath.Path, csv_path: str):
        self.rows, self.image_dir, self.csv_path = rows, image_dir, csv_path
        missing = [r["filename"] for r in rows if not (image_dir / r["filename"]).is_file()]
        if missing:
            raise ConfigError(f"{len(missing)} image(s) of {csv_path} are not in {image_dir}, e.g. {missing[:3]}; "
                              f"set image_root (config.data.image_root) or give a feature cache (features=)")

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        path = self.image_dir / self.rows[i]["filename"]
        try:
            image = np.asarray(Image.open(io.BytesIO(path.read_bytes())).convert("RGB"))
        except Exception as error:  # PIL raises many kinds for bad data
            raise ConfigError(f"image {path} (of {self.csv_path}) does not decode: {error}") from None
        return dict(self.rows[i], image=image)


# -------------------------------------------------------------------------------------------------
# Scores per observation
# -------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Scored:
    logits: np.ndarray  # [N_obs, G, C] image logits (log-probabilities for the full system)
    image_mask: np.ndarray  # [N_obs, G]
    labels: np.ndarray  # [N_obs]; -1 unlabelled
    observation_ids: np.ndarray
    records: list[dict]  # first row of each evaluated observation
    train_records: list[dict]
    train_labels: np.ndarray
    poisonous_by_class: np.ndarray  # [C] from training: 1, 0, -1 unknown
    num_images: int
    data: dict[str, Any]  # what was read
    # per-observation scores [N_obs, C] of baselines, e.g. the run's count prior alone
    baselines: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    calibration: "CalibrationScores | None" = None  # the run's validation scores, for the temperature
    calibration_missing: str = ""  # why there are none (when calibration was asked for)


@dataclasses.dataclass
class CalibrationScores:
    """Scores of the run's own validation split (never the evaluated CSV), shaped like `Scored`'s,
    on which the decisions' temperature is fitted."""

    logits: np.ndarray  # [M_obs, G, C]
    image_mask: np.ndarray  # [M_obs, G]
    labels: np.ndarray  # [M_obs]
    observation_ids: np.ndarray  # [M_obs]
    described: dict[str, Any]  # split, what it is, the checkpoint that scored it
    baselines: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # [M_obs, C]


def _selection_step(root: epath.Path) -> int | None:
    """The step a metadata_only run selected on its temporal hold-out (before any refit)."""
    summary = runs.read_summary(root)
    if summary is None:
        return None
    selection = summary.get("selection", {})
    step = selection.get("selected_on_val", selection).get("step")
    return None if step is None else int(step)


def metadata_calibration_scores(run: FungiClefRun, meta_splits, params, train_table, eval_table,
                                show_progress: bool) -> tuple[CalibrationScores | None, str]:
    """(scores of the run's temporal hold-out, "") or (None, why not). The scored checkpoint itself
    when it was trained without the hold-out; for a refit, the selection checkpoint, rebuilt with
    the vocabulary and prior of its own training part."""
    config, ckpt = run.config, run.checkpoint
    if run.trained_on_all:
        step = _selection_step(run.root)
        ckpt = run.root / "checkpoints" / str(step)
        if step is None or not (ckpt / "state").is_dir():
            return None, (f"the refit has seen the temporal hold-out and the selection checkpoint ({ckpt}) that "
                          f"was trained without it is not there to score it")
        config = _read_config(run.root) or run.config
        meta_splits = metadata_only.build_metadata_splits(config, train_table, eval_table, show_progress,
                                                          train_on_all=False, num_classes=meta_splits.num_classes)
        params = checkpoint.load_params(ckpt)
    val = meta_splits.tables["val"]
    if not len(val):
        return None, "the run's temporal hold-out is empty"
    model = metadata_only.make_metadata_model(config, meta_splits)
    logits = metadata_only.MetadataEvaluation(config, model, meta_splits, None).logits(params, "val")
    prior = meta_splits.arrays["val"].get("prior")
    described = {"split": "val", "what": f"temporal hold-out of the training CSV (its latest "
                 f"{config.data.holdout_years} years), not trained on by the checkpoint that scores it",
                 "checkpoint": str(ckpt)}
    if run.trained_on_all:
        described["note"] = ("the refit trained on the hold-out, so the temperature is fitted with the selection "
                             "checkpoint and applied to the refit")
    return CalibrationScores(logits[:, None], np.ones((len(logits), 1), bool), val.labels, val.observation_ids,
                             described, {} if prior is None else {METADATA_PRIOR: prior}), ""


def score_metadata_run(run: FungiClefRun, csv_path: str, train_csv: str = "", show_progress: bool = True,
                       calibrate: bool = True) -> Scored:
    train_csv = train_csv or run.config.data.train_csv
    if not epath.Path(train_csv).is_file():
        raise ConfigError(f"model {run.spec}: its training CSV {train_csv!r} (config.data.train_csv of the run) "
                          f"is not there; give it with config.data.train_csv (train_csv=...)")
    rows = tables.read_csv_rows(csv_path, run.config)
    eval_table = tables.table_from_records(rows)
    train_table = tables.table_from_csv(train_csv)
    params = checkpoint.load_params(run.checkpoint)
    meta_splits = metadata_only.build_metadata_splits(run.config, train_table, eval_table, show_progress,
                                                      train_on_all=run.trained_on_all,
                                                      num_classes=_num_classes(params))
    model = metadata_only.make_metadata_model(run.config, meta_splits)
    logits = metadata_only.MetadataEvaluation(run.config, model, meta_splits, None).logits(params, "test")
    prior = meta_splits.arrays["test"].get("prior")
    cal, missing = (metadata_calibration_scores(run, meta_splits, params, train_table, eval_table, show_progress)
                    if calibrate else (None, ""))
    if run.prior_alone:  # the run's reported model is the count prior itself
        logits = prior
        if cal is not None:
            val_prior = cal.baselines[METADATA_PRIOR]
            cal = dataclasses.replace(cal, logits=val_prior[:, None],
                                      described=dict(cal.described, what="the count prior alone on " + cal.described["what"]))
    return Scored(logits[:, None], np.ones((len(logits), 1), bool), eval_table.labels, eval_table.observation_ids,
                  eval_table.records, train_table.records, train_table.labels, meta_splits.poisonous, len(rows),
                  {"csv": csv_path, "train_csv": train_csv}, {} if prior is None else {METADATA_PRIOR: prior},
                  cal, missing)


def _run_features(run: FungiClefRun, override: str = "") -> epath.Path:
    named = override or run.config.data.get("features_dir", "")
    for folder in [epath.Path(named)] * bool(named) + [run.root / "features"]:
        if feat_lib.is_complete(folder):
            return folder
    raise ConfigError(f"model {run.spec}: its feature cache ({named or run.root / 'features'}) is missing or "
                      f"incomplete; the training split's features are needed (vocabulary, prior, prototypes): "
                      f"give the cache with config.data.run_features")


def _check_same_tower(cache: epath.Path, run_cache: epath.Path) -> None:
    info = lambda folder: json.loads((folder / feat_lib.INFO_FILE).read_text())
    mine, theirs = info(cache), info(run_cache)
    keys = [k for k in mine["settings"] if k not in ("batch_size", "shard_size")]
    differ = [k for k in keys if mine["settings"].get(k) != theirs["settings"].get(k)]
    if mine["tower"] != theirs["tower"] or differ:
        raise ConfigError(f"feature cache {cache} was not made like the run's ({run_cache}): tower "
                          f"{mine['tower']!r} vs {theirs['tower']!r}, settings differing: {differ}")


def _features_for_rows(rows, csv_path, run: FungiClefRun, run_cache: epath.Path, features: str, split: str,
                       image_root: str, show_progress: bool) -> tuple[dict, dict]:
    """({tokens, observation_id, category_id, metadata} in CSV row order, description)."""
    if features:
        cache = epath.Path(features)
        if not feat_lib.is_complete(cache):
            raise ConfigError(f"features={features} is not a complete feature cache (info.json and every shard)")
        _check_same_tower(cache, run_cache)
        split = split or tables.csv_split(csv_path)
        if not split:
            raise ConfigError(f"which split of the feature cache {features} holds the images of {csv_path}? "
                              f"set features_split (config.data.features_split)")
        loaded = feat_lib.load_split(cache, split)
        where = {m["filename"]: i for i, m in enumerate(loaded["metadata"])}
        missing = [r["filename"] for r in rows if r["filename"] not in where]
        if missing:
            raise ConfigError(f"feature cache {features} (split {split}) has no features for {len(missing)} "
                              f"image(s) of {csv_path}, e.g. {missing[:3]}")
        tokens = loaded["tokens"][[where[r["filename"]] for r in rows]]
        described = {"features": str(cache), "features_split": split}
    else:
        if jax.process_count() > 1:  # each host would write its share of the shards to its own temporary folder
            raise ConfigError("features from images are extracted on one process only: run this evaluation on one "
                              "host, or give a feature cache of the CSV's images (features=)")
        image_dir = epath.Path(image_root) if image_root else tables.default_image_dir(
            csv_path, run.config.data.get("tfds_config", "300p"))
        source = CsvImages(rows, image_dir, csv_path)
        with tempfile.TemporaryDirectory(prefix="fungiclef_eval_features_") as tmp:
            feat_lib.extract_like(run_cache, {"eval": source}, tmp, show_progress)
            tokens = feat_lib.load_split(tmp, "eval")["tokens"]
        described = {"images": str(image_dir), "features": f"extracted by the run's tower ({run_cache})"}
    loaded = {"tokens": tokens, "observation_id": np.asarray([r["observationID"] for r in rows], np.int64),
              "category_id": np.asarray([r["category_id"] for r in rows], np.int64), "metadata": rows}
    return loaded, described


def score_full_run(run: FungiClefRun, csv_path: str, features: str = "", features_split: str = "",
                   image_root: str = "", run_features: str = "", show_progress: bool = True,
                   calibrate: bool = True) -> Scored:
    config = run.config
    rows = tables.read_csv_rows(csv_path, config)
    run_cache = _run_features(run, run_features)
    evaluated, described = _features_for_rows(rows, csv_path, run, run_cache, features, features_split, image_root,
                                              show_progress)
    params = checkpoint.load_params(run.checkpoint)
    loaded = {"train": feat_lib.load_split(run_cache, "train"), "eval": evaluated}
    has_val = "val" in json.loads((run_cache / feat_lib.INFO_FILE).read_text())["splits"]
    if calibrate and has_val:  # the run's own validation split: where the temperature is fitted
        loaded["run_val"] = feat_lib.load_split(run_cache, "val")
    data = splits.data_from_splits(config, loaded, show_progress, num_classes=_num_classes(params))
    stage1_params = checkpoint.load_params(run.stage1_checkpoint) if run.stage1_checkpoint is not None else None
    if stage1_params is not None and config.model.get("use_stage1_prototypes", False):
        stage1.stage1_prototype_scores(stage1.embedding_fn(stage1.stage1_model(config, data)), stage1_params, data)
    encoded = None
    if config.model.use_visual and "visual_encoder" not in params["fusion"]:  # trained on the frozen encoder's tokens
        if stage1_params is None:
            raise ConfigError(f"{run.root}: stage 2 was trained on the frozen stage-1 encoder's tokens, but the run "
                              f"has no stage-1 checkpoint to compute them with")
        encoded = tempfile.TemporaryDirectory(prefix="fungizsl-stage1-tokens-")
        stage1.stage1_tokens(stage1.tokens_fn(stage1.stage1_model(config, data)), stage1_params, data, encoded.name)
    scorer = stage2.Stage2Scorer(config, stage2.stage2_model(config, data), data)
    ev, train = data.splits["eval"], data.splits["train"]
    cal, missing = None, "" if not calibrate else f"the run's feature cache {run_cache} has no val split"
    if "run_val" in data.splits:
        val = data.splits["run_val"]
        cal = CalibrationScores(scorer.obs_logits(params, "run_val"), val.groups >= 0, val.obs_labels, val.obs_ids,
                                {"split": "val", "what": "the val split of the run's feature cache (the split "
                                 "that selected its checkpoints)", "checkpoint": str(run.checkpoint),
                                 "features": str(run_cache)}, {METADATA_PRIOR: val.inputs["prior"]})
        missing = ""
    return Scored(scorer.obs_logits(params, "eval"), ev.groups >= 0, ev.obs_labels, ev.obs_ids, ev.records,
                  train.records, train.obs_labels, data.poisonous, len(rows),
                  dict(described, csv=csv_path, run_features=str(run_cache), tower=data.tower),
                  {METADATA_PRIOR: ev.inputs["prior"]}, cal, missing)
