"""What the FungiCLEF trainers report, and how they hand a split to the evaluators.

* `eval_entries`: the evaluator configs of one split as `evaluate.registry.run_evaluators` takes
  them: the core's `split` / `every` keys dropped; `write_submission` becomes a
  `submission_path` of `submission_<split>.csv` in the run folder on the final pass; an explicit
  empty `submission_path` turns the submission off.
* `summarise`: the headline numbers of the `fungiclef_observations` evaluator (`HEADLINE`) with
  its baselines and pooling comparisons, the shape of every FungiCLEF `summary.json`.
* `describe`: the one-line progress of an evaluation; `format_table`: the full system's results
  as a small table (stage 2, stage 1, the ensemble, the organisers' baselines).
"""

from __future__ import annotations

from etils import epath

HEADLINE = ("top1", "top5", "top10", "macro_f1", "poison_cost", "num_observations")
#: Metrics in the progress line of the metadata-only trainer and of the full system's stages.
METADATA_DESCRIBED = ("top1", "top5", "baselines/metadata/top5")
FULL_DESCRIBED = ("top1", "top5", "baselines/prototype/top5", "baselines/metadata/top5")


def eval_entries(evals, out_dir, split: str) -> dict[str, dict]:
    """{name: evaluator config} of `evals` (the trainer's `config.evals`) for `split`; `out_dir`
    is the run folder on the final pass (where submissions go), else None."""
    entries = {}
    for name, cfg in evals.items():
        cfg = {k: v for k, v in dict(cfg).items() if k not in ("split", "every")}
        write = cfg.pop("write_submission", False)
        if out_dir is not None and cfg.get("submission_path") == "":
            cfg.pop("submission_path")
        elif out_dir is not None and write:
            cfg["submission_path"] = str(epath.Path(out_dir) / f"submission_{split}.csv")
        entries[name] = cfg
    return entries


def summarise(results: dict, eval_name: str = "fungiclef") -> dict:
    summary = {k: results.get(f"{eval_name}/{k}") for k in HEADLINE}
    baselines = {k[len(eval_name) + len("/baselines/"):]: v for k, v in results.items()
                 if k.startswith(f"{eval_name}/baselines/")}
    if baselines:
        summary["baselines"] = baselines
    pooling = {k[len(eval_name) + len("/pooling/"):]: v for k, v in results.items()
               if k.startswith(f"{eval_name}/pooling/")}
    if pooling:
        summary["pooling"] = pooling
    return summary


def describe(results: dict, keep=FULL_DESCRIBED) -> str:
    """"top1 0.1234, top5 ..." of the metrics in `keep` (names after "<eval name>/")."""
    return ", ".join(f"{k.split('/', 1)[1]} {v:.4f}" for k, v in results.items() if k.split("/", 1)[1] in keep)


def describe_metadata(results: dict) -> str:
    return describe(results, METADATA_DESCRIBED)


def format_table(summary: dict) -> str:
    """The full system's summary.json as a table: stage 2, stage 1, the ensemble, the baselines."""
    rows = [("stage 2 (features + Transformer + metadata)", summary)]
    if summary.get("stage1"):
        rows.append(("stage 1 only (prototype over DWCL embeddings)", summary["stage1"]))
    ens = summary.get("ensemble") or {}
    if "test" in ens:
        rows.append((ens.get("label") or f"ensemble of steps {ens['members']}", ens["test"]))
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
