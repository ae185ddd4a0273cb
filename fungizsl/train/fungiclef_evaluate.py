"""Evaluation-only runs of a trained FungiCLEF 2025 model on a FungiCLEF CSV, per observation.

The model is a workdir of the FungiCLEF trainer (Lu et al., "Few-Shot Classification of Fungi
Species Using Contrastive Representation Learning and Multimodal Fusion", FungiCLEF 2025, 2nd
place; `configs/fungiclef.py`); the costs are those of FungiCLEF 2023/24 (100 x poisonous called
edible, 1 x edible called poisonous).

    python -m fungizsl.main --config=configs/evaluate.py:model=RUN,fungiclef=CSV --workdir=DIR
    python -m fungizsl.main --config=configs/evaluate.py:model=RUN,fungiclef=CSV,features=CACHE --workdir=DIR

Models (`model=`):
  * a `metadata_only` run: its refit on every training observation (`RUN/refit_all`, the model
    its summary.json reports) or, without a refit, the checkpoint it selected on validation;
  * a full-system run (`./launch/local.sh fungiclef`): the stage-2 checkpoint selected on
    validation (`RUN/stage2`), with the selected stage-1 checkpoint for the prototype scores;
  * one step folder of either (`RUN/checkpoints/<step>`, `RUN/refit_all/checkpoints/<step>`,
    `RUN/stage2/checkpoints/<step>`).
  It is rebuilt by the trainer's own code (`train/fungiclef.py`, `train/fungiclef_full.py`) from
  the run's `fungizsl_config.json` and its training data: the training CSV the run names
  (`config.data.train_csv` overrides it) or the run's feature cache (`config.data.run_features`
  overrides it). So vocabulary, count prior, text states and prototypes are those of training,
  and a run evaluated on its own evaluation CSV reproduces its summary's numbers (tested).
Data: a FungiTastic-FewShot CSV with labels (`category_id`) and the metadata columns the model
  reads. The full system also needs image features, from
  * a feature cache (`features=`, as `fungizsl fungiclef features` writes; split
    `features_split`, default from the CSV's name), matched to the CSV by filename and made
    by the run's tower, or else
  * the images (`image_root`; default the Kaggle layout beside the CSV,
    `images/FungiTastic-FewShot/<split>/<resolution>/`), given features by the run's very tower
    in a temporary cache that is deleted afterwards.

Writes DIR/summary.json (process 0) and nothing else: Top-1/5/10, macro-F1 and poison cost per
observation (evaluator `fungiclef_observations`), Top-K at every rank (`evaluate/taxonomy.py`;
lineages from the training data and the CSV's taxonomy columns), and argmax vs expected-cost
decisions (`evaluate/decisions.py`, costs from `config.evals.decisions.costs`), with the model,
checkpoint and data used. With `config.evals.decisions.calibrate = "temperature"` (the default)
the expected-cost rule is also scored on probabilities divided by one temperature
(`evaluate/calibration.py`) fitted on the run's own validation split, never on the evaluated CSV:
  * metadata_only: the temporal hold-out of the training CSV that selected the checkpoint, scored
    by the selection checkpoint (trained without it); a refit on every training observation has
    seen the hold-out, so it takes the temperature of its selection checkpoint;
  * full: the `val` split of the run's feature cache, scored by the evaluated checkpoint.
  Hold-out observations that also appear in the evaluated CSV are left out of the fit. Poisonous flags per class are the training data's; a class that the
training data lacks takes the evaluated CSV's flag (the summary counts such classes).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import tempfile
from typing import Any

import jax
import ml_collections
import numpy as np
from etils import epath

from fungizsl import workdir as workdir_lib
from fungizsl.errors import ConfigError
from fungizsl.evaluate import calibration as calibration_lib
from fungizsl.evaluate import make_evaluator, metrics_io, observations
from fungizsl.evaluate import taxonomy as taxonomy_lib

CONFIG_FILE, SUMMARY_FILE = "fungizsl_config.json", "summary.json"
# Columns every evaluated CSV needs, beyond filename and observationID (the builder's own check).
LABEL_COLUMNS = ("category_id",)
NUMERIC_COLUMNS = ("month", "day", "latitude", "longitude", "elevation")
TEXT_COLUMNS = ("year", "month", "day", "habitat", "substrate")
# The run's count-based metadata prior alone (`fungiclef/metadata_prior.py`), the trainer's
# "baselines/metadata": a naive Bayes over the metadata with genus back-off and a geographic kernel.
METADATA_PRIOR = "metadata_prior"


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
    stage1_checkpoint: epath.Path | None = None  # full: the prototypes' stage-1 weights

    def describe(self) -> dict[str, Any]:
        out = {"source": self.spec, "kind": f"fungiclef_{self.system}", "run": str(self.root),
               "checkpoint": str(self.checkpoint), "step": self.step}
        if self.system == "metadata_only":
            out["trained_on"] = "every training observation (refit)" if self.trained_on_all else \
                "training observations less the temporal validation hold-out"
        if self.stage1_checkpoint is not None:
            out["stage1_checkpoint"] = str(self.stage1_checkpoint)
        return out


def _read_config(folder: epath.Path) -> ml_collections.ConfigDict | None:
    path = folder / CONFIG_FILE
    if not path.is_file():
        return None
    config = ml_collections.ConfigDict(json.loads(path.read_text()))
    return config if config.get("trainer") == "fungiclef" else None


def _split_step(path: epath.Path) -> tuple[epath.Path, int | None]:
    """(run folder, step) of `<run>/checkpoints/<step>`; (path, None) otherwise."""
    if (path / "state").is_dir() and path.parent.name == "checkpoints" and re.fullmatch(r"\d+", path.name):
        return path.parent.parent, int(path.name)
    return path, None


def _summary_step(folder: epath.Path, spec: str) -> int:
    path = folder / SUMMARY_FILE
    if not path.is_file():
        raise ConfigError(f"model {spec}: {path} is missing, so the run has not finished and no checkpoint was "
                          f"selected; name a step folder {folder / 'checkpoints' / '<step>'} instead")
    return int(json.loads(path.read_text())["step"])


def find_run_root(path) -> tuple[epath.Path, str] | None:
    """(root, system) when `path` is (inside) a FungiCLEF run, else None."""
    folder, _ = _split_step(epath.Path(path))
    for root in (folder.parent,) if folder.name in ("refit_all", "stage1", "stage2") else (folder,):
        stage2 = _read_config(root / "stage2")
        if stage2 is not None and stage2.get("system") == "full":
            return root, "full"
        config = _read_config(root)
        if config is not None and config.get("system") == "metadata_only":
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
            f"model {spec} is not a FungiCLEF run: expected {path / CONFIG_FILE} with trainer 'fungiclef' and "
            f"system 'metadata_only', or {path / 'stage2' / CONFIG_FILE} of the full system (a workdir of "
            f"configs/fungiclef.py)")
    root, system = found
    folder, step = _split_step(path)
    if system == "metadata_only":
        refit = root / "refit_all"
        if step is not None:  # an explicit step folder: of the refit, or of the selection run
            on_all = folder == refit
        else:
            on_all = (refit / "checkpoints").is_dir()
            folder = refit if on_all else root
            step = _summary_step(folder, spec)
        config = _read_config(folder) or _read_config(root)
        return FungiClefRun(spec, root, system, config, folder / "checkpoints" / str(step), step, on_all)
    stage2 = root / "stage2"
    if step is not None and folder != stage2:
        raise ConfigError(f"model {spec}: a full-system run is scored by its stage-2 model; name "
                          f"{stage2 / 'checkpoints' / '<step>'} or the run {root}")
    step = step if step is not None else _summary_step(stage2, spec)
    config = _read_config(stage2)
    stage1 = None
    if config.model.use_visual and config.model.get("use_stage1_prototypes", False) and config.stage1.total_steps > 0:
        stage1 = root / "stage1" / "checkpoints" / str(_summary_step(root / "stage1", spec))
    return FungiClefRun(spec, root, system, config, stage2 / "checkpoints" / str(step), step,
                        stage1_checkpoint=stage1)


def _num_classes(params) -> int:
    return int(np.shape(params["fusion"]["classifier"]["kernel"])[-1])


# -------------------------------------------------------------------------------------------------
# The evaluated CSV
# -------------------------------------------------------------------------------------------------

def required_columns(config) -> list[str]:
    """CSV columns the run's model reads (besides filename and observationID)."""
    d, m = config.data, config.model
    need = list(LABEL_COLUMNS) + list(d.fields)
    if m.get("use_numeric", False):
        need += NUMERIC_COLUMNS
    if m.get("use_prior", False):
        from fungizsl.fungiclef.metadata_prior import PRIOR_FIELDS

        need += list(PRIOR_FIELDS) + ["latitude", "longitude"]
    if m.get("use_text", False):
        need += list(TEXT_COLUMNS) + list(d.get("extra_text_fields", ()) or ())
    return list(dict.fromkeys(need))


def read_csv_rows(path: str, config) -> list[dict]:
    """Typed rows of a FungiCLEF CSV (the builder's reader), after checking its header names every
    column the model reads."""
    from fungizsl.data.builders.fungiclef2025 import read_metadata_csv

    file = epath.Path(path)
    if not file.is_file():
        raise ConfigError(f"FungiCLEF CSV {path} does not exist")
    header = next(csv.reader(file.read_bytes().decode("utf-8-sig").splitlines()[:1]), [])
    missing = [c for c in required_columns(config) if c not in header]
    if missing:
        hint = " (an unlabelled test CSV cannot be evaluated)" if "category_id" in missing else ""
        raise ConfigError(f"FungiCLEF CSV {path} lacks column(s) {', '.join(missing)} that the model needs{hint}")
    try:
        return [row for _, row in read_metadata_csv(file)]
    except ValueError as error:
        raise ConfigError(str(error)) from None


def csv_split(path: str) -> str | None:
    """train / val / test from a FungiTastic-FewShot CSV file name, else None."""
    from fungizsl.data.builders.fungiclef2025 import CSV_NAMES

    name = epath.Path(path).name
    return next((split for split, names in CSV_NAMES.items() if name in names), None)


def default_image_dir(csv_path: str, resolution: str) -> epath.Path:
    """The Kaggle layout's image folder of the CSV (`<root>/images/FungiTastic-FewShot/<split>/<resolution>`
    when the CSV sits in `<root>/metadata/FungiTastic-FewShot/`), else `<CSV folder>/images`."""
    from fungizsl.data.builders.fungiclef2025 import CSV_PREFIX

    file = epath.Path(csv_path)
    split = csv_split(csv_path)
    if file.parent.name == CSV_PREFIX and file.parent.parent.name == "metadata" and split:
        return file.parent.parent.parent / "images" / CSV_PREFIX / split / resolution
    return file.parent / "images"


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
        import io

        from PIL import Image

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
    path = root / SUMMARY_FILE
    if not path.is_file():
        return None
    selection = json.loads(path.read_text()).get("selection", {})
    step = selection.get("selected_on_val", selection).get("step")
    return None if step is None else int(step)


def metadata_calibration_scores(run: FungiClefRun, splits, params, train_table, eval_table,
                                show_progress: bool) -> tuple[CalibrationScores | None, str]:
    """(scores of the run's temporal hold-out, "") or (None, why not). The scored checkpoint itself
    when it was trained without the hold-out; for a refit, the selection checkpoint, rebuilt with
    the vocabulary and prior of its own training part."""
    from fungizsl.train import checkpoint
    from fungizsl.train import fungiclef as trainer

    config, ckpt = run.config, run.checkpoint
    if run.trained_on_all:
        step = _selection_step(run.root)
        ckpt = run.root / "checkpoints" / str(step)
        if step is None or not (ckpt / "state").is_dir():
            return None, (f"the refit has seen the temporal hold-out and the selection checkpoint ({ckpt}) that "
                          f"was trained without it is not there to score it")
        config = _read_config(run.root) or run.config
        splits = trainer.build_metadata_splits(config, train_table, eval_table, show_progress,
                                               train_on_all=False, num_classes=splits.num_classes)
        params = checkpoint.load_params(ckpt)
    val = splits.tables["val"]
    if not len(val):
        return None, "the run's temporal hold-out is empty"
    model = trainer.make_metadata_model(config, splits)
    logits = trainer.MetadataEvaluation(config, model, splits, None).logits(params, "val")
    prior = splits.arrays["val"].get("prior")
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
    from fungizsl.train import checkpoint
    from fungizsl.train import fungiclef as trainer
    from fungizsl.train import fungiclef_data as fd

    train_csv = train_csv or run.config.data.train_csv
    if not epath.Path(train_csv).is_file():
        raise ConfigError(f"model {run.spec}: its training CSV {train_csv!r} (config.data.train_csv of the run) "
                          f"is not there; give it with config.data.train_csv (train_csv=...)")
    rows = read_csv_rows(csv_path, run.config)
    eval_table = fd.table_from_records(rows)
    train_table = fd.table_from_csv(train_csv)
    params = checkpoint.load_params(run.checkpoint)
    splits = trainer.build_metadata_splits(run.config, train_table, eval_table, show_progress,
                                           train_on_all=run.trained_on_all, num_classes=_num_classes(params))
    model = trainer.make_metadata_model(run.config, splits)
    logits = trainer.MetadataEvaluation(run.config, model, splits, None).logits(params, "test")
    prior = splits.arrays["test"].get("prior")
    cal, missing = (metadata_calibration_scores(run, splits, params, train_table, eval_table, show_progress)
                    if calibrate else (None, ""))
    return Scored(logits[:, None], np.ones((len(logits), 1), bool), eval_table.labels, eval_table.observation_ids,
                  eval_table.records, train_table.records, train_table.labels, splits.poisonous, len(rows),
                  {"csv": csv_path, "train_csv": train_csv}, {} if prior is None else {METADATA_PRIOR: prior},
                  cal, missing)


def _run_features(run: FungiClefRun, override: str = "") -> epath.Path:
    from fungizsl.fungiclef import features as feat_lib

    named = override or run.config.data.get("features_dir", "")
    for folder in [epath.Path(named)] * bool(named) + [run.root / "features"]:
        if feat_lib.is_complete(folder):
            return folder
    raise ConfigError(f"model {run.spec}: its feature cache ({named or run.root / 'features'}) is missing or "
                      f"incomplete; the training split's features are needed (vocabulary, prior, prototypes): "
                      f"give the cache with config.data.run_features")


def _check_same_tower(cache: epath.Path, run_cache: epath.Path) -> None:
    from fungizsl.fungiclef import features as feat_lib

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
    from fungizsl.fungiclef import features as feat_lib

    if features:
        cache = epath.Path(features)
        if not feat_lib.is_complete(cache):
            raise ConfigError(f"features={features} is not a complete feature cache (info.json and every shard)")
        _check_same_tower(cache, run_cache)
        split = split or csv_split(csv_path)
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
        image_dir = epath.Path(image_root) if image_root else default_image_dir(
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
    import jax.numpy as jnp

    from fungizsl.fungiclef import features as feat_lib
    from fungizsl.train import checkpoint
    from fungizsl.train import fungiclef_full as full

    config = run.config
    rows = read_csv_rows(csv_path, config)
    run_cache = _run_features(run, run_features)
    evaluated, described = _features_for_rows(rows, csv_path, run, run_cache, features, features_split, image_root,
                                              show_progress)
    params = checkpoint.load_params(run.checkpoint)
    loaded = {"train": feat_lib.load_split(run_cache, "train"), "eval": evaluated}
    has_val = "val" in json.loads((run_cache / feat_lib.INFO_FILE).read_text())["splits"]
    if calibrate and has_val:  # the run's own validation split: where the temperature is fitted
        loaded["run_val"] = feat_lib.load_split(run_cache, "val")
    data = full.data_from_splits(config, loaded, show_progress, num_classes=_num_classes(params))
    if run.stage1_checkpoint is not None:
        stage1 = full.stage1_model(config, data)
        apply = jax.jit(lambda p, x: stage1.apply({"params": p}, x.astype(jnp.float32))["embedding"])
        full.stage1_prototype_scores(apply, checkpoint.load_params(run.stage1_checkpoint), data)
    scorer = full.Stage2Scorer(config, full.stage2_model(config, data), data)
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


# -------------------------------------------------------------------------------------------------
# Metrics
# -------------------------------------------------------------------------------------------------

def class_taxonomy(records_with_labels, num_classes: int) -> taxonomy_lib.Taxonomy:
    """Lineage of classes 0..C-1 (named by their category id) from rows with taxonomy columns;
    a class no row describes has a blank lineage (left out of every rank's accuracy)."""
    rows = [dict(r, category_id=str(int(c))) for r, c in records_with_labels if 0 <= int(c) < num_classes]
    columns = {r: r for r in taxonomy_lib.RANKS}
    found = taxonomy_lib.Taxonomy.from_rows(rows, "category_id", columns) if rows else None
    lineage = dict(zip(found.classes, found.lineages)) if found else {}
    classes = tuple(str(c) for c in range(num_classes))
    return taxonomy_lib.Taxonomy(classes, tuple(lineage.get(c, {}) for c in classes))


def poisonous_flags(scored: Scored, num_classes: int) -> tuple[np.ndarray, dict[str, int]]:
    """bool [C]: the training data's flags; classes it lacks take the evaluated CSV's flag."""
    flags = np.full(num_classes, -1, np.int64)
    flags[:len(scored.poisonous_by_class)] = scored.poisonous_by_class
    from_training = int((flags >= 0).sum())
    filled = 0
    for record, label in zip(scored.records, scored.labels):
        p = int(record.get("poisonous", -1))
        if 0 <= label < num_classes and flags[label] < 0 and p >= 0:
            flags[label] = p
            filled += 1
    counts = {"classes_flagged_by_training": from_training, "classes_flagged_by_evaluated_csv_only": filled,
              "classes_without_flag_taken_as_edible": int((flags < 0).sum()),
              "poisonous_classes": int((flags == 1).sum())}
    return flags == 1, counts


def _pad_classes(logits: np.ndarray, num_classes: int) -> np.ndarray:
    """Logits over `num_classes`: classes the model has no output for get -1e9 (never named)."""
    missing = num_classes - logits.shape[-1]
    if missing <= 0:
        return logits
    return np.concatenate([logits, np.full(logits.shape[:-1] + (missing,), -1e9, logits.dtype)], -1)


def calibrate_method(config) -> str:
    return (config.get("evals", {}) or {}).get("decisions", {}).get("calibrate", "temperature") or "none"


def scores_summary(logits, image_mask, labels, poisonous, taxonomy, config, pooling: str = "mean",
                   calibration: tuple[np.ndarray, np.ndarray] | None = None,
                   calibration_info: dict | None = None) -> dict:
    """Top-K, macro-F1, poison cost (`fungiclef_observations`), Top-K at every rank (`taxonomy`) and
    argmax vs expected-cost decisions (`decisions`) of image logits [N_obs, G, C] of labelled
    observations; `poisonous` bool [C]. `calibration` (observation log-scores [M, C], labels [M]
    of held-out data, never these observations) adds the rule on temperature-scaled probabilities;
    `calibration_info` (where they come from) goes into `decisions["calibration"]`."""
    ev = config.get("evals", {}) or {}
    ks = tuple(config.get("ks", (1, 5, 10)))
    headline = dict(make_evaluator("fungiclef_observations", dict(ks=ks, pooling=pooling, compare_pooling=False)).run(
        logits=logits, image_mask=image_mask, labels=labels, poisonous_by_class=poisonous.astype(np.int64)))
    log_probs = observations.pool_observations(logits, image_mask, pooling)
    ranks: dict[str, dict] = {}
    for name, value in make_evaluator("taxonomy", dict(ks=ks)).run(logits=log_probs, image_labels=labels,
                                                                    taxonomy=taxonomy):
        rank, metric = name.split("/", 1)
        ranks.setdefault(rank, {})["num_observations" if metric == "num_images" else metric] = value
    decide = make_evaluator("decisions", dict(costs=dict(ev.get("decisions", {}).get("costs", {}) or {}),
                                              calibrate=calibrate_method(config)))
    decisions: dict[str, Any] = {"costs": dict(decide.costs), "calibration": dict(calibration_info or {})}
    fit = dict(calibration_logits=calibration[0], calibration_labels=calibration[1]) if calibration else {}
    for name, value in decide.run(logits=log_probs, image_labels=labels, poisonous=poisonous, **fit):
        rule, _, metric = name.partition("/")
        if metric:
            decisions.setdefault(rule, {})[metric] = value
        else:
            decisions["num_observations"] = value
    summary = {k: headline[k] for k in [f"top{k}" for k in ks] + ["macro_f1", "poison_cost", "num_observations"]}
    summary.update(ranks=ranks, decisions=decisions)
    return summary


def calibration_fit_set(scored: Scored, model_classes: int) -> tuple[np.ndarray | None, dict[str, Any]]:
    """(bool mask over `scored.calibration`'s observations the temperature may be fitted on, or None;
    description for the summary). Observations that the evaluated CSV also holds are left out, as are
    unlabelled ones and ones of classes the model has no output for."""
    cal = scored.calibration
    if cal is None:
        return None, {"method": "none", "why": scored.calibration_missing or "no validation scores of the run were given"}
    in_evaluated = np.isin(cal.observation_ids, scored.observation_ids)
    usable = (cal.labels >= 0) & (cal.labels < model_classes)
    keep = usable & ~in_evaluated
    info = dict(method="temperature", fitted_on=dict(cal.described, num_observations=int(keep.sum()),
                left_out_as_in_evaluated_csv=int((usable & in_evaluated).sum()),
                left_out_unlabelled_or_unknown_class=int((~usable).sum())))
    if not keep.any():
        return None, dict(info, method="none", why=f"no observation of the run's {cal.described['split']} split is "
                          f"left to fit on once those in the evaluated CSV are left out")
    return keep, info


def observation_summary(scored: Scored, config, pooling: str = "mean") -> dict[str, Any]:
    """`scores_summary` of the model and of each baseline, over the labelled observations (images
    pooled per observation by `pooling`, as the run's evaluator did)."""
    labelled = scored.labels >= 0
    if not labelled.any():
        raise ConfigError(f"{scored.data['csv']}: no observation has a label (category_id); nothing to evaluate")
    labels = scored.labels[labelled]
    model_classes = scored.logits.shape[-1]
    num_classes = max(model_classes, int(labels.max()) + 1)
    poisonous, flag_counts = poisonous_flags(scored, num_classes)
    taxonomy = class_taxonomy(list(zip(scored.train_records, scored.train_labels)) +
                              list(zip(scored.records, scored.labels)), num_classes)
    fit, cal_info = calibration_fit_set(scored, model_classes) if calibrate_method(config) != "none" else \
        (None, {"method": "none", "why": "config.evals.decisions.calibrate is 'none'"})
    cal, cal_baselines = None, {}
    if fit is not None:
        c = scored.calibration
        cal = (observations.pool_observations(_pad_classes(c.logits[fit], num_classes), c.image_mask[fit], pooling),
               c.labels[fit])
        cal_baselines = {name: (calibration_lib.log_softmax(_pad_classes(np.asarray(x)[fit], num_classes)), c.labels[fit])
                         for name, x in c.baselines.items()}
    summary = scores_summary(_pad_classes(scored.logits[labelled], num_classes), scored.image_mask[labelled],
                             labels, poisonous, taxonomy, config, pooling, cal, cal_info)
    summary.update(pooling=pooling, poisonous_flags=flag_counts,
                   observations_of_classes_the_model_lacks=int((labels >= model_classes).sum()))
    if scored.baselines:
        # a baseline's temperature is fitted on its own scores of the same observations (no checkpoint)
        fitted_on = {k: v for k, v in cal_info.get("fitted_on", {}).items() if k not in ("checkpoint", "note")}
        summary["baselines"] = {
            name: scores_summary(_pad_classes(np.asarray(x)[labelled][:, None], num_classes),
                                 np.ones((len(labels), 1), bool), labels, poisonous, taxonomy, config,
                                 calibration=cal_baselines.get(name),
                                 calibration_info=dict(cal_info, fitted_on=fitted_on) if name in cal_baselines else
                                 {"method": "none", "why": cal_info.get("why", "no validation scores of this baseline")})
            for name, x in scored.baselines.items()}
    return summary


# -------------------------------------------------------------------------------------------------
# Entry point
# -------------------------------------------------------------------------------------------------

def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
    """Called by `evaluate_only.train_and_evaluate` for `config.data.kind == "fungiclef"`."""
    specs = [s for s in (config.get("models", ()) or ()) if s]
    if len(specs) != 1:
        raise ConfigError(f"fungiclef= evaluates one FungiCLEF run at a time (model=RUN); got {specs or 'none'}")
    d = config.data
    if not d.get("fungiclef_csv"):
        raise ConfigError("config.data.fungiclef_csv is empty: name the FungiCLEF CSV to evaluate (fungiclef=CSV)")
    show = workdir_lib.is_main()
    run = open_run(specs[0])
    if run.system == "metadata_only":
        if d.get("features"):
            raise ConfigError(f"model {run.spec} is a metadata-only run: it reads no image features "
                              f"(drop features={d.features})")
        scored = score_metadata_run(run, d.fungiclef_csv, d.get("train_csv", ""), show,
                                    calibrate=calibrate_method(config) != "none")
    else:
        scored = score_full_run(run, d.fungiclef_csv, d.get("features", ""), d.get("features_split", ""),
                                d.get("image_root", ""), d.get("run_features", ""), show,
                                calibrate=calibrate_method(config) != "none")
    summary = observation_summary(scored, config, run.config.evals.fungiclef.get("pooling", "mean"))
    summary["model"] = run.describe()
    summary["data"] = dict(scored.data, num_images=scored.num_images, num_observations_in_csv=len(scored.labels),
                           num_labelled_observations=int((scored.labels >= 0).sum()))
    if show:
        out = workdir_lib.as_path(workdir)
        out.mkdir(parents=True, exist_ok=True)
        metrics_io.write_json(out / SUMMARY_FILE, summary)
        print(format_table(summary), flush=True)
    workdir_lib.barrier("fungiclef_evaluate_done")
    return {k: v for k, v in summary.items()
            if k not in ("ranks", "decisions", "model", "data", "poisonous_flags", "baselines")}


def format_table(summary: dict) -> str:
    """The summary as a few lines: the model, then each baseline."""
    lines = [f"FungiCLEF evaluation of {summary['model']['source']} on {summary['data']['csv']} "
             f"({summary['num_observations']} labelled observations)"]
    for label, s in [("model", summary)] + [(f"baseline {k}", v) for k, v in summary.get("baselines", {}).items()]:
        lines.append(f"{label}: " + ", ".join(f"{k} {s[k]:.4f}" for k in ("top1", "top5", "top10", "macro_f1")
                                             if s.get(k) is not None))
        lines.append("  top1/top5 by rank: " + ", ".join(
            f"{rank} {m['top1']:.3f}/{m.get('top5', float('nan')):.3f}" for rank, m in s["ranks"].items() if "top1" in m))
        cal = s["decisions"]["calibration"]
        if "temperature" in cal:
            lines.append(f"  calibration: temperature {cal['temperature']:.3f} fitted on {cal['fitted_on']['split']} "
                         f"({cal['fitted_on']['num_observations']} observations); ECE on the evaluated CSV "
                         f"{cal['ece_before']:.4f} -> {cal['ece_after']:.4f}")
        else:
            lines.append(f"  calibration: none ({cal.get('why', '')})")
        for rule in ("argmax", "expected_cost", "expected_cost_calibrated"):
            if rule not in s["decisions"]:
                continue
            r = s["decisions"][rule]
            lines.append(f"  {rule + ':':14s} accuracy {r['accuracy']:.4f}, poison cost {r['poison_cost']:.4f} "
                         f"({r['poisonous_as_edible']} poisonous called edible, {r['edible_as_poisonous']} edible "
                         f"called poisonous), total cost {r['total_cost']:.4f}")
    return "\n".join(lines)
