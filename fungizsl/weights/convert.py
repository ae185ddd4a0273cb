"""Generic machinery to move tensors between Hugging Face checkpoints and our Flax trees.

A model's conversion is a `ModelSpec`: regex rules that rename our canonical Flax path to the
checkpoint key, plus how to read and write its `config.json`. The tensors themselves change in
only three ways: PyTorch Linear weights are [out, in] (Flax kernels [in, out]), convolutions are
OIHW (Flax HWIO), and everything else (LayerNorm scale, embeddings, raw parameters) is copied.

Loading is strict: every tensor the model needs must be present with the right shape, and every
tensor in the checkpoint must be used (apart from known non-parameter buffers and, for a
checkpoint of a model with heads, the heads outside the encoder's prefix). One error lists
every offending key.
"""

import dataclasses
import json
import os
import re
import struct
from typing import Any, Callable

import jax
import ml_dtypes
import numpy as np
from flax import traverse_util

_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_LEAF_TO_HF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


class CheckpointMismatchError(ValueError):
    """A checkpoint's tensors do not match the model: names every missing, unexpected and
    misshaped key."""


def raise_if_mismatched(title: str, missing, unexpected, misshaped) -> None:
    """One CheckpointMismatchError listing every offending tensor, or nothing when all match."""
    if missing or unexpected or misshaped:
        lines = [title]
        lines += [f"  missing tensor: {k}" for k in missing]
        lines += [f"  unexpected tensor: {k}" for k in unexpected]
        lines += [f"  misshaped tensor: {m}" for m in misshaped]
        raise CheckpointMismatchError("\n".join(lines))


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    name: str
    model_types: tuple[str, ...]  # config.json model_type values this spec reads
    rules: tuple[tuple[str, str], ...]  # (regex on our dotted path, replacement), in order
    config_from_hf: Callable[..., Any]  # (hf_config: dict, **runtime) -> our config
    config_to_hf: Callable[[Any], dict]
    build: Callable[[Any], Any]  # our config -> flax module
    dummy_inputs: Callable[[Any], tuple]  # our config -> example inputs for init
    key_prefixes: tuple[str, ...] = ()  # prefixes of checkpoints with heads ("bert.")
    ignored_keys: tuple[str, ...] = (r"(^|\.)position_ids$",)  # buffers, not parameters
    key_renames: tuple[tuple[str, str], ...] = ()  # legacy checkpoint spellings -> current


def read_safetensors(path: str) -> dict[str, np.ndarray]:
    """Memory-maps a .safetensors file into numpy arrays (bf16 included, which numpy lacks)."""
    with open(path, "rb") as f:
        (header_len,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(header_len))
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + header_len)
    tensors = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        if info["dtype"] not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{path}: tensor {key!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        tensors[key] = data[start:end].view(_SAFETENSORS_DTYPES[info["dtype"]]).reshape(info["shape"])
    return tensors


def read_hf_folder(folder: str) -> tuple[dict, dict[str, np.ndarray]]:
    """config.json and every tensor of a local Hugging Face folder (single or sharded weights)."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"checkpoint folder {folder!r} does not exist")
    config_path = os.path.join(folder, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{folder!r} has no config.json: not a Hugging Face checkpoint folder")
    with open(config_path) as f:
        hf_config = json.load(f)
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(single):
        return hf_config, read_safetensors(single)
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            shard_path = os.path.join(folder, shard)
            if not os.path.isfile(shard_path):
                raise FileNotFoundError(f"{index} names shard {shard!r}, which is missing")
            tensors.update(read_safetensors(shard_path))
        absent = sorted(set(weight_map) - set(tensors))
        if absent:
            raise CheckpointMismatchError(f"{index} lists tensors its shards lack: {absent}")
        return hf_config, tensors
    found = sorted(os.listdir(folder))
    raise FileNotFoundError(f"{folder!r} has neither model.safetensors nor model.safetensors.index.json "
                            f"(found: {found}); convert .bin checkpoints with save_pretrained(safe_serialization=True)")


def to_hf_key(path: tuple[str, ...], spec: ModelSpec) -> str:
    parts = list(path)
    parts[-1] = _LEAF_TO_HF.get(parts[-1], parts[-1])
    key = ".".join(parts)
    for pattern, replacement in spec.rules:
        key = re.sub(pattern, replacement, key)
    return key


def torch_to_flax(leaf_name: str, array: np.ndarray) -> np.ndarray:
    if leaf_name == "kernel" and array.ndim == 2:
        return array.T
    if leaf_name == "kernel" and array.ndim == 4:
        return array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    return array


def flax_to_torch(leaf_name: str, array: np.ndarray) -> np.ndarray:
    if leaf_name == "kernel" and array.ndim == 2:
        return array.T
    if leaf_name == "kernel" and array.ndim == 4:
        return array.transpose(3, 2, 0, 1)  # HWIO -> OIHW
    return array


def normalise_checkpoint_keys(tensors: dict[str, np.ndarray], spec: ModelSpec) -> tuple[dict, list[str]]:
    """Drops buffers, strips a head model's prefix and applies legacy renames.

    Returns the encoder's tensors and the keys of heads outside the prefix (ignored, reported).
    """
    tensors = {k: v for k, v in tensors.items() if not any(re.search(p, k) for p in spec.ignored_keys)}
    heads = []
    prefix = next((p for p in spec.key_prefixes if any(k.startswith(p) for k in tensors)), None)
    if prefix:
        heads = sorted(k for k in tensors if not k.startswith(prefix))
        tensors = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    renamed = {}
    for key, value in tensors.items():
        for pattern, replacement in spec.key_renames:
            key = re.sub(pattern, replacement, key)
        renamed[key] = value
    return renamed, heads


def hf_to_flax(tensors: dict[str, np.ndarray], expected: dict, spec: ModelSpec, source: str) -> dict:
    """Builds our (unscanned) param tree from checkpoint tensors, strictly.

    `expected` is the model's param tree of shapes (e.g. from jax.eval_shape).
    """
    expected_flat = traverse_util.flatten_dict(expected)
    by_hf_key = {to_hf_key(path, spec): path for path in expected_flat}
    missing = sorted(set(by_hf_key) - set(tensors))
    unexpected = sorted(set(tensors) - set(by_hf_key))
    misshaped, flat = [], {}
    for hf_key, path in by_hf_key.items():
        if hf_key not in tensors:
            continue
        value = torch_to_flax(path[-1], np.asarray(tensors[hf_key]))
        want = tuple(expected_flat[path].shape)
        if value.shape != want:
            misshaped.append(f"{hf_key}: checkpoint {tuple(tensors[hf_key].shape)}, model needs "
                             f"{want if value.ndim < 2 or path[-1] != 'kernel' else 'the transpose of ' + str(want)}")
            continue
        flat[path] = np.asarray(value, np.float32)
    raise_if_mismatched(f"checkpoint {source} does not match the {spec.name} model:",
                        missing, unexpected, misshaped)
    return traverse_util.unflatten_dict(flat)


def flax_to_hf(params: dict, spec: ModelSpec) -> dict[str, np.ndarray]:
    flat = traverse_util.flatten_dict(unstack_layers(jax.device_get(params)))
    return {to_hf_key(path, spec): np.array(flax_to_torch(path[-1], np.asarray(v, np.float32)), order="C")
            for path, v in flat.items()}


_LAYER = re.compile(r"^layers_(\d+)$")


def stack_layers(tree: dict) -> dict:
    """Turns `layers_0 .. layers_{n-1}` sub-trees into one `layers` tree with a leading axis
    (the nn.scan layout)."""
    if not isinstance(tree, dict):
        return tree
    layer_keys = sorted((k for k in tree if _LAYER.match(k)), key=lambda k: int(_LAYER.match(k)[1]))
    out = {k: stack_layers(v) for k, v in tree.items() if k not in layer_keys}
    if layer_keys:
        out["layers"] = jax.tree.map(lambda *xs: np.stack(xs), *(tree[k] for k in layer_keys))
    return out


def unstack_layers(tree: dict) -> dict:
    """Inverse of `stack_layers`."""
    if not isinstance(tree, dict):
        return tree
    out = {k: unstack_layers(v) for k, v in tree.items() if k != "layers"}
    if "layers" in tree:
        depth = jax.tree.leaves(tree["layers"])[0].shape[0]
        for i in range(depth):
            out[f"layers_{i}"] = jax.tree.map(lambda x: x[i], tree["layers"])
    return out
