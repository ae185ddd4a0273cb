"""Local Hugging Face checkpoints <-> Flax parameter trees, for CLIP, DINOv2 and BERT.

    model, params = load_pretrained("/ckpt/clip-vit-base-patch32")     # CLIPModel -> ClipModel
    model, params = load_pretrained("/ckpt/dinov2-small", scan=True)   # Dinov2Model -> ViT
    export_pretrained(model, params, "/out/finetuned")                  # loadable by transformers

open_clip-format checkpoints (BioCLIP, BioCLIP 2, OpenAI's RN50 ... and ViTs) are read and
written by `fungizsl.weights.open_clip` (`load_open_clip`, `export_open_clip`).

Only local folders are read (`config.json` plus `model.safetensors` or a sharded index); nothing
is ever downloaded. Loading is strict (see `convert.py`), and exported folders carry a
`config.json` generated from our config, so `transformers.AutoModel.from_pretrained(folder)`
rebuilds the same network in PyTorch.
"""

import dataclasses
import json
import logging
import os

import jax
from etils import epath
from safetensors.numpy import save as save_safetensors

from fungizsl import workdir
from fungizsl.models import bert as bert_model
from fungizsl.models import two_towers, vit
from fungizsl.weights import bert, clip, dinov2, open_clip
from fungizsl.weights.convert import (
    CheckpointMismatchError,
    ModelSpec,
    flax_to_hf,
    hf_to_flax,
    normalise_checkpoint_keys,
    read_hf_folder,
    stack_layers,
)

__all__ = ["CheckpointMismatchError", "is_hf_folder", "load_pretrained", "export_pretrained", "spec_for_model_type",
           "spec_for_config", "init_params_shapes"]

SPECS: tuple[ModelSpec, ...] = (clip.SPEC, dinov2.SPEC, bert.SPEC)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "vocab.txt",
                   "special_tokens_map.json", "fungizsl_tokenizer.json")


def is_hf_folder(path) -> bool:
    """A Hugging Face model folder: it has a ``config.json`` (local or ``gs://``)."""
    return (epath.Path(path) / "config.json").is_file()


def spec_for_model_type(model_type: str) -> ModelSpec:
    for spec in SPECS:
        if model_type in spec.model_types:
            return spec
    known = sorted(t for s in SPECS for t in s.model_types)
    raise ValueError(f"config.json model_type {model_type!r} is not supported; supported: {known}")


def spec_for_config(config) -> ModelSpec:
    """The conversion spec of one of our model configs (for export)."""
    if isinstance(config, two_towers.ClipConfig):
        return clip.SPEC
    if isinstance(config, vit.ViTConfig) and config.flavour == "dinov2":
        return dinov2.SPEC
    if isinstance(config, bert_model.BertConfig):
        return bert.SPEC
    raise ValueError(f"no Hugging Face export for {type(config).__name__} "
                     f"{getattr(config, 'flavour', '')}".rstrip())


def init_params_shapes(module, spec: ModelSpec) -> dict:
    """The model's parameter tree as ShapeDtypeStructs, without allocating anything."""
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *spec.dummy_inputs(module.config)))
    return variables["params"]


def load_pretrained(folder: str, dtype: str = "float32", scan: bool = False, remat: bool = False,
                    **config_overrides):
    """Builds our module from `folder/config.json` and loads its weights strictly.

    Returns (module, params); params are float32 numpy arrays in the module's layout (stacked
    along a leading axis when scan=True). `dtype` sets the matmul dtype only. A remote `folder`
    (`gs://...`) is read from a local copy.
    """
    hf_config, tensors = read_hf_folder(workdir.local_dir(folder))
    spec = spec_for_model_type(hf_config.get("model_type", ""))
    tensors, heads = normalise_checkpoint_keys(tensors, spec)
    if heads:
        logging.info("%s: ignoring %d tensors of heads outside the encoder (%s ...)", folder, len(heads), heads[0])
    if spec is bert.SPEC and "with_pooler" not in config_overrides:
        config_overrides["with_pooler"] = "pooler.dense.weight" in tensors
    config = spec.config_from_hf(hf_config, dtype=dtype, scan=False, remat=remat, **config_overrides)
    expected = init_params_shapes(spec.build(config), spec)
    params = hf_to_flax(tensors, expected, spec, source=folder)
    if scan:
        config = _with_scan(config)
        params = stack_layers(params)
    return spec.build(config), params


def _with_scan(config):
    if hasattr(config, "vision"):  # two towers
        return clip.with_runtime(config, scan=True)
    return dataclasses.replace(config, scan=True)


def export_pretrained(module, params, out_dir, tokenizer_from=None) -> str:
    """Writes `config.json` + `model.safetensors` with Hugging Face names (fp32), and copies the
    tokenizer files of `tokenizer_from` if given. Both may be local folders or URIs (`gs://...`;
    written through etils.epath). Returns out_dir."""
    spec = spec_for_config(module.config)
    out = epath.Path(out_dir)
    tensors = flax_to_hf(params, spec)
    workdir.write_bytes(out / "model.safetensors", save_safetensors(tensors, metadata={"format": "pt"}))
    workdir.write_text(out / "config.json", json.dumps(spec.config_to_hf(module.config), indent=2))
    if tokenizer_from:
        for name in TOKENIZER_FILES:
            src = epath.Path(tokenizer_from) / name
            if src.is_file():
                workdir.write_bytes(out / name, src.read_bytes())
    return os.fspath(out_dir)
