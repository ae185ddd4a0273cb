"""The table of Planktonzilla's comparison, from finished runs of ``configs/planktonzilla.py``.

    fungizsl comparison runs/pz-growth-* runs/pz-defungi-* [--out table.md] [--plot comparison.png]

One row per run: the data set, the objective (supervised head or CLIP-style) and the training
text, the checkpoint chosen on val and its val number, then the test split evaluated once
(accuracy, mean per class, each class) and, where the run has them, the authors' generator and
the independent generator (growth stages only), and zero-shot accuracy among classes the run never
trained on, from the evaluation-only run in ``<run>/new_classes`` where there is one (species only:
see ``configs/planktonzilla.py``). Accuracy means the head's argmax for a
supervised run and zero-shot with the training text's prompts for a CLIP-style run. A run that
has not finished (no summary.json) or is not a run of that config stops the command with one
line naming its folder.
"""

from __future__ import annotations

import argparse

from etils import epath

from fungizsl import runs
from fungizsl.evaluate import plots
from fungizsl.errors import ConfigError

HEADER = ("data", "objective", "text", "chosen step (val acc.)", "test acc.", "mean per class", "per class",
          "authors' generator", "unseen generator", "new classes (zero-shot)")
NEW_CLASSES = "new_classes"  # <run>/new_classes: the evaluation-only run on held-out classes


def row(folder) -> dict:
    """The comparison's numbers of one finished run."""
    folder = epath.Path(folder)
    config, summary = runs.read_config(folder), runs.read_summary(folder)
    if config is None or summary is None:
        raise ConfigError(f"{folder}: not a finished run ({runs.CONFIG_FILE} and {runs.SUMMARY_FILE} needed)")
    what = config.get("comparison", None)
    if what is None:
        raise ConfigError(f"{folder}: not a run of configs/planktonzilla.py (its config has no 'comparison')")
    robustness = summary.get("robustness", {})
    selection = summary.get("selection", {})
    return {
        "folder": str(folder), "data": what["data"], "objective": what["objective"], "text": what["text"],
        "step": summary["step"], "val": selection.get("selection_value"),
        "test": summary["zeroshot_accuracy"], "mean_per_class": summary["zeroshot_mean_per_class_accuracy"],
        "per_class": summary["per_class_accuracy"],
        "paper": robustness.get("paper", {}).get("zeroshot_accuracy"),
        "unseen": robustness.get("unseen", {}).get("zeroshot_accuracy"),
        "new_classes": (runs.read_summary(folder / NEW_CLASSES) or {}).get("zeroshot_accuracy"),
    }


def _number(value) -> str:
    return "—" if value is None else f"{value:.3f}"


def _ordered(rows: list[dict]) -> list[dict]:
    order = {"supervised": 0, "clip": 1}
    return sorted(rows, key=lambda r: (r["data"], order.get(r["objective"], 2), r["text"]))


def markdown(rows: list[dict]) -> str:
    """The rows as one markdown table, data set by data set, supervised first."""
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in _ordered(rows):
        per_class = (" / ".join(f"{name} {acc:.2f}" for name, acc in r["per_class"].items())
                     if len(r["per_class"]) <= 5 else f"{len(r['per_class'])} classes")
        cells = (r["data"], r["objective"], r["text"], f"{r['step']} ({_number(r['val'])})", _number(r["test"]),
                 _number(r["mean_per_class"]), per_class, _number(r["paper"]), _number(r["unseen"]),
                 _number(r["new_classes"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path) -> str:
    """The table's accuracies as bars: one cluster per run, one bar per test set it has."""
    measures = (("test", "test split"), ("paper", "authors' generator"), ("unseen", "unseen generator"),
                ("new_classes", "new classes (zero-shot)"))
    groups = {f"{r['data']} {r['objective']}" + (f" ({r['text']})" if r["objective"] != "supervised" else ""):
              {label: r[key] for key, label in measures if r[key] is not None} for r in _ordered(rows)}
    return plots.plot_grouped_bars(groups, path, title="Supervised head vs CLIP-style training (same tower, data, budget)")


def register_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("comparison", help="Planktonzilla's table: supervised vs CLIP-style runs")
    parser.add_argument("workdirs", nargs="+", help="finished runs of configs/planktonzilla.py")
    parser.add_argument("--out", default=None, help="also write the markdown table to this file")
    parser.add_argument("--plot", default=None, help="also draw the accuracies as grouped bars into this PNG")
    parser.set_defaults(func=_run)
    return parser


def _run(args) -> int:
    rows = [row(folder) for folder in args.workdirs]
    table = markdown(rows)
    print(table, end="")
    if args.plot:
        print(f"wrote {plot(rows, args.plot)}")
    if args.out:
        epath.Path(args.out).write_text(table)
        print(f"wrote {args.out}")
    return 0
