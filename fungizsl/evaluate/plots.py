"""PNG plots and tables for evaluations a person would rather look at than read.

* `plot_confusion_matrix`: the zero-shot confusion matrix (FungalZSL, Rani, Arroyo, Durdevic
  2025, finds hyphae vs mycelium the hard pair; this is where it shows), each cell annotated with
  its count and its row-normalised percentage.
* `plot_per_class_accuracy`: a bar per class.
* `plot_grouped_bars`: a cluster of bars per run, one per test set (Planktonzilla's comparison).
* `caption_source_markdown` / `plot_caption_source_heatmap` / `caption_source_cross_table`: the
  caption-source comparison of FungalZSL (which LLM's descriptions align best), as a cross table
  of accuracy with the training caption source in rows and the evaluation source in columns.

Figures are drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
plotting works headless and from threads. Files are written at exactly `figsize * dpi` pixels
(no tight bounding box), so callers and tests can rely on the size.
"""

import io
import math
import os
from typing import Hashable, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fungizsl import workdir


def _figure(figsize, dpi) -> Figure:
    fig = Figure(figsize=figsize, dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path) -> str:
    """Renders to PNG bytes and writes them through epath, so ``path`` may be ``gs://...``."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=fig.dpi)
    workdir.write_bytes(path, buffer.getvalue())
    return os.fspath(path)


def _default_size(num_classes: int) -> tuple[float, float]:
    side = float(min(max(4.0, 1.1 * num_classes + 2.5), 30.0))
    return side, side


def plot_confusion_matrix(confusion, class_names: Sequence[str], path,
                          title: str = "Zero-shot confusion matrix",
                          figsize: tuple[float, float] | None = None, dpi: int = 100,
                          annotate: bool | None = None) -> str:
    """Writes a confusion-matrix heatmap PNG to `path` and returns the path.

    Colour is the row-normalised fraction (recall of the true class). Each cell reads
    "count\\nxx.x%"; annotations are on by default up to 30 classes. Rows are true classes,
    columns predicted classes.
    """
    cm = np.asarray(confusion, np.int64)
    num_classes = len(class_names)
    if cm.shape != (num_classes, num_classes):
        raise ValueError(f"confusion must be [{num_classes}, {num_classes}], got {cm.shape}")
    row_totals = cm.sum(axis=1, keepdims=True)
    fraction = np.divide(cm, row_totals, out=np.zeros(cm.shape, np.float64), where=row_totals > 0)

    fig = _figure(figsize or _default_size(num_classes), dpi)
    ax = fig.subplots()
    image = ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    ax.set_xticks(range(num_classes), labels=class_names, rotation=45, ha="right")
    ax.set_yticks(range(num_classes), labels=class_names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(f"{title}\n(n={int(cm.sum())}, accuracy={np.trace(cm) / max(cm.sum(), 1):.3f})")
    if annotate is None:
        annotate = num_classes <= 30
    if annotate:
        fontsize = max(5, min(10, int(60 / max(num_classes, 1))))
        for i in range(num_classes):
            for j in range(num_classes):
                color = "white" if fraction[i, j] > 0.5 else "black"
                ax.text(j, i, f"{cm[i, j]}\n{100 * fraction[i, j]:.1f}%", ha="center", va="center",
                        color=color, fontsize=fontsize)
    fig.subplots_adjust(left=0.2, bottom=0.2, right=0.86, top=0.88)
    return _save(fig, path)


def plot_per_class_accuracy(per_class_accuracy: Mapping[str, float], path,
                            title: str = "Per-class accuracy",
                            figsize: tuple[float, float] | None = None, dpi: int = 100) -> str:
    """Writes a bar chart of {class_name: accuracy} (NaN bars, classes without images, are
    left empty and labelled "n/a"); returns the path."""
    names = list(per_class_accuracy)
    values = np.array([per_class_accuracy[n] for n in names], np.float64)
    fig = _figure(figsize or (max(4.0, 0.6 * len(names) + 2.0), 4.0), dpi)
    ax = fig.subplots()
    bars = ax.bar(range(len(names)), np.nan_to_num(values, nan=0.0), color="tab:blue")
    for bar, value in zip(bars, values):
        label = "n/a" if math.isnan(value) else f"{value:.2f}"
        ax.text(bar.get_x() + bar.get_width() / 2, bar.get_height() + 0.01, label, ha="center",
                va="bottom", fontsize=8)
    ax.set_xticks(range(len(names)), labels=names, rotation=45, ha="right")
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("accuracy")
    ax.set_title(title)
    fig.subplots_adjust(left=0.15, bottom=0.25, top=0.88)
    return _save(fig, path)


def _cross_table(results: Mapping[tuple[Hashable, Hashable], float]):
    """Row (train source) and column (eval source) names in first-seen order, and the values."""
    rows, cols = [], []
    for train, evaluation in results:
        if train not in rows:
            rows.append(train)
        if evaluation not in cols:
            cols.append(evaluation)
    values = np.full((len(rows), len(cols)), np.nan)
    for (train, evaluation), value in results.items():
        values[rows.index(train), cols.index(evaluation)] = float(value)
    return rows, cols, values


def caption_source_markdown(results: Mapping[tuple[Hashable, Hashable], float],
                            precision: int = 3) -> str:
    """Markdown cross table of {(train_source, eval_source): accuracy}: training caption source
    in rows, evaluation source in columns, "–" for pairs not run, the best value in bold."""
    rows, cols, values = _cross_table(results)
    best = np.nanmax(values) if np.isfinite(values).any() else None
    lines = ["| train \\ eval | " + " | ".join(str(c) for c in cols) + " |",
             "|---|" + "---|" * len(cols)]
    for r, row in enumerate(rows):
        cells = []
        for value in values[r]:
            if math.isnan(value):
                cells.append("–")
            else:
                text = f"{value:.{precision}f}"
                cells.append(f"**{text}**" if value == best else text)
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_caption_source_heatmap(results: Mapping[tuple[Hashable, Hashable], float], path,
                                title: str = "Zero-shot accuracy by caption source",
                                figsize: tuple[float, float] | None = None, dpi: int = 100) -> str:
    """Writes the caption-source cross table as an annotated heatmap PNG; returns the path."""
    rows, cols, values = _cross_table(results)
    fig = _figure(figsize or (max(4.0, 1.3 * len(cols) + 2.5), max(3.0, 0.8 * len(rows) + 2.0)), dpi)
    ax = fig.subplots()
    image = ax.imshow(np.ma.masked_invalid(values), cmap="viridis", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, label="accuracy")
    ax.set_facecolor("lightgrey")  # pairs not run
    ax.set_xticks(range(len(cols)), labels=[str(c) for c in cols], rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=[str(r) for r in rows])
    ax.set_xlabel("evaluation caption source")
    ax.set_ylabel("training caption source")
    ax.set_title(title)
    for i in range(len(rows)):
        for j in range(len(cols)):
            text = "–" if math.isnan(values[i, j]) else f"{values[i, j]:.3f}"
            ax.text(j, i, text, ha="center", va="center",
                    color="white" if values[i, j] <= 0.6 else "black")  # NaN compares False
    fig.subplots_adjust(left=0.25, bottom=0.25, right=0.9, top=0.88)
    return _save(fig, path)


def caption_source_cross_table(results: Mapping[tuple[Hashable, Hashable], float],
                               png_path=None, **plot_kwargs) -> str:
    """Markdown cross table, and the heatmap PNG too when `png_path` is given."""
    if png_path is not None:
        plot_caption_source_heatmap(results, png_path, **plot_kwargs)
    return caption_source_markdown(results)


def plot_grouped_bars(groups: Mapping[str, Mapping[str, float | None]], path, title: str = "",
                      ylabel: str = "accuracy", dpi: int = 100) -> str:
    """One cluster of bars per group (e.g. a run), one bar per measure (e.g. a test set), each
    labelled with its value; a missing value (None) leaves its slot empty."""
    measures = list(dict.fromkeys(m for values in groups.values() for m in values))
    width = 0.8 / max(len(measures), 1)
    fig = _figure((max(6.0, 0.5 * len(groups) * max(len(measures), 1) + 2), 4.5), dpi)
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(groups))
    for j, measure in enumerate(measures):
        values = [groups[g].get(measure) for g in groups]
        heights = [np.nan if v is None else v for v in values]
        bars = ax.bar(x + (j - (len(measures) - 1) / 2) * width, heights, width, label=measure)
        for bar, value in zip(bars, values):
            if value is not None:
                ax.annotate(f"{value:.2f}", (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom",
                            fontsize=7)
    ax.set_xticks(x, list(groups), rotation=20, ha="right", fontsize=8)
    ax.set_ylim(0, 1.22)  # room for the legend above the tallest bars
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper center", ncol=max(len(measures), 1), frameon=False)
    fig.subplots_adjust(bottom=0.28)
    return _save(fig, path)
