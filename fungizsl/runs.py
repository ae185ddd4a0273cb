"""A run folder's anatomy: what a trainer leaves in its workdir and how to find things in it.

A run (the ``--workdir`` of ``fungizsl.main``) holds

    fungizsl_config.json        the resolved config; its ``trainer`` names the trainer module
    summary.json                the final numbers; ``selection.step`` is the checkpoint chosen on val
    checkpoints/<step>/state/   Orbax checkpoints, one folder per kept step
    tokenizer/, tb/, ...        what the trainer adds

The two-stage FungiCLEF system keeps one such run per stage (``stage1/``, ``stage2/``) under its
workdir; the metadata-only system adds ``refit_all/``. Paths go through ``etils.epath`` so a run
on ``gs://`` reads the same. This module only reads; the trainer core writes.
"""

from __future__ import annotations

import json
import re

import ml_collections
from etils import epath

CONFIG_FILE = "fungizsl_config.json"
SUMMARY_FILE = "summary.json"
CHECKPOINTS = "checkpoints"

#: Trainer names written by runs made before `config.trainer` named a module.
LEGACY_TRAINERS = {"fungalzsl": "fungizsl.fungalzsl.trainer", "evaluate": "fungizsl.fungalzsl.evaluate"}
LEGACY_FUNGICLEF = {"metadata_only": "fungizsl.fungiclef.metadata_only", "full": "fungizsl.fungiclef.full"}
DEFAULT_TRAINER = "fungizsl.fungalzsl.trainer"


def trainer_module(config) -> str:
    """The trainer module a config (or a run's recorded config) names: ``config.trainer`` as a
    dotted module path; the short names of older runs (``fungalzsl``, ``fungiclef`` with
    ``system``, ``evaluate``) are mapped to their modules."""
    name = config.get("trainer", None) or DEFAULT_TRAINER
    if name == "evaluate" and (config.get("data", None) or {}).get("kind", None) == "fungiclef":
        return "fungizsl.fungiclef.evaluate"
    if name == "fungiclef":
        return LEGACY_FUNGICLEF.get(config.get("system", "full"), LEGACY_FUNGICLEF["full"])
    return LEGACY_TRAINERS.get(name, name)


def read_config(folder) -> ml_collections.ConfigDict | None:
    """The config a run recorded, or None where ``folder`` has none."""
    path = epath.Path(folder) / CONFIG_FILE
    if not path.is_file():
        return None
    return ml_collections.ConfigDict(json.loads(path.read_text()))


def recorded_trainer(folder) -> str | None:
    """The trainer module of the run in ``folder`` (see :func:`trainer_module`), or None."""
    config = read_config(folder)
    return None if config is None else trainer_module(config)


def read_summary(folder) -> dict | None:
    path = epath.Path(folder) / SUMMARY_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def is_step_folder(path) -> bool:
    """``<run>/checkpoints/<step>``: a folder with an Orbax ``state/``."""
    return (epath.Path(path) / "state").is_dir()


def is_run(path) -> bool:
    """A run folder or one of its step folders."""
    path = epath.Path(path)
    return (path / CHECKPOINTS).is_dir() or is_step_folder(path)


def run_root(path) -> epath.Path:
    """The run folder of a workdir or of a step folder ``<run>/checkpoints/<step>``."""
    path = epath.Path(path)
    return path.parent.parent if is_step_folder(path) else path


def split_step(path) -> tuple[epath.Path, int | None]:
    """(run folder, step) of ``<run>/checkpoints/<step>``; (path, None) otherwise."""
    path = epath.Path(path)
    if is_step_folder(path) and path.parent.name == CHECKPOINTS and re.fullmatch(r"\d+", path.name):
        return path.parent.parent, int(path.name)
    return path, None


def steps(run) -> list[int]:
    """The kept checkpoint steps of a run, oldest first."""
    folder = epath.Path(run) / CHECKPOINTS
    if not folder.is_dir():
        return []
    return sorted(int(p.name) for p in folder.iterdir() if p.name.isdigit() and is_step_folder(p))


def selected_step(run) -> int | None:
    """The step the run's summary.json reports as chosen (``selection.step``) when it is still on
    disk, else the newest step; None for a run with no steps."""
    kept = steps(run)
    selected = ((read_summary(run) or {}).get("selection") or {}).get("step")
    return selected if selected in kept else (kept[-1] if kept else None)


def selected_step_folder(path) -> epath.Path:
    """The checkpoint step folder to evaluate: a step folder as given; for a run folder, its
    :func:`selected_step`. A folder with no steps comes back as it is (the loader names the error)."""
    path = epath.Path(path)
    if is_step_folder(path) or not (path / CHECKPOINTS).is_dir():
        return path
    step = selected_step(path)
    return path if step is None else path / CHECKPOINTS / str(step)
