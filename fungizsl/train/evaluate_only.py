"""Evaluation-only runs: point a config at one or more models and a dataset, get tables and plots.

    python -m fungizsl.main --config=configs/evaluate.py:model=MODEL_DIR,images=CLASS_FOLDER --workdir=DIR

Models (`config.models`, or `model=A;B` in the config argument):
  * a Hugging Face CLIP folder (`config.json` + `model.safetensors` + tokenizer files), e.g. the
    `hf_export/` folder a fungizsl ViT run writes;
  * an open_clip folder (`open_clip_config.json` + weights: BioCLIP, OpenAI's RN50, or the
    `open_clip_export/` folder a fungizsl ResNet run such as `./launch/local.sh` writes); its
    tokenizer files, else CLIP's BPE vocabulary from the open_clip package;
  * a fungizsl training workdir (the checkpoint its summary.json reports, i.e. the one chosen on
    val, else its newest) or one step folder
    `<workdir>/checkpoints/<step>`: the model is rebuilt from the run's `fungizsl_config.json`
    and tokenizer, as `config.model.init=<run>` does for training.
Data (`config.data.kind`):
  * "folder": a class-folder of images of any size (`root/<class>/<image>`); class names are the
    folder names (sorted, or `config.data.class_names`);
  * "tfds": a split of a prepared TFDS builder of `fungizsl.data.builders`
    (`tfds_builder`, `tfds_config`, `tfds_dir`, `split`);
  * "csv": images listed in a CSV with a label column (`csv`, `image_column`, `label_column`,
    `image_root`), e.g. Mushroom Observer's images.csv;
  * "fungiclef": a FungiCLEF CSV scored per observation by a trained FungiCLEF run (not a CLIP
    model): `fungizsl/train/fungiclef_evaluate.py` does that whole evaluation.
Images are resized and center-cropped to the model's input size with CLIP normalisation (the
evaluation transform of the training pipeline). A file that does not decode stops the run with
an error naming it.

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

import dataclasses
import json
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np
from etils import epath
from tqdm.auto import tqdm

from fungizsl.data import augment
from fungizsl.errors import ConfigError
from fungizsl.evaluate import make_evaluator, metrics_io, openset, zeroshot
from fungizsl.evaluate import taxonomy as taxonomy_lib

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".gif", ".webp")
SUMMARY_FILE = "summary.json"
# Generic prompts for classes that are not growth stages (photos of fruiting bodies, microscopy).
NAME_TEMPLATES = ("a photo of {}.", "a close-up photo of {}.", "a photo of the fungus {}.",
                  "an image of {}.", "a microscopy image of {}.")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class LoadedModel:
    """A two-tower model behind plain callables: images or texts in, unit embeddings out."""

    name: str
    source: str
    kind: str  # "hf_clip" | "open_clip" | "fungizsl_run"
    image_size: int
    logit_scale: float
    encode_images: Callable[[np.ndarray], np.ndarray]
    encode_texts: Callable[[Sequence[str]], np.ndarray]
    normalization: str = "clip"
    step: int | None = None  # the checkpoint step of a fungizsl run (its val-selected one by default)


def _is_hf_folder(path: epath.Path) -> bool:
    return (path / "config.json").is_file()


def _is_fungizsl_run(path: epath.Path) -> bool:
    return (path / "checkpoints").is_dir() or (path / "state").is_dir()


def _run_root(path: epath.Path) -> epath.Path:
    """The run folder of a workdir or of a step folder `<run>/checkpoints/<step>`."""
    if (path / "state").is_dir():
        return path.parent.parent
    return path


def _wrap(module, variables, tokenizer, name, source, kind, batch_size) -> LoadedModel:
    """`variables`: {"params": ...} plus, for a ResNet tower, its BatchNorm "batch_stats"."""
    from fungizsl.models import two_towers

    encode_image = jax.jit(lambda v, x: two_towers.l2_normalize(module.apply(v, x, method="encode_image")))
    encode_text = jax.jit(lambda v, ids: two_towers.l2_normalize(module.apply(v, ids, method="encode_text")))
    params = jax.device_put(variables)

    def padded(fn, batch):  # one compiled shape: pad every batch to batch_size
        n = len(batch)
        if n < batch_size:
            batch = np.concatenate([batch, np.repeat(batch[-1:], batch_size - n, axis=0)])
        return np.asarray(fn(params, batch))[:n]

    def encode_texts(texts):
        out = []
        for start in range(0, len(texts), batch_size):
            ids = tokenizer(list(texts[start:start + batch_size]))["input_ids"]
            out.append(padded(encode_text, ids))
        return np.concatenate(out)

    scale = float(np.exp(min(float(np.asarray(params["params"]["logit_scale"])), float(two_towers.MAX_LOGIT_SCALE))))
    return LoadedModel(name=name, source=source, kind=kind, image_size=module.config.vision.image_size,
                       logit_scale=scale, encode_images=lambda x: padded(encode_image, x),
                       encode_texts=encode_texts)


def load_model(spec: str, batch_size: int = 32) -> LoadedModel:
    """Loads a Hugging Face CLIP folder or a fungizsl run/step folder (see the module doc)."""
    from fungizsl import tokenizers, weights

    path = epath.Path(spec)
    name = path.name if path.name not in ("hf_export", "") else f"{path.parent.name}-hf"
    if _is_hf_folder(path):
        with (path / "config.json").open() as f:
            model_type = json.load(f).get("model_type", "")
        if model_type != "clip":
            raise ValueError(f"model {spec}: evaluation-only runs need a two-tower CLIP model; its config.json "
                             f"says model_type={model_type!r}")
        module, params = weights.load_pretrained(os.fspath(path))
        tokenizer = tokenizers.load_tokenizer(os.fspath(path), length=module.config.text.context_length)
        module = pool_at_tokenizer_eot(module, tokenizer)
        return _wrap(module, {"params": params}, tokenizer, name, spec, "hf_clip", batch_size)
    if weights.open_clip.is_open_clip_checkpoint(os.fspath(path)):  # BioCLIP, OpenAI RN50, a ResNet run's export
        module, variables = weights.open_clip.load_open_clip(os.fspath(path))
        tokenizer, _ = weights.open_clip.load_open_clip_tokenizer(os.fspath(path), tempfile.mkdtemp(prefix="bpe_"))
        if path.name == "open_clip_export":
            name = f"{path.parent.name}-open_clip"
        return _wrap(module, variables, tokenizer, name, spec, "open_clip", batch_size)
    if _is_fungizsl_run(path):
        from fungizsl.train import fungiclef_evaluate

        if fungiclef_evaluate.find_run_root(path) is not None:
            raise ConfigError(f"model {spec} is a FungiCLEF run, not a two-tower CLIP model: evaluate it per "
                              f"observation on a FungiCLEF CSV (fungiclef=CSV, config.data.fungiclef_csv)")
        module, variables, tokenizer = load_run(path)
        root = _run_root(path)
        name = root.name if path == root else f"{root.name}@{path.name}"
        loaded = _wrap(module, variables, tokenizer, name, spec, "fungizsl_run", batch_size)
        chosen = selected_step_folder(path)
        loaded.step = int(chosen.name) if chosen.name.isdigit() else None
        return loaded
    for export in ("hf_export", "open_clip_export"):
        if (path / export).is_dir():
            return load_model(os.fspath(path / export), batch_size)
    raise FileNotFoundError(
        f"model {spec!r} is neither a Hugging Face CLIP folder (config.json), an open_clip folder "
        f"(open_clip_config.json), a fungizsl workdir (checkpoints/), a checkpoint step folder (state/) "
        f"nor a run with hf_export/ or open_clip_export/")


def load_run(path: epath.Path):
    """(module, variables, tokenizer) of a fungizsl FungalZSL run or step folder, rebuilt from the
    run's fungizsl_config.json and tokenizer/ as `config.model.init=<run>` does for training
    (float32, layers unrolled)."""
    import dataclasses as dc

    from fungizsl import tokenizers
    from fungizsl.models import two_towers
    from fungizsl.train import checkpoint

    root = _run_root(path)
    config_file = root / "fungizsl_config.json"
    if not config_file.is_file():
        raise FileNotFoundError(f"model {os.fspath(path)}: {config_file} is missing; is this a fungizsl run?")
    run = ml_collections.ConfigDict(json.loads(config_file.read_text()))
    m = run.model
    tokenizer_dir = root / "tokenizer"
    if not tokenizer_dir.is_dir() and m.get("init", "scratch") != "scratch":
        # Initialised from an earlier run: the tokenizer lives in that run's folder.
        start = epath.Path(m.init)
        tokenizer_dir = next((p / "tokenizer" for p in (start, *start.parents) if (p / "tokenizer").is_dir()),
                             tokenizer_dir)
    if m.get("init", "scratch") != "scratch" and (epath.Path(m.init) / "config.json").is_file():
        # Fine-tuned from a Hugging Face folder: that folder's architecture and tokenizer.
        from fungizsl import weights

        module, _ = weights.load_pretrained(m.init)
        tokenizer = tokenizers.load_tokenizer(m.init, length=module.config.text.context_length)
    else:
        tokenizer = tokenizers.load_tokenizer(os.fspath(tokenizer_dir), length=m.text_context)
        from fungizsl.train.fungalzsl import tower_config

        clip = two_towers.clip_config(m.arch)
        clip = dc.replace(
            clip, vision=tower_config(run, clip.vision),
            text=dc.replace(clip.text, vocab_size=tokenizer.vocab_size, eot_token_id=tokenizer.eot_id,
                            context_length=tokenizer.context_length))
        module = two_towers.ClipModel(clip)
    variables = checkpoint.load_variables(os.fspath(selected_step_folder(path)))
    variables["params"] = two_towers_params(variables["params"])
    return module, variables, tokenizer


def selected_step_folder(path: epath.Path) -> epath.Path:
    """The checkpoint step folder to evaluate: a step folder as given; for a run folder, the step
    its summary.json reports (`selection.step`, the one chosen on val) when it is still on disk,
    else the newest step. A folder with no steps comes back as it is (the loader names the error)."""
    if (path / "state").is_dir() or not (path / "checkpoints").is_dir():
        return path
    steps = sorted(int(p.name) for p in (path / "checkpoints").iterdir()
                   if p.name.isdigit() and (p / "state").is_dir())
    selected = None
    if (path / "summary.json").is_file():
        selected = (json.loads((path / "summary.json").read_text()).get("selection") or {}).get("step")
    step = selected if selected in steps else (steps[-1] if steps else None)
    return path if step is None else path / "checkpoints" / str(step)


def pool_at_tokenizer_eot(module, tokenizer):
    """The text tower pools at the tokenizer's end-of-text id.

    A Hugging Face config with eos_token_id=2 means "pool at argmax(input_ids)" (the legacy
    OpenAI convention, where end-of-text is the largest id), and the weight loader follows it.
    The byte-level BPE that fungizsl trains for from-scratch runs really has end-of-text id 2,
    so its `hf_export/` folders would pool at the wrong token; the tokenizer knows the truth.
    """
    import dataclasses as dc

    from fungizsl.models import two_towers

    eot = getattr(tokenizer, "eot_id", None)
    if eot is None or eot == module.config.text.eot_token_id:
        return module
    text = dc.replace(module.config.text, eot_token_id=int(eot))
    return two_towers.ClipModel(dc.replace(module.config, text=text))


def two_towers_params(params):
    """Checkpoints of scanned runs hold stacked layers; this loader builds unscanned modules."""
    encoder = params.get("vision_model", {}).get("encoder", {})
    if "layers" in encoder and not any(k.startswith("layers_") for k in encoder):
        from fungizsl.weights.convert import unstack_layers

        return unstack_layers(params)
    return params


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ImageSet:
    """Images to evaluate: a way to load each image, its label, and the class names."""

    class_names: list[str]
    labels: np.ndarray
    describe: str
    load: Callable[[int], Any]  # index -> PIL image (RGB)
    names: list[str]

    def __len__(self):
        return len(self.labels)


def folder_images(root: str, class_names: Sequence[str] | None = None) -> ImageSet:
    """`root/<class>/<image>` (nested folders below a class are included; hidden files skipped)."""
    root_path = epath.Path(root)
    if not root_path.is_dir():
        raise FileNotFoundError(f"config.data.images={root!r} is not a folder")

    def files(folder):
        for entry in sorted(folder.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                yield from files(entry)
            elif entry.suffix.lower() in IMAGE_EXTENSIONS:
                yield entry

    found = {d.name: list(files(d)) for d in sorted(root_path.iterdir())
             if d.is_dir() and not d.name.startswith(".")}
    found = {k: v for k, v in found.items() if v}
    names = list(class_names) if class_names else sorted(found)
    missing = [c for c in names if c not in found]
    if missing:
        raise FileNotFoundError(f"{root}: no images for classes {missing}; class folders found: {sorted(found)}")
    if not names:
        raise FileNotFoundError(f"{root}: no class folders with images ({', '.join(IMAGE_EXTENSIONS)})")
    paths = [p for c in names for p in found[c]]
    labels = np.asarray([k for k, c in enumerate(names) for _ in found[c]], np.int64)

    def load(i):
        return augment.load_image(paths[i].read_bytes(), where=os.fspath(paths[i]))

    return ImageSet(names, labels, f"folder:{root}", load, [os.fspath(p) for p in paths])


def tfds_images(builder: str, config: str, split: str, data_dir: str) -> ImageSet:
    from fungizsl.data import builders

    source = builders.data_source(builder, split, config=config or None, data_dir=data_dir)
    info = source.dataset_info.features
    label_key = "label" if "label" in info else "category_id"
    names = list(info[label_key].names) if hasattr(info[label_key], "names") else None
    records = [source[i] for i in range(len(source))]
    labels = np.asarray([int(r[label_key]) for r in records], np.int64)
    if names is None:
        names = [str(c) for c in range(int(labels.max()) + 1)]

    def load(i):
        return augment.load_image(records[i]["image"], where=f"{builder}/{config}:{split} record {i}")

    return ImageSet(names, labels, f"tfds:{builder}/{config}:{split}@{data_dir}", load,
                    [f"{split}[{i}]" for i in range(len(records))])


def csv_images(path: str, image_column: str, label_column: str, image_root: str = "",
               class_names: Sequence[str] | None = None) -> ImageSet:
    """Images listed in a CSV (Mushroom Observer's images.csv, FungiCLEF metadata): one row per
    image, `image_column` a path relative to `image_root` (default: `<csv folder>/images`),
    `label_column` the class name. A repeated column name refers to its first occurrence."""
    import csv as csv_lib

    csv_path = epath.Path(path)
    with csv_path.open() as f:
        reader = csv_lib.reader(f)
        header = next(reader)
        rows = [dict(reversed(list(zip(header, values)))) for values in reader]
    for column in (image_column, label_column):
        if column not in header:
            raise KeyError(f"{path}: no column {column!r}; columns: {header}")
    root = epath.Path(image_root) if image_root else csv_path.parent / "images"
    rows = [r for r in rows if r[label_column].strip()]
    names = list(class_names) if class_names else sorted({r[label_column].strip() for r in rows})
    index = {c: k for k, c in enumerate(names)}
    rows = [r for r in rows if r[label_column].strip() in index]
    paths = [root / r[image_column] for r in rows]
    missing = [os.fspath(p) for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} listed images are missing, e.g. {missing[:3]}")
    labels = np.asarray([index[r[label_column].strip()] for r in rows], np.int64)

    def load(i):
        return augment.load_image(paths[i].read_bytes(), where=os.fspath(paths[i]))

    return ImageSet(names, labels, f"csv:{path}", load, [os.fspath(p) for p in paths])


def make_image_set(data) -> ImageSet:
    class_names = list(data.get("class_names", ()) or ()) or None
    if data.kind == "folder":
        return folder_images(data.images, class_names)
    if data.kind == "tfds":
        return tfds_images(data.tfds_builder, data.tfds_config, data.split, data.tfds_dir)
    if data.kind == "csv":
        return csv_images(data.csv, data.image_column, data.label_column, data.image_root, class_names)
    raise ValueError(f"config.data.kind must be 'folder', 'tfds' or 'csv', got {data.kind!r}")


def embed_images(model: LoadedModel, images: ImageSet, batch_size: int, workers: int = 4) -> np.ndarray:
    """Unit image embeddings [N, D]; decoding and resizing run on `workers` threads."""
    norm = augment.get_normalization(model.normalization)

    def prepare(i):
        return augment.eval_image(images.load(i), model.image_size, norm)

    out = []
    with ThreadPoolExecutor(max(1, workers)) as pool:
        for start in tqdm(range(0, len(images), batch_size), desc=f"embed images ({model.name})",
                          disable=jax.process_index() != 0, leave=False):
            batch = np.stack(list(pool.map(prepare, range(start, min(start + batch_size, len(images))))))
            out.append(model.encode_images(batch))
    return np.concatenate(out)


# ---------------------------------------------------------------------------------------------
# Prompts
# ---------------------------------------------------------------------------------------------


def _phrase(name: str) -> str:
    return name.replace("_", " ")


def resolve_prompt_source(source: str, class_names: Sequence[str]) -> str:
    """"auto" -> "templates" for growth stages, "names" for any other classes."""
    from fungizsl.data import captions as caption_lib

    if source != "auto":
        return source
    return "templates" if all(c in caption_lib.STAGE_PHRASES for c in class_names) else "names"


def prompts_for(source: str, class_names: Sequence[str], config, taxonomy=None) -> dict[str, list[str]]:
    """{class: [prompt, ...]} of one prompt source named in `config.prompts`."""
    from fungizsl.data import captions as caption_lib

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


def embed_prompts(model: LoadedModel, by_class: dict[str, list[str]], class_names) -> list[np.ndarray]:
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


def evaluate_model(config, model: LoadedModel, images: ImageSet, plot_path=None) -> dict[str, Any]:
    names = images.class_names
    y = images.labels
    zimg = embed_images(model, images, config.batch_size, config.data.get("workers", 4))
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
        from fungizsl.evaluate import descriptions

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
    from fungizsl.data import captions as caption_lib

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


def _write_json(dest: epath.Path, obj) -> None:
    dest.write_text(json.dumps(metrics_io.to_jsonable(obj), indent=2, allow_nan=False) + "\n")


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
    from fungizsl.evaluate import plots

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
        raise ValueError("config.models is empty: name at least one model (model=DIR or model=A;B)")
    return specs


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Entry point called by fungizsl.main for config.trainer == "evaluate" (no training)."""
    from fungizsl.evaluate import plots

    if config.data.get("kind") == "fungiclef":  # a FungiCLEF run per observation on a FungiCLEF CSV
        from fungizsl.train import fungiclef_evaluate

        return fungiclef_evaluate.train_and_evaluate(config, workdir)
    out = epath.Path(workdir)
    is_main = jax.process_index() == 0
    images = make_image_set(config.data)
    specs = model_specs(config)
    several = len(specs) > 1
    summaries = []
    for k, spec in enumerate(specs):
        model = load_model(spec, config.batch_size)
        plot_name = f"confusion_matrix_{k}_{model.name}.png" if several else "confusion_matrix.png"
        summaries.append(evaluate_model(config, model, images, out / plot_name))
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
            _write_json(out / SUMMARY_FILE, summary)
        return {k: v for k, v in summary.items() if k not in ("data", "confusion_matrix")}
    rows = comparison_rows(summaries)
    table = comparison_markdown(rows)
    summary = {"models": summaries, "comparison": rows, "num_images": len(images),
               "data": {"source": images.describe, "class_names": images.class_names}}
    if is_main:
        print(table, flush=True)
        _write_json(out / SUMMARY_FILE, summary)
        _write_json(out / "comparison.json", rows)
        _write_png(lambda p: _plot_comparison(rows, p), out / "comparison.png")
    return {f"{r['model']}/{key}": r[key] for r in rows for key in ("zeroshot_accuracy", "mean_per_class_accuracy")}
