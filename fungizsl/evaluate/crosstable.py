"""Caption-source cross table, as in FungalZSL's comparison of which LLM's captions align best.

Each training run (one per caption source A) evaluates zero-shot accuracy with several caption
sources B (`config.evals.zeroshot.sources`) and stores them in its `summary.json`; this command
collects the runs into one table, rows = training source, columns = evaluation source:

    fungizsl crosstable runs/zsl-split runs/zsl-generated runs/zsl-templates --out crosstable.png
"""

import argparse
import json
import os

from fungizsl.evaluate import plots


def collect(workdirs) -> dict:
    """{(train source, eval source): zero-shot accuracy} from the runs' summary.json files."""
    results = {}
    for workdir in workdirs:
        path = os.path.join(workdir, "summary.json")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: has the run in {workdir} finished?")
        with open(path) as f:
            summary = json.load(f)
        by_source = summary.get("zeroshot_accuracy_by_caption_source")
        if not by_source:
            raise ValueError(f"{path} has no zeroshot_accuracy_by_caption_source")
        train_source = os.path.splitext(os.path.basename(summary["captions"]))[0]
        for eval_source, accuracy in by_source.items():
            results[train_source, eval_source] = accuracy
    return results


def register_cli(subparsers) -> argparse.ArgumentParser:
    parser = subparsers.add_parser("crosstable", help="zero-shot accuracy: training captions x evaluation captions")
    parser.add_argument("workdirs", nargs="+", help="finished fungizsl runs (each with summary.json)")
    parser.add_argument("--out", default="crosstable.png", help="heatmap PNG; the markdown table goes to stdout")
    parser.set_defaults(func=_run)
    return parser


def _run(args) -> int:
    results = collect(args.workdirs)
    print(plots.caption_source_cross_table(results, png_path=args.out))
    print(f"wrote {args.out}")
    return 0
