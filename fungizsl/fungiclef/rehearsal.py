"""A rehearsal of the full FungiCLEF 2025 system (`full.py`) at the Kaggle cardinalities, without
images or a GPU: how long each phase takes and how much host memory it peaks at.

    python -m fungizsl.fungiclef.rehearsal --csv_dir=PATH/TO/CSVS --workdir=runs/rehearsal \\
        [--keep=pooled] [--steps=20] [--width=64] [--rows=N]

* Cache (`build_cache`): a feature cache in `features.py`'s exact format (info.json, array_record
  shards of `encode_record`) built from the rows of the three FungiTastic-FewShot CSVs in
  `csv_dir`: each row's observation id, category id (-1 in the unlabelled test CSV, as the
  builder reads it) and metadata (the builder's typed row), with *random* float16 features of
  DINOv2-B's shape, [views, 257, 768] (`keep="tokens"`) or [views, 1, 768] (`"pooled"`), written
  shard by shard. The cache's tower says "not DINOv2": no number of a rehearsal is a result.
* Run: `full.train_and_evaluate` on that cache with `configs/fungiclef.py:runlocal`'s small model
  at `--width` for `--steps` per stage: loading and grouping, stage 1, stage 2, the ensemble and
  the Kaggle submissions. `--rows=N` keeps the first N observations of each split (same code).
* Measured per phase (`PHASES`: cache, load and text, stage-1 training, its evaluations, the
  prototype scores, the frozen stage-1 tokens, stage-2 training, its evaluations, ensemble,
  summary, check): wall and CPU seconds and the peak resident memory (Linux: VmHWM of
  /proc/self/status, reset at each phase through /proc/self/clear_refs, with a 0.1 s sample of
  VmRSS, RssAnon and RssFile), next to `summary.json`'s own `timings`; all in `rehearsal.json` in
  the workdir. Phases are marked by wrapping the functions `full.train_and_evaluate` calls.
  Numbers and where the peak comes from: docs/rehearsal.md.
* Check: each test submission (`stage2/submission_test*.csv`) has the header
  `observationId,predictions` and exactly one row of at most 10 distinct class ids per test
  observation of the CSV; otherwise the command fails with one line (exit 1). A missing folder or
  CSV: one line, exit 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import resource
import sys
import threading
import time

import numpy as np

from fungizsl import metrics_io
from fungizsl import workdir as workdir_lib
from fungizsl.data.builders.fungiclef2025 import CSV_NAMES, read_metadata_csv
from fungizsl.errors import ConfigError
from fungizsl.fungiclef import features as feat_lib
from fungizsl.fungiclef import full
from fungizsl.fungiclef.splits import SPLITS

TOWER = "random float16 features of DINOv2-B's shape (rehearsal; not DINOv2)"
PHASES = ("cache", "load", "stage1", "stage1_eval", "stage1_prototypes", "stage1_tokens", "stage2", "stage2_eval",
          "ensemble", "summary", "check")  # in order
# the stage-1 prototype scores (use_stage1_prototypes) and the frozen stage-1 encoder's tokens
# (when stage 2 reads them) are phases of some configs only
OPTIONAL_PHASES = ("stage1_prototypes", "stage1_tokens")
SUBMISSION_HEADER = "observationId,predictions"


class SubmissionError(Exception):
    """A submission is not one Kaggle row per test observation."""


# -------------------------------------------------------------------------------------------------
# The CSV rows and the cache
# -------------------------------------------------------------------------------------------------

def read_rows(csv_dir, rows: int | None = None) -> dict[str, list[dict]]:
    """{split: typed rows of its FungiTastic-FewShot CSV in `csv_dir`}, the first `rows`
    observations of each split when given."""
    folder = workdir_lib.as_path(csv_dir)
    if not folder.is_dir():
        raise ConfigError(f"--csv_dir {folder} is not a folder (it must hold the FungiTastic-FewShot CSVs)")
    out = {}
    for split in SPLITS:
        path = next((folder / n for n in CSV_NAMES[split] if (folder / n).is_file()), None)
        if path is None:
            raise ConfigError(f"--csv_dir {folder} has no {' or '.join(CSV_NAMES[split])} (the {split} split)")
        try:
            records = [r for _, r in read_metadata_csv(path)]
        except ValueError as error:
            raise ConfigError(str(error)) from None
        if rows is not None:
            kept = set(list(dict.fromkeys(r["observationID"] for r in records))[:rows])
            records = [r for r in records if r["observationID"] in kept]
        if not records:
            raise ConfigError(f"{path} has no rows")
        out[split] = records
    return out


def build_cache(csv_dir, out_dir, keep: str = "tokens", views: int = 2, seed: int = 0, rows: int | None = None,
                tokens: int = 257, dim: int = 768, shard_size: int = 1024) -> dict:
    """Writes a feature cache of the CSV rows with random float16 features [views, tokens, dim]
    (one token when `keep="pooled"`) under `out_dir`, one shard in memory at a time; returns its
    info.json content."""
    if not 1 <= views <= len(feat_lib.VIEWS):
        raise ConfigError(f"--views must be 1 to {len(feat_lib.VIEWS)}, got {views}")
    cfg = feat_lib.FeatureConfig(image_size=224, keep=keep, views=feat_lib.VIEWS[:views], shard_size=shard_size,
                                 seed=seed)  # DINOv2-B's 224 px: 16 x 16 patches + CLS = 257 tokens
    cfg.check()
    split_rows = read_rows(csv_dir, rows)
    out = workdir_lib.as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {s: len(r) for s, r in split_rows.items()}
    info = feat_lib._info(cfg, TOWER, False, 0, sizes)
    shape = (views, tokens if keep == "tokens" else 1, dim)
    for k, split in enumerate(SPLITS):
        records, n = split_rows[split], info["splits"][split]["num_shards"]
        for s in range(n):
            lo, hi = s * shard_size, min(sizes[split], (s + 1) * shard_size)
            rng = np.random.default_rng([seed, k, s])
            encoded = []
            for i in range(lo, hi):
                r = dict(records[i], caption="")  # the TFDS record's fields, less the image
                t = rng.standard_normal(shape, np.float32).astype(np.float16)
                encoded.append(feat_lib.encode_record(t, r["observationID"], r["category_id"], i,
                                                      feat_lib._metadata_json(r)))
            feat_lib._write_shard(out / feat_lib.shard_name(split, s, n), encoded)
            del encoded
    metrics_io.write_json(out / feat_lib.INFO_FILE, info, digits=0)  # last: the cache is complete
    return info


# -------------------------------------------------------------------------------------------------
# Time and memory per phase
# -------------------------------------------------------------------------------------------------

def _status_gb() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process in GB (empty off Linux)."""
    try:
        with open("/proc/self/status") as f:
            text = f.read()
    except OSError:
        return {}
    return {k: int(m.group(1)) / 2**20 for k in ("VmRSS", "VmHWM", "RssAnon", "RssFile")
            if (m := re.search(rf"^{k}:\s+(\d+) kB", text, re.MULTILINE))}


def _reset_peak() -> bool:
    try:  # "5" resets the peak RSS (VmHWM, and with it ru_maxrss) to the current RSS (Linux >= 4.0)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class PhaseMeter:
    """Wall seconds, CPU seconds (all threads: a busy machine distorts them less) and peak resident
    GB (with the anonymous and file-backed parts' own peaks, sampled) of named phases; `start`
    ends the current phase, and a phase started again adds to its numbers."""

    def __init__(self, interval: float = 0.1):
        self.phases: dict[str, dict] = {}
        self.name, self._peaks, self._lock, self._stop = None, {}, threading.Lock(), threading.Event()
        threading.Thread(target=self._sample, args=(interval,), daemon=True).start()

    def _sample(self, interval: float):
        while not self._stop.wait(interval):
            self._take(_status_gb())

    def _take(self, status: dict):
        with self._lock:
            for key, field in (("peak_rss_gb", "VmRSS"), ("peak_anon_gb", "RssAnon"), ("peak_file_gb", "RssFile")):
                self._peaks[key] = max(self._peaks.get(key, 0.0), status.get(field, 0.0))

    def start(self, name: str) -> None:
        self.stop()
        self.name, self._t0, self._cpu0, self._hwm = name, time.perf_counter(), _cpu_seconds(), _reset_peak()
        self._peaks = {}
        self._take(_status_gb())

    def once(self, name: str) -> None:
        if name != self.name and name not in self.phases:
            self.start(name)

    def stop(self) -> None:
        if self.name is None:
            return
        status = _status_gb()
        self._take(status)
        with self._lock:
            peaks = dict(self._peaks)
        if self._hwm:
            peaks["peak_rss_gb"] = max(peaks["peak_rss_gb"], status.get("VmHWM", 0.0))
        p = self.phases.setdefault(self.name, {"seconds": 0.0, "cpu_seconds": 0.0})
        p["seconds"] = round(p["seconds"] + time.perf_counter() - self._t0, 1)
        p["cpu_seconds"] = round(p["cpu_seconds"] + _cpu_seconds() - self._cpu0, 1)
        for k, v in peaks.items():
            p[k] = round(max(p.get(k, 0.0), v), 2)
        self.name = None

    def close(self) -> None:
        self.stop()
        self._stop.set()


def _timed_evaluate(meter: PhaseMeter, evaluate, stage: str):
    def wrapper(*args, **kwargs):
        meter.start(f"{stage}_eval")
        try:
            return evaluate(*args, **kwargs)
        finally:
            meter.start(stage)
    return wrapper


def _hooked(full, meter: PhaseMeter):
    """Wraps what `full.train_and_evaluate` calls so that each call starts its phase (once: stage
    2's task builder is called again by run ensembles) and the tasks' evaluations are phases of
    their own (`<stage>_eval`); returns the undo function. A function `full.py` no longer has
    leaves its boundary unmarked."""
    undo = []

    def mark(path, before, after=None, evals=False):
        *parents, name = path.split(".")
        owner = full
        for p in parents:
            owner = getattr(owner, p, None)
        original = getattr(owner, name, None)
        if original is None:
            return

        def wrapper(*args, **kwargs):
            meter.once(before)
            made = original(*args, **kwargs)
            if after:
                meter.once(after)
            if evals:  # a Task, or (Task, scorer)
                task = made[0] if isinstance(made, tuple) else made
                task = dataclasses.replace(task, evaluate=_timed_evaluate(meter, task.evaluate, meter.name))
                made = (task,) + tuple(made[1:]) if isinstance(made, tuple) else task
            return made

        setattr(owner, name, wrapper)
        undo.append(lambda: setattr(owner, name, original))

    mark("load_data", "load", after="stage1")
    mark("make_stage1_task", "stage1", evals=True)
    mark("stage1_prototype_scores", "stage1_prototypes")
    mark("stage1_tokens", "stage1_tokens")
    mark("make_stage2_task", "stage2", evals=True)
    mark("ensemble_lib.run_ensemble", "ensemble", after="summary")
    return lambda: [u() for u in reversed(undo)]


# -------------------------------------------------------------------------------------------------
# The run and its check
# -------------------------------------------------------------------------------------------------

def rehearsal_config(features_dir, steps: int = 20, width: int = 64, batch_size: int = 128):
    """`configs/fungiclef.py:runlocal` on the cache at `width` (stage 1 and the Q-Former), `steps`
    per stage with two checkpoints each (so the ensemble has two members)."""
    from configs import fungiclef as fungiclef_config

    config = fungiclef_config.get_config("runlocal")
    config.data.features_dir, config.data.tfds_dir = str(features_dir), ""
    half = max(1, steps // 2)
    for stage in (config.stage1, config.stage2):
        stage.update(total_steps=steps, batch_size=batch_size, warmup_steps=min(stage.warmup_steps, half),
                     log_every=half, checkpoint_every=half, eval_every=half)
    heads = next(h for h in (16, 8, 4, 2, 1) if width % h == 0)
    config.stage1.update(width=width, heads=heads)
    config.model.update(qformer_width=width, qformer_heads=min(config.model.qformer_heads, heads))
    return config


def check_submission(path, observation_ids, k: int = 10) -> int:
    """Raises `SubmissionError` unless `path` is the Kaggle CSV with one row per id; returns rows."""
    path = workdir_lib.as_path(path)
    if not path.exists():
        raise SubmissionError(f"no submission at {path}")
    lines = path.read_text().splitlines()
    if not lines or lines[0] != SUBMISSION_HEADER:
        raise SubmissionError(f"{path}: header {lines[:1]} is not {SUBMISSION_HEADER!r}")
    seen = []
    for n, line in enumerate(lines[1:], 2):
        m = re.fullmatch(r"(\d+),(\d+(?: \d+)*)", line)
        if not m or len(set(m.group(2).split())) != len(m.group(2).split()) or len(m.group(2).split()) > k:
            raise SubmissionError(f"{path}:{n}: {line[:80]!r} is not 'observationId,<up to {k} distinct ids>'")
        seen.append(int(m.group(1)))
    want = {int(o) for o in observation_ids}
    if len(seen) != len(set(seen)) or set(seen) != want:
        raise SubmissionError(f"{path}: {len(seen)} rows ({len(set(seen))} distinct observations), "
                              f"{len(set(seen) - want)} not in the test CSV, {len(want - set(seen))} test "
                              f"observations missing; expected {len(want)}")
    return len(seen)


def rehearse(csv_dir, workdir, keep: str = "tokens", steps: int = 20, width: int = 64, rows: int | None = None,
             views: int = 2, tokens: int = 257, dim: int = 768, shard_size: int = 1024, seed: int = 0,
             batch_size: int = 128) -> dict:
    """Cache, full run, submission check; returns (and writes to workdir/rehearsal.json) the report."""

    if steps < 2 or width < 1:
        raise ConfigError(f"--steps must be >= 2 (two checkpoints to ensemble) and --width >= 1; got {steps}, {width}")
    workdir = workdir_lib.as_path(workdir)
    if any((workdir / d).exists() for d in ("features", "stage1", "stage2")):
        raise ConfigError(f"--workdir {workdir} already holds a run; give a new folder (the timings must start cold)")
    meter = PhaseMeter()
    meter.start("cache")
    info = build_cache(csv_dir, workdir / "features", keep, views, seed, rows, tokens, dim, shard_size)
    undo = _hooked(full, meter)
    try:
        meter.start("load")
        summary = full.train_and_evaluate(rehearsal_config(workdir / "features", steps, width, batch_size), workdir)
    finally:
        undo()
    meter.start("check")
    split_rows = read_rows(csv_dir, rows)
    test_ids = {r["observationID"] for r in split_rows["test"]}
    ens = summary.get("ensemble") or {}
    names = ["submission_test.csv"] + (["submission_test_ensemble.csv"]
                                       if len(ens.get("members", [])) >= 2 and "note" not in ens else [])
    submissions = {n: check_submission(workdir / "stage2" / n, test_ids) for n in names}
    meter.close()
    report = {"settings": {"keep": keep, "views": views, "token_shape": [tokens if keep == "tokens" else 1, dim],
                           "steps_per_stage": steps, "width": width, "rows": rows, "shard_size": shard_size,
                           "batch_size": batch_size},
              "images": {s: v["num_images"] for s, v in info["splits"].items()},
              "observations": {s: len({r["observationID"] for r in v}) for s, v in split_rows.items()},
              "phases": meter.phases, "full_timings": summary.get("timings", {}),
              # the phases' peaks: resetting VmHWM resets ru_maxrss too
              "peak_rss_gb": max(p.get("peak_rss_gb", 0.0) for p in meter.phases.values()),
              "submissions": submissions, "tower": TOWER}
    (workdir / "rehearsal.json").write_text(json.dumps(report, indent=1))
    return report


def format_report(report: dict) -> str:
    s = report["settings"]
    lines = [f"rehearsal: {s['keep']} {s['views']}x{s['token_shape']} float16, "
             + ", ".join(f"{k} {v} images" for k, v in report["images"].items())
             + f"; width {s['width']}, {s['steps_per_stage']} steps per stage",
             f"{'phase':17s} {'seconds':>8s} {'CPU s':>8s} {'peak RSS GB':>11s} {'anon':>6s} {'file':>6s}"]
    phases = report["phases"]
    lines += [f"{name:17s} {p['seconds']:8.1f} {p['cpu_seconds']:8.1f} {p['peak_rss_gb']:11.2f} "
              f"{p.get('peak_anon_gb', 0):6.2f} {p.get('peak_file_gb', 0):6.2f}" for name, p in phases.items()]
    lines.append(f"{'total':17s} {sum(p['seconds'] for p in phases.values()):8.1f} "
                 f"{sum(p['cpu_seconds'] for p in phases.values()):8.1f} {report['peak_rss_gb']:11.2f}")
    lines.append("full.py's own timings: " + ", ".join(f"{k} {v}" for k, v in report["full_timings"].items()))
    lines.append("submissions: " + ", ".join(f"{n} {r} rows" for n, r in report["submissions"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fungizsl.fungiclef.rehearsal", description=__doc__.splitlines()[0])
    p.add_argument("--csv_dir", required=True, help="folder holding the three FungiTastic-FewShot CSVs")
    p.add_argument("--workdir", required=True, help="a new folder: the cache, the run and rehearsal.json")
    p.add_argument("--keep", default="tokens", choices=("tokens", "pooled"))
    p.add_argument("--steps", type=int, default=20, help="training steps per stage")
    p.add_argument("--width", type=int, default=64, help="stage-1 and Q-Former width")
    p.add_argument("--rows", type=int, default=None, help="keep the first N observations of each split")
    p.add_argument("--views", type=int, default=2)
    p.add_argument("--shard_size", type=int, default=1024, help="images per shard (configs/fungiclef.py: 1024)")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        report = rehearse(args.csv_dir, args.workdir, args.keep, args.steps, args.width, args.rows, args.views,
                          shard_size=args.shard_size, seed=args.seed, batch_size=args.batch_size)
    except ConfigError as error:
        print(f"rehearsal: {error}", file=sys.stderr)
        return 2
    except SubmissionError as error:
        print(f"rehearsal: submission check failed: {error}", file=sys.stderr)
        return 1
    print(format_report(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
