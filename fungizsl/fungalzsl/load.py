"""Any two-tower CLIP model behind two plain callables, for evaluation without training.

:func:`load_model` takes a folder and returns a :class:`LoadedModel` whose ``encode_images`` and
``encode_texts`` give unit embeddings. The folder may be

* a Hugging Face CLIP folder (``config.json``; e.g. the ``hf_export/`` a ViT run writes);
* an open_clip folder (``open_clip_config.json``: BioCLIP, OpenAI's RN50, or the
  ``open_clip_export/`` a ResNet run writes), with its own tokenizer files or CLIP's BPE;
* a FungalZSL run (the checkpoint its ``summary.json`` selected on val, else its newest) or one of
  its step folders, rebuilt from the run's recorded config and tokenizer by :func:`load_run`
  (see :mod:`fungizsl.runs` for a run's anatomy);
* a folder holding ``hf_export/`` or ``open_clip_export/``.

A FungiCLEF run is refused with a :class:`~fungizsl.errors.ConfigError`: it scores observations,
not images against prompts, and ``configs/evaluate.py:fungiclef=CSV`` evaluates it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Callable, Sequence

import jax
import numpy as np
from etils import epath

from fungizsl import runs, tokenizers, weights, xla_options
from fungizsl.errors import ConfigError
from fungizsl.fungalzsl import model as model_lib
from fungizsl.models import two_towers
from fungizsl.train import checkpoint
from fungizsl.weights.convert import unstack_layers

#: The trainer modules of the FungiCLEF wing share this prefix (see :func:`fungizsl.runs.trainer_module`).
FUNGICLEF_TRAINERS = "fungizsl.fungiclef."
#: Sub-runs of a FungiCLEF workdir: the two stages of the full system, the metadata-only refit.
FUNGICLEF_SUBRUNS = ("refit_all", "stage1", "stage2")


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


def _wrap(module, variables, tokenizer, name, source, kind, batch_size) -> LoadedModel:
    """`variables`: {"params": ...} plus, for a ResNet tower, its BatchNorm "batch_stats"."""
    encode_image = xla_options.jit(lambda v, x: two_towers.l2_normalize(module.apply(v, x, method="encode_image")))
    encode_text = xla_options.jit(lambda v, ids: two_towers.l2_normalize(module.apply(v, ids, method="encode_text")))
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


def is_fungiclef_run(path) -> bool:
    """Whether ``path`` is (inside) a FungiCLEF workdir: the run config recorded at its root
    (metadata-only system) or in ``stage2/`` (full system) names a FungiCLEF trainer module."""
    folder, _ = runs.split_step(path)
    root = folder.parent if folder.name in FUNGICLEF_SUBRUNS else folder
    return any((runs.recorded_trainer(run) or "").startswith(FUNGICLEF_TRAINERS)
               for run in (folder, root / "stage2", root))


#: What ``model=`` may name, for the one-line errors of :func:`check_model_folder`.
MODEL_KINDS = ("a Hugging Face CLIP folder (config.json), an open_clip folder (open_clip_config.json), a "
               "fungizsl workdir (checkpoints/), a checkpoint step folder (state/) or a run with hf_export/ "
               "or open_clip_export/")
EXPORTS = ("hf_export", "open_clip_export")


def check_model_folder(spec: str) -> None:
    """Before any work: a :class:`ConfigError` naming ``spec`` unless it is a folder of a kind
    :func:`load_model` reads (a FungiCLEF run is refused here too)."""
    path = epath.Path(spec)
    if not path.is_dir():
        raise ConfigError(f"model {spec}: no such folder; model= (config.models) names {MODEL_KINDS}")
    if runs.is_run(path) and is_fungiclef_run(path):
        raise ConfigError(f"model {spec} is a FungiCLEF run, not a two-tower CLIP model: evaluate it per "
                          f"observation on a FungiCLEF CSV (fungiclef=CSV, config.data.fungiclef_csv)")
    if not (weights.is_hf_folder(path) or weights.open_clip.is_open_clip_checkpoint(os.fspath(path))
            or runs.is_run(path) or any((path / export).is_dir() for export in EXPORTS)):
        raise ConfigError(f"model {spec} is not a model folder: model= (config.models) names {MODEL_KINDS}")


def load_model(spec: str, batch_size: int = 32) -> LoadedModel:
    """Loads a Hugging Face CLIP folder or a fungizsl run/step folder (see the module doc)."""
    check_model_folder(spec)
    path = epath.Path(spec)
    name = path.name if path.name not in ("hf_export", "") else f"{path.parent.name}-hf"
    if weights.is_hf_folder(path):
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
    if runs.is_run(path):  # not a FungiCLEF run: check_model_folder refused those
        module, variables, tokenizer = load_run(path)
        root = runs.run_root(path)
        name = root.name if path == root else f"{root.name}@{path.name}"
        loaded = _wrap(module, variables, tokenizer, name, spec, "fungizsl_run", batch_size)
        chosen = runs.selected_step_folder(path)
        loaded.step = int(chosen.name) if chosen.name.isdigit() else None
        return loaded
    export = next(path / export for export in EXPORTS if (path / export).is_dir())  # check_model_folder: one is
    return load_model(os.fspath(export), batch_size)


def load_run(path: epath.Path):
    """(module, variables, tokenizer) of a fungizsl FungalZSL run or step folder, rebuilt from the
    run's fungizsl_config.json and tokenizer/ as `config.model.init=<run>` does for training
    (float32, layers unrolled)."""
    root = runs.run_root(path)
    run = runs.read_config(root)
    if run is None:
        raise FileNotFoundError(f"model {os.fspath(path)}: {root / runs.CONFIG_FILE} is missing; is this a fungizsl run?")
    m = run.model
    tokenizer_dir = root / "tokenizer"
    if not tokenizer_dir.is_dir() and m.get("init", "scratch") != "scratch":
        # Initialised from an earlier run: the tokenizer lives in that run's folder.
        start = model_lib.folder_with_tokenizer(epath.Path(m.init))
        tokenizer_dir = start / "tokenizer" if start is not None else tokenizer_dir
    if model_lib.is_hf_init(m.get("init", "scratch")):
        # Fine-tuned from a Hugging Face folder: that folder's architecture and tokenizer.
        module, _ = weights.load_pretrained(m.init)
        tokenizer = tokenizers.load_tokenizer(m.init, length=module.config.text.context_length)
    else:
        tokenizer = tokenizers.load_tokenizer(os.fspath(tokenizer_dir), length=m.text_context)
        module = model_lib.clip_model(run, tokenizer)
    variables = checkpoint.load_variables(os.fspath(runs.selected_step_folder(path)))
    variables["params"] = two_towers_params(variables["params"])
    return module, variables, tokenizer


def pool_at_tokenizer_eot(module, tokenizer):
    """The text tower pools at the tokenizer's end-of-text id.

    A Hugging Face config with eos_token_id=2 means "pool at argmax(input_ids)" (the legacy
    OpenAI convention, where end-of-text is the largest id), and the weight loader follows it.
    The byte-level BPE that fungizsl trains for from-scratch runs really has end-of-text id 2,
    so its `hf_export/` folders would pool at the wrong token; the tokenizer knows the truth.
    """
    eot = getattr(tokenizer, "eot_id", None)
    if eot is None or eot == module.config.text.eot_token_id:
        return module
    text = dataclasses.replace(module.config.text, eot_token_id=int(eot))
    return two_towers.ClipModel(dataclasses.replace(module.config, text=text))


def two_towers_params(params):
    """Checkpoints of scanned runs hold stacked layers; this loader builds unscanned modules."""
    encoder = params.get("vision_model", {}).get("encoder", {})
    if "layers" in encoder and not any(k.startswith("layers_") for k in encoder):
        return unstack_layers(params)
    return params
