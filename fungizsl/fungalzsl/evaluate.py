"""Evaluation-only runs: point a config at one or more models and a dataset, get tables and plots.

    python -m fungizsl.main --config=configs/evaluate.py:model=MODEL_DIR,images=CLASS_FOLDER --workdir=DIR

This is the trainer module ``fungizsl.fungalzsl.evaluate`` that ``configs/evaluate.py`` names; it
trains nothing. (With ``fungiclef=CSV`` that config names ``fungizsl.fungiclef.evaluate`` instead,
which scores a trained FungiCLEF run per observation on a FungiCLEF CSV.)

Models (`config.models`, or `model=A;B` in the config argument), loaded by
:mod:`fungizsl.fungalzsl.load`:
  * a Hugging Face CLIP folder (`config.json` + `model.safetensors` + tokenizer files), e.g. the
    `hf_export/` folder a fungizsl ViT run writes;
  * an open_clip folder (`open_clip_config.json` + weights: BioCLIP, OpenAI's RN50, or the
    `open_clip_export/` folder a fungizsl ResNet run such as `./launch/local.sh` writes); its
    tokenizer files, else CLIP's BPE vocabulary from the open_clip package;
  * a fungizsl training workdir (the checkpoint its summary.json reports, i.e. the one chosen on
    val, else its newest) or one step folder
    `<workdir>/checkpoints/<step>`: the model is rebuilt from the run's `fungizsl_config.json`
    and tokenizer, as `config.model.init=<run>` does for training.
Data (`config.data.kind`), read by :mod:`fungizsl.data.image_sets`:
  * "folder": a class-folder of images of any size (`root/<class>/<image>`); class names are the
    folder names (sorted, or `config.data.class_names`);
  * "tfds": a split of a prepared TFDS builder of `fungizsl.data.builders`
    (`tfds_builder`, `tfds_config`, `tfds_dir`, `split`);
  * "csv": images listed in a CSV with a label column (`csv`, `image_column`, `label_column`,
    `image_root`), e.g. Mushroom Observer's images.csv.
Images are resized and center-cropped to the model's input size with CLIP normalisation (the
evaluation transform of the training pipeline). A file that does not decode is skipped and
counted, as the dataset builders do: one line on stderr names the first few, and `summary.json`
holds `num_skipped_images` and `skipped_images` (file and reason); metrics cover the others.

Evaluations (zero-shot always; the others when configured under `config.evals`):
  zeroshot      prompt-ensembled zero-shot accuracy for each prompt source in `config.prompts`
  taxonomy      accuracy at every rank (needs `config.taxonomy`), `fungizsl.evaluate.taxonomy`
  chils         CHiLS over subclass prompts (`config.evals.chils.subclasses`)
  descriptions  classification by description (`config.evals.descriptions.source`)
  openset       unknowns simulated by leaving classes out of the label set
  decisions     expected-cost decisions (`config.evals.decisions.poisonous_classes`)

Writes (process 0 only, through etils.epath so gs:// works): `DIR/summary.json` and
`DIR/confusion_matrix.png` (one model), or per-model confusion plots, `DIR/comparison.json` and
`DIR/comparison.png` (several models). Nothing else is written and no model is changed.
"""

from __future__ import annotations

import os
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
from tqdm.auto import tqdm

from fungizsl import metrics_io, runs
from fungizsl.errors import ConfigError
from fungizsl.data import augment, image_sets
from fungizsl.data import captions as caption_lib
from fungizsl.evaluate import descriptions, openset, plots, zeroshot
from fungizsl.evaluate import taxonomy as taxonomy_lib
from fungizsl.evaluate.registry import make_evaluator
from fungizsl.fungalzsl import load

# Generic prompts for classes that are not growth stages (photos of fruiting bodies, microscopy).
NAME_TEMPLATES = ("a photo of {}.", "a close-up photo of {}.", "a photo of the fungus {}.",
                  "an image of {}.", "a microscopy image of {}.")


def embed_images(model: load.LoadedModel, images: image_sets.ImageSet, batch_size: int, workers: int = 4,
                 skipped: list | None = None) -> np.ndarray:
    """Unit image embeddings [N, D]; decoding and resizing run on `workers` threads. With a list
    `skipped`, an image that does not decode is left out (the rows are those of the others, in
    order) and `(index, reason)` is appended to `skipped`; without it the error propagates."""
    norm = augment.get_normalization(model.normalization)

    def prepare(i):
        try:
            return augment.eval_image(images.load(i), model.image_size, norm)
        except augment.CorruptImageError as error:
            if skipped is None:
                raise
            return str(error)

    out = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in tqdm(range(0, len(images), batch_size), desc=f"embed images ({model.name})",
                          disable=jax.process_index() != 0, leave=False):
            indices = range(start, min(start + batch_size, len(images)))
            prepared = list(pool.map(prepare, indices))
            if skipped is not None:
                skipped.extend((i, p) for i, p in zip(indices, prepared) if isinstance(p, str))
            batch = [p for p in prepared if not isinstance(p, str)]
            if batch:
                out.append(model.encode_images(np.stack(batch)))
    if not out:
        raise ConfigError(f"no image of {images.describe} decodes ({len(images)} tried); check the image files")
    return np.concatenate(out)


def skip_message(files: Sequence[str], total: int) -> str:
    """The one line an evaluation with undecodable images prints (stderr, process 0)."""
    shown = ", ".join(files[:3]) + (", ..." if len(files) > 3 else "")
    return (f"fungizsl: skipped {len(files)} of {total} images that do not decode ({shown}); "
            f"summary.json lists them under skipped_images")


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def _phrase(name: str) -> str:
    return name.replace("_", " ")


def resolve_prompt_source(source: str, class_names: Sequence[str]) -> str:
    """"auto" -> "templates" for growth stages, "names" for any other classes."""
    if source != "auto":
        return source
    return "templates" if all(c in caption_lib.STAGE_PHRASES for c in class_names) else "names"


def prompts_for(source: str, class_names: Sequence[str], config, taxonomy=None) -> dict[str, list[str]]:
    """{class: [prompt, ...]} of one prompt source named in `config.prompts`."""
    source = resolve_prompt_source(source, class_names)
    if source == "templates":
        return caption_lib.TemplateSource(list(class_names)).by_class()
    if source == "names":
        return {c: [t.format(_phrase(c)) for t in NAME_TEMPLATES] for c in class_names}
    if source == "lineage":
        if taxonomy is None:
            raise ValueError("prompt source 'lineage' needs config.taxonomy (a CSV or taxonomy file)")
        return {c: [taxonomy.lineage_prompt(i)] for i, c in enumerate(taxonomy.classes)}
    if source == "descriptions":
        given = config.get("class_descriptions", None) or {}
        given = given.to_dict() if hasattr(given, "to_dict") else dict(given)
        by_class = {k: list(v) for k, v in given.items()}
    elif source.endswith(".jsonl"):
        by_class = caption_lib.JsonlSource(source).by_class()
    elif source in ("fungalzsl_generated", "fungalzsl_split"):
        kwargs = ({"path": config.captions_dir} if source == "fungalzsl_generated"
                  else {"root": config.captions_dir, "split": "test"})
        by_class = caption_lib.get_caption_source(source, **kwargs).by_class()
    else:
        raise ValueError(f"unknown prompt source {source!r}: use auto, templates, names, lineage, descriptions, "
                         f"fungalzsl_generated, fungalzsl_split or a .jsonl file of {{\"class\", \"text\"}}")
    missing = [c for c in class_names if not by_class.get(c)]
    if missing:
        raise ValueError(f"prompt source {source!r} has no text for classes {missing}")
    return {c: by_class[c] for c in class_names}


def embed_prompts(model: load.LoadedModel, by_class: dict[str, list[str]], class_names) -> list[np.ndarray]:
    texts = [t for c in class_names for t in by_class[c]]
    emb = model.encode_texts(texts)
    out, start = [], 0
    for c in class_names:
        out.append(emb[start:start + len(by_class[c])])
        start += len(by_class[c])
    return out


def _source_label(source: str) -> str:
    return os.path.splitext(os.path.basename(source))[0] if source.endswith(".jsonl") else source


# ---------------------------------------------------------------------------------------------
# One model
# ---------------------------------------------------------------------------------------------


def _load_taxonomy(config, class_names):
    t = config.get("taxonomy", None)
    if not t or not t.get("path"):
        return None
    if t.path.endswith(".json") or t.get("format") == "file":
        return taxonomy_lib.Taxonomy.from_file(t.path, classes=class_names)
    return taxonomy_lib.Taxonomy.from_csv(t.path, class_column=t.get("class_column") or None, classes=class_names)


def evaluate_model(config, model: load.LoadedModel, images: image_sets.ImageSet, plot_path=None) -> dict[str, Any]:
    names = images.class_names
    skipped: list = []  # undecodable images are left out and counted (docs/evaluation.md)
    zimg = embed_images(model, images, config.batch_size, config.data.get("workers", 4), skipped)
    y = np.delete(images.labels, [i for i, _ in skipped])
    taxonomy = _load_taxonomy(config, names)
    results: dict[str, Any] = {}
    sources = [resolve_prompt_source(s.strip(), names) for s in str(config.prompts).split(",") if s.strip()]
    first_logits = None
    for i, source in enumerate(sources):
        by_class = prompts_for(source, names, config.data, taxonomy)
        class_emb = zeroshot.class_embeddings(embed_prompts(model, by_class, names))
        logits = model.logit_scale * zeroshot.zero_shot_predict(zimg, class_emb)
        m = zeroshot.zero_shot_metrics(logits, y, names, ks=tuple(config.ks))
        results[f"zeroshot/{_source_label(source)}"] = m
        if i == 0:
            first_logits, first_source = logits, by_class
    main = results[f"zeroshot/{_source_label(sources[0])}"]
    summary: dict[str, Any] = {
        "model": {"name": model.name, "source": model.source, "kind": model.kind, "image_size": model.image_size,
                  **({"step": model.step} if model.step is not None else {})},
        "data": {"source": images.describe, "class_names": names},
        "prompts": sources,
        "zeroshot_accuracy": main["accuracy"],
        "mean_per_class_accuracy": main["mean_per_class_accuracy"],
        "per_class_accuracy": main["per_class_accuracy"],
        "top_k": main["top_k"],
        "num_images": main["num_images"],
        "num_skipped_images": len(skipped),
        "skipped_images": [{"file": images.names[i], "reason": reason} for i, reason in skipped],
        "confusion_matrix": main["confusion"].tolist(),
        "zeroshot_accuracy_by_prompt_source": {k.split("/", 1)[1]: v["accuracy"] for k, v in results.items()},
    }
    evals = config.get("evals", {}) or {}
    extra: dict[str, Any] = {}
    if "taxonomy" in evals and taxonomy is not None:
        extra["taxonomy"] = dict(make_evaluator("taxonomy", evals.taxonomy).run(
            logits=first_logits, image_labels=y, taxonomy=taxonomy))
    if "chils" in evals:
        extra["chils"] = _run_chils(config, evals.chils, model, zimg, y, names, first_source)
    if "descriptions" in evals:
        d = evals.descriptions
        desc = descriptions.descriptors_by_class(prompts_for(d.source, names, config.data), names,
                                                 d.get("template", "{text}"), d.get("per_class") or None)
        extra["descriptions"] = dict(make_evaluator("descriptions", d).run(
            zimg=zimg, image_labels=y, descriptor_embeddings=embed_prompts(model, desc, names),
            prompt_embeddings=embed_prompts(model, first_source, names)))
    if "openset" in evals:
        extra["openset"] = _run_openset(evals.openset, model, zimg, y, names, first_source)
    if "decisions" in evals:
        poisonous = set(evals.decisions.get("poisonous_classes", ()) or ())
        unknown = poisonous - set(names)
        if unknown:
            raise ValueError(f"config.evals.decisions.poisonous_classes names unknown classes {sorted(unknown)}")
        extra["decisions"] = dict(make_evaluator("decisions", evals.decisions).run(
            logits=first_logits, image_labels=y, poisonous=np.asarray([c in poisonous for c in names])))
    if extra:
        summary["evals"] = extra
    if plot_path is not None:
        summary["_plot"] = (main["confusion"], f"{model.name} on {os.path.basename(images.describe)}", plot_path)
    return summary


def _run_chils(config, cfg, model, zimg, y, names, parent_prompts):
    """CHiLS with subclasses from `cfg.subclasses`: "phrases" (the growth-stage phrases of
    `fungizsl.data.captions`, each phrase a subclass prompted through the templates) or a
    .jsonl file of {"class": parent, "text": subclass prompt}."""
    if cfg.subclasses == "phrases":
        missing = [c for c in names if c not in caption_lib.STAGE_PHRASES]
        if missing:
            raise ValueError(f"chils subclasses='phrases' knows no phrases for {missing}; give a .jsonl file")
        subs = [(k, [t.format(p) for t in caption_lib.TEMPLATES])
                for k, c in enumerate(names) for p in caption_lib.STAGE_PHRASES[c]]
    else:
        by_class = caption_lib.JsonlSource(cfg.subclasses).by_class()
        subs = [(k, [text]) for k, c in enumerate(names) for text in by_class.get(c, [])]
    sub_emb = zeroshot.class_embeddings([model.encode_texts(texts) for _, texts in subs])
    parent_emb = zeroshot.class_embeddings(embed_prompts(model, parent_prompts, names))
    return dict(make_evaluator("chils", cfg).run(
        sub_logits=model.logit_scale * zeroshot.zero_shot_predict(zimg, sub_emb),
        sub_to_parent=np.asarray([k for k, _ in subs]),
        parent_logits=model.logit_scale * zeroshot.zero_shot_predict(zimg, parent_emb), image_labels=y))


def _run_openset(cfg, model, zimg, y, names, prompts):
    """Unknowns simulated by leaving classes out of the zero-shot label set."""
    if cfg.get("unknown_classes"):
        unknown = [names.index(c) for c in cfg.unknown_classes]
        known = [k for k in range(len(names)) if k not in unknown]
    else:
        known, unknown = openset.hold_out_classes(len(names), int(cfg.get("num_unknown", 1)), int(cfg.get("seed", 0)))
    known_names = [names[k] for k in known]
    class_emb = zeroshot.class_embeddings(embed_prompts(model, prompts, known_names))
    logits = model.logit_scale * zeroshot.zero_shot_predict(zimg, class_emb)
    metrics = dict(make_evaluator("openset", cfg).run(logits=logits, image_labels=openset.open_set_labels(y, known)))
    metrics["unknown_classes"] = [names[k] for k in unknown]
    return metrics


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------


def _write_png(draw: Callable[[str], Any], dest: epath.Path) -> None:
    """Draws to a local temporary file, then copies it to `dest` (which may be gs://...)."""
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "plot.png")
        draw(local)
        dest.write_bytes(open(local, "rb").read())


def comparison_rows(summaries: Sequence[dict]) -> list[dict[str, Any]]:
    rows = []
    for s in summaries:
        row = {"model": s["model"]["name"], "zeroshot_accuracy": s["zeroshot_accuracy"],
               "mean_per_class_accuracy": s["mean_per_class_accuracy"]}
        row.update({f"acc[{k}]": v for k, v in s["per_class_accuracy"].items()})
        rows.append(row)
    return rows


def comparison_markdown(rows: Sequence[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        lines.append("| " + " | ".join(f"{r[k]:.3f}" if isinstance(r[k], float) else str(r[k]) for k in keys) + " |")
    return "\n".join(lines)


def _plot_comparison(rows, path):
    fig = plots._figure((max(4.0, 1.2 * len(rows) + 2.0), 4.0), 100)
    ax = fig.subplots()
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["zeroshot_accuracy"] for r in rows], 0.4, label="accuracy")
    ax.bar(x + 0.2, [r["mean_per_class_accuracy"] for r in rows], 0.4, label="mean per-class accuracy")
    ax.set_xticks(x, labels=[r["model"] for r in rows], rotation=30, ha="right")
    ax.set_ylim(0, 1.05)
    ax.set_ylabel("zero-shot accuracy")
    ax.legend(loc="upper right", fontsize=8)
    fig.subplots_adjust(bottom=0.3)
    plots._save(fig, path)


def model_specs(config) -> list[str]:
    specs = list(config.get("models", ()) or ())
    if not specs:
        raise ConfigError("config.models is empty: name at least one model (model=DIR or model=A;B)")
    return specs


def check_config(config: ml_collections.ConfigDict) -> None:
    """What ``fungizsl.main`` checks before any model is loaded or anything written: every
    ``model=`` folder, and a class folder ``images=`` (one-line :class:`ConfigError` otherwise)."""
    for spec in model_specs(config):
        load.check_model_folder(spec)
    if config.data.kind == "folder" and not epath.Path(config.data.images).is_dir():
        raise ConfigError(f"config.data.images={config.data.images}: no such folder; images= names a folder "
                          f"of class folders (root/<class>/<image>)")


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Entry point called by fungizsl.main for config.trainer == "fungizsl.fungalzsl.evaluate" (no
    training)."""
    out = epath.Path(workdir)
    is_main = jax.process_index() == 0
    images = image_sets.make_image_set(config.data)
    specs = model_specs(config)
    several = len(specs) > 1
    summaries = []
    for k, spec in enumerate(specs):
        model = load.load_model(spec, config.batch_size)
        plot_name = f"confusion_matrix_{k}_{model.name}.png" if several else "confusion_matrix.png"
        summaries.append(evaluate_model(config, model, images, out / plot_name))
        if k == 0 and is_main and summaries[0]["num_skipped_images"]:
            files = [s["file"] for s in summaries[0]["skipped_images"]]
            print(skip_message(files, len(images)), file=sys.stderr, flush=True)
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        for s in summaries:
            confusion, title, path = s.pop("_plot")
            _write_png(lambda p: plots.plot_confusion_matrix(confusion, images.class_names, p,
                                                             title=f"Zero-shot: {title}"), path)
    else:
        for s in summaries:
            s.pop("_plot")
    if not several:
        summary = summaries[0]
        if is_main:
            metrics_io.write_json(out / runs.SUMMARY_FILE, summary)
        return {k: v for k, v in summary.items() if k not in ("data", "confusion_matrix", "skipped_images")}
    rows = comparison_rows(summaries)
    table = comparison_markdown(rows)
    summary = {"models": summaries, "comparison": rows, "num_images": len(images),
               "num_skipped_images": summaries[0]["num_skipped_images"],
               "skipped_images": summaries[0]["skipped_images"],
               "data": {"source": images.describe, "class_names": images.class_names}}
    if is_main:
        print(table, flush=True)
        metrics_io.write_json(out / runs.SUMMARY_FILE, summary)
        metrics_io.write_json(out / "comparison.json", rows)
        _write_png(lambda p: _plot_comparison(rows, p), out / "comparison.png")
    return {f"{r['model']}/{key}": r[key] for r in rows for key in ("zeroshot_accuracy", "mean_per_class_accuracy")}
