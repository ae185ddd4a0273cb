"""open_clip checkpoints <-> our two-tower CLIP, for ViT and modified-ResNet image towers.

Biodiversity models are published in open_clip's format rather than as Hugging Face `CLIPModel`
folders: BioCLIP (Stevens et al. 2024, ViT-B/16), BioCLIP 2 (Gu et al. 2025, ViT-L/14), and
OpenAI's RN50 ... RN50x64 and ViTs as open_clip ships them. This module reads them:

    model, variables = load_open_clip("/ckpt/bioclip")        # open_clip_config.json + weights
    model, variables = load_open_clip("/ckpt/RN50.safetensors", model_name="RN50-quickgelu")
    zimg = model.apply(variables, images, method="encode_image")
    export_open_clip(model, variables, "/out/finetuned")       # open_clip.create_model(...) loads it

A folder holds `open_clip_config.json` (`{"model_cfg": ..., "preprocess_cfg": ...}`, or the
bare model config) and one of `open_clip_model.safetensors`, `open_clip_pytorch_model.safetensors`,
`open_clip_pytorch_model.bin`, ... A bare state-dict file needs `model_name` (see
`MODEL_CONFIGS`; a `-quickgelu` suffix selects QuickGELU, as in open_clip). Safetensors files are
read with numpy alone; `.bin` / `.pt` / `.pth` files are PyTorch pickles and need `torch`, which
is imported only then (PyTorch is not a runtime dependency of fungizsl; convert once with
`safetensors.torch.save_file` to avoid it).

Loading is strict, as for Hugging Face folders: one `CheckpointMismatchError` names every
missing, unexpected and misshaped tensor. Options of open_clip configs that our towers do not
implement (timm or Hugging Face towers, attentional pooling, LayerScale, SigLIP's logit bias,
...) stop with a message naming them rather than loading something different.

Layout differences handled here: open_clip fuses the attention's query/key/value into one
`in_proj_weight` [3W, W] (split on load, concatenated on export); its projections `visual.proj`
and `text_projection` are raw [in, out] matrices (our Dense kernels as they are); BatchNorm
running statistics go to the `batch_stats` collection (`num_batches_tracked` is ignored on load
and written as 0 on export). The activation follows the checkpoint's `quick_gelu` flag (OpenAI
weights: QuickGELU; open_clip's plain `ViT-B-16` config, which BioCLIP uses, nn.GELU).

Tokenizer: open_clip's CLIP BPE (49,408 tokens, padded with 0, pooled at the end-of-text token,
the largest id). `load_open_clip_tokenizer` uses the folder's tokenizer files when it has them,
else the vocabulary that the `open_clip_torch` package ships (see `fungizsl.tokenizers.
open_clip_bpe_tokenizer`; install it with `pip install --no-deps open_clip_torch`).
"""

import dataclasses
import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from flax import traverse_util
from safetensors.numpy import save as save_safetensors

from fungizsl import tokenizers, workdir
from fungizsl.models import clip_text, resnet, two_towers, vit
from fungizsl.weights.convert import (raise_if_mismatched, read_safetensors,
                                      stack_layers, unstack_layers)

CONFIG_FILE = "open_clip_config.json"
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin", "open_clip_pytorch_model.pth",
                "model.safetensors", "pytorch_model.bin", "pytorch_model.pth", "model.pth")
EXPORT_WEIGHTS = "open_clip_model.safetensors"
# Buffers, not parameters (OpenAI's JIT archives also carry three integers).
IGNORED_KEYS = ("num_batches_tracked", "attn_mask", "position_ids", "input_resolution",
                "context_length", "vocab_size")
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

_TEXT_77 = dict(context_length=77, vocab_size=49408, layers=12)
# open_clip's model_configs/<name>.json for the architectures our towers implement.
MODEL_CONFIGS = {
    "RN50": dict(embed_dim=1024, vision_cfg=dict(image_size=224, layers=[3, 4, 6, 3], width=64),
                 text_cfg=dict(width=512, heads=8, **_TEXT_77)),
    "RN101": dict(embed_dim=512, vision_cfg=dict(image_size=224, layers=[3, 4, 23, 3], width=64),
                  text_cfg=dict(width=512, heads=8, **_TEXT_77)),
    "RN50x4": dict(embed_dim=640, vision_cfg=dict(image_size=288, layers=[4, 6, 10, 6], width=80),
                   text_cfg=dict(width=640, heads=10, **_TEXT_77)),
    "RN50x16": dict(embed_dim=768, vision_cfg=dict(image_size=384, layers=[6, 8, 18, 8], width=96),
                    text_cfg=dict(width=768, heads=12, **_TEXT_77)),
    "RN50x64": dict(embed_dim=1024, vision_cfg=dict(image_size=448, layers=[3, 15, 36, 10], width=128),
                    text_cfg=dict(width=1024, heads=16, **_TEXT_77)),
    "ViT-B-32": dict(embed_dim=512, vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=32),
                     text_cfg=dict(width=512, heads=8, **_TEXT_77)),
    "ViT-B-16": dict(embed_dim=512, vision_cfg=dict(image_size=224, layers=12, width=768, patch_size=16),
                     text_cfg=dict(width=512, heads=8, **_TEXT_77)),
    "ViT-L-14": dict(embed_dim=768, vision_cfg=dict(image_size=224, layers=24, width=1024, patch_size=14),
                     text_cfg=dict(width=768, heads=12, **_TEXT_77)),
    "ViT-L-14-336": dict(embed_dim=768, vision_cfg=dict(image_size=336, layers=24, width=1024, patch_size=14),
                         text_cfg=dict(width=768, heads=12, **_TEXT_77)),
}

# Config options, with the values our towers implement (None: any value is fine).
_VISION_OPTIONS = dict(
    layers=None, width=None, head_width=None, mlp_ratio=None, patch_size=None, image_size=None,
    ls_init_value=(None,), patch_dropout=None,  # patch dropout acts in open_clip training only
    attentional_pool=(False,), attn_pooler_queries=None, attn_pooler_heads=None, no_ln_pre=(False,),
    pos_embed_type=("learnable",), final_ln_after_pool=None,  # same result with class-token pooling
    pool_type=("tok",), output_tokens=None, act_kwargs=(None, {}), norm_kwargs=None,
    block_type=(None, "default"), qk_norm=(False,), scaled_cosine_attn=(False,), scale_heads=(False,),
    scale_attn_inner=(False,), scale_attn=(False,), scale_fc=(False,), timm_model_name=(None,),
    timm_model_pretrained=None, timm_pool=None, timm_proj=None, timm_proj_bias=None, timm_drop=None,
    timm_drop_path=None)
_TEXT_OPTIONS = dict(
    context_length=None, vocab_size=None, hf_tokenizer_name=None, tokenizer_mode=None, tokenizer_kwargs=None,
    width=None, heads=None, layers=None, mlp_ratio=None, ls_init_value=(None,), embed_cls=(False,),
    pad_id=None, eos_id=None, no_causal_mask=(False,), final_ln_after_pool=None,
    pool_type=("argmax", "eos"), proj_bias=(False,), proj_type=("linear",), output_tokens=None,
    act_kwargs=(None, {}), norm_kwargs=None, block_type=(None, "default"), qk_norm=(False,),
    scaled_cosine_attn=(False,), scale_heads=(False,), scale_attn_inner=(False,), scale_attn=(False,),
    scale_fc=(False,), hf_model_name=(None,), hf_model_pretrained=None, hf_proj_type=None,
    hf_pooler_type=None)
_MODEL_OPTIONS = dict(embed_dim=None, vision_cfg=None, text_cfg=None, quick_gelu=None, custom_text=None,
                      init_logit_scale=None, init_logit_bias=(None,), nonscalar_logit_scale=None,
                      cast_dtype=None)


def _option_problems(section: str, cfg: dict, options: dict) -> list[str]:
    problems = []
    for key, value in cfg.items():
        if key not in options:
            problems.append(f"unknown option {section}.{key}={value!r}")
        elif options[key] is not None and value not in options[key]:
            problems.append(f"{section}.{key}={value!r} (supported: {list(options[key])})")
    norm = cfg.get("norm_kwargs") or {}
    if set(norm) - {"eps"}:
        problems.append(f"{section}.norm_kwargs={norm!r} (only eps is supported)")
    return problems


def _square(size, what: str) -> int:
    if isinstance(size, (list, tuple)):
        if len(set(size)) != 1:
            raise ValueError(f"{what}: non-square size {size} is not supported")
        return int(size[0])
    return int(size)


def config_from_open_clip(model_cfg: dict, dtype: str = "float32", scan: bool = False, remat: bool = False,
                          frozen_batch_norm: bool = False,
                          source: str = "open_clip config") -> two_towers.ClipConfig:
    """Our ClipConfig for an open_clip `model_cfg` (the JSON's `model_cfg` entry)."""
    v, t = dict(model_cfg.get("vision_cfg", {})), dict(model_cfg.get("text_cfg", {}))
    problems = (_option_problems("model_cfg", model_cfg, _MODEL_OPTIONS)
                + _option_problems("vision_cfg", v, _VISION_OPTIONS)
                + _option_problems("text_cfg", t, _TEXT_OPTIONS))
    if problems:
        raise ValueError(f"{source}: open_clip model options our towers do not implement:\n  "
                         + "\n  ".join(problems))
    act = "quick_gelu" if model_cfg.get("quick_gelu", False) else "gelu"
    embed_dim = int(model_cfg["embed_dim"])
    runtime = dict(dtype=dtype, scan=scan, remat=remat)
    image_size = _square(v.get("image_size", 224), f"{source} vision_cfg.image_size")
    head_width = v.get("head_width", 64)
    if isinstance(v.get("layers", 12), (list, tuple)):
        width = v.get("width", 64)
        vision = resnet.ResNetConfig(layers=tuple(v["layers"]), width=width, heads=width * 32 // head_width,
                                     output_dim=embed_dim, image_size=image_size, dtype=dtype,
                                     frozen_batch_norm=frozen_batch_norm)
    else:
        width = v.get("width", 768)
        vision = vit.ViTConfig(flavour="clip", image_size=image_size,
                               patch_size=_square(v.get("patch_size", 16), f"{source} vision_cfg.patch_size"),
                               width=width, depth=v.get("layers", 12), heads=width // head_width,
                               mlp_dim=int(width * v.get("mlp_ratio", 4.0)), mlp_act=act,
                               layer_norm_eps=(v.get("norm_kwargs") or {}).get("eps", 1e-5), **runtime)
    vocab = t.get("vocab_size", 49408)
    # argmax pooling finds the end-of-text token as the largest id; "eos" names it.
    eot = vocab - 1 if t.get("pool_type", "argmax") == "argmax" else t.get("eos_id", 2)
    text_width = t.get("width", 512)
    text = clip_text.ClipTextConfig(
        vocab_size=vocab, context_length=t.get("context_length", 77), width=text_width,
        depth=t.get("layers", 12), heads=t.get("heads", 8), mlp_dim=int(text_width * t.get("mlp_ratio", 4.0)),
        mlp_act=act, layer_norm_eps=(t.get("norm_kwargs") or {}).get("eps", 1e-5), eot_token_id=eot,
        **runtime)
    logit_scale = model_cfg.get("init_logit_scale", float(np.log(1 / 0.07)))
    return two_towers.ClipConfig(vision, text, projection_dim=embed_dim, logit_scale_init=logit_scale)


def config_to_open_clip(cfg: two_towers.ClipConfig) -> dict:
    """The open_clip `model_cfg` that rebuilds `cfg` (open_clip.create_model(..., **) / JSON)."""
    v, t = cfg.vision, cfg.text
    text_cfg = dict(context_length=t.context_length, vocab_size=t.vocab_size, width=t.width, heads=t.heads,
                    layers=t.depth, mlp_ratio=t.mlp_dim / t.width)
    if t.eot_token_id != t.vocab_size - 1:
        text_cfg.update(pool_type="eos", eos_id=t.eot_token_id)
    if t.layer_norm_eps != 1e-5:
        text_cfg["norm_kwargs"] = {"eps": t.layer_norm_eps}
    if two_towers.is_resnet(cfg):
        vision_cfg = dict(image_size=v.image_size, layers=list(v.layers), width=v.width,
                          head_width=v.embed_dim // v.heads, patch_size=None)
        acts = {t.mlp_act}
    else:
        vision_cfg = dict(image_size=v.image_size, layers=v.depth, width=v.width, patch_size=v.patch_size,
                          head_width=v.width // v.heads, mlp_ratio=v.mlp_dim / v.width)
        if v.layer_norm_eps != 1e-5:
            vision_cfg["norm_kwargs"] = {"eps": v.layer_norm_eps}
        acts = {t.mlp_act, v.mlp_act}
    if not acts <= {"quick_gelu", "gelu"} or len(acts) > 1:
        raise ValueError("open_clip needs one activation, QuickGELU or GELU, for both towers; "
                         f"got {sorted(acts)}")
    return dict(embed_dim=cfg.projection_dim, quick_gelu=acts == {"quick_gelu"}, vision_cfg=vision_cfg,
                text_cfg=text_cfg, init_logit_scale=cfg.logit_scale_init)


# ---------------------------------------------------------------------------------------------
# Names: our (collection, path) <-> open_clip state-dict key
# ---------------------------------------------------------------------------------------------

_LEAF = {"kernel": "weight", "scale": "weight", "bias": "bias", "embedding": "weight",
         "mean": "running_mean", "var": "running_var"}
_BLOCK = {"norm1": "ln_1", "norm2": "ln_2", "out": "out_proj", "fc1": "c_fc", "fc2": "c_proj"}
_QKV = {"query": 0, "key": 1, "value": 2}


def _block_key(prefix: str, rest: tuple[str, ...]) -> tuple[str, str, int | None]:
    """One transformer block's leaf -> (key, transform, qkv index)."""
    if rest[0] == "attn" and rest[1] in _QKV:
        kind = "in_proj_weight" if rest[2] == "kernel" else "in_proj_bias"
        return f"{prefix}.attn.{kind}", "linear", _QKV[rest[1]]
    parts = [_BLOCK.get(p, p) for p in rest[:-1]]
    return f"{prefix}.{'.'.join(parts)}.{_LEAF[rest[-1]]}", "linear" if rest[-1] == "kernel" else "copy", None


def open_clip_key(collection: str, path: tuple[str, ...]) -> tuple[str, str, int | None]:
    """(state-dict key, transform, qkv index) for one of our leaves; transform is "copy",
    "linear" (transpose), "conv" (HWIO <-> OIHW) or "raw" (an [in, out] matrix kept as it is)."""
    head, rest = path[0], path[1:]
    if head == "logit_scale":
        return "logit_scale", "copy", None
    if head == "visual_projection":
        return "visual.proj", "raw", None
    if head == "text_projection":
        return "text_projection", "raw", None
    if head == "text_model":
        fixed = {("token_embedding", "embedding"): "token_embedding.weight",
                 ("position_embedding",): "positional_embedding"}
        if rest in fixed:
            return fixed[rest], "copy", None
        if rest[0] == "final_layer_norm":
            return f"ln_final.{_LEAF[rest[1]]}", "copy", None
        if rest[0] == "encoder":
            return _block_key(f"transformer.resblocks.{rest[1].split('_')[1]}", rest[2:])
    if head == "vision_model" and rest[0] in ("embeddings", "pre_layrnorm", "post_layernorm", "encoder"):
        fixed = {("embeddings", "patch_embedding", "kernel"): ("visual.conv1.weight", "conv"),
                 ("embeddings", "class_embedding"): ("visual.class_embedding", "copy"),
                 ("embeddings", "position_embedding", "embedding"): ("visual.positional_embedding", "copy")}
        if rest in fixed:
            return (*fixed[rest], None)
        if rest[0] in ("pre_layrnorm", "post_layernorm"):
            where = "pre" if rest[0] == "pre_layrnorm" else "post"
            return f"visual.ln_{where}.{_LEAF[rest[1]]}", "copy", None
        if rest[0] == "encoder":
            return _block_key(f"visual.transformer.resblocks.{rest[1].split('_')[1]}", rest[2:])
    if head == "vision_model":  # the modified ResNet: names already follow open_clip's
        parts = []
        for p in rest[:-1]:
            if p.startswith("layer"):
                parts.extend(p.split("_"))
            else:
                parts.append({"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(p, p))
        leaf = rest[-1]
        if leaf == "positional_embedding":
            return "visual.attnpool.positional_embedding", "copy", None
        transform = "copy" if leaf != "kernel" else ("linear" if rest[0] == "attnpool" else "conv")
        return f"visual.{'.'.join(parts)}.{_LEAF[leaf]}", transform, None
    raise ValueError(f"no open_clip name for {collection}/{'/'.join(path)}")


def _to_torch(transform: str, value: np.ndarray) -> np.ndarray:
    if transform == "linear" and value.ndim == 2:
        return value.T
    if transform == "conv":
        return value.transpose(3, 2, 0, 1)
    return value


def _from_torch(transform: str, value: np.ndarray) -> np.ndarray:
    if transform == "linear" and value.ndim == 2:
        return value.T
    if transform == "conv":
        return value.transpose(2, 3, 1, 0)
    return value


def _plan(expected: dict) -> dict[str, list]:
    """state-dict key -> [(flat path incl. collection, transform, qkv index, flax shape)]."""
    plan: dict[str, list] = {}
    for flat_path, leaf in traverse_util.flatten_dict(expected).items():
        key, transform, qkv = open_clip_key(flat_path[0], flat_path[1:])
        plan.setdefault(key, []).append((flat_path, transform, qkv, tuple(leaf.shape)))
    return plan


def _torch_shape(entries) -> tuple[int, ...]:
    _, transform, qkv, shape = entries[0]
    shape = _to_torch(transform, np.empty(shape, np.int8)).shape
    return (3 * shape[0],) + shape[1:] if qkv is not None else shape


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------

def is_open_clip_checkpoint(path: str) -> bool:
    return (epath.Path(path) / CONFIG_FILE).is_file()


def find_weights(folder: str) -> str:
    for name in WEIGHT_FILES:
        if os.path.isfile(os.path.join(folder, name)):
            return os.path.join(folder, name)
    raise FileNotFoundError(f"{folder!r} has {CONFIG_FILE} but none of {list(WEIGHT_FILES)} "
                            f"(found: {sorted(os.listdir(folder))})")


def read_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors of an open_clip checkpoint file as numpy arrays (float32 for floating point)."""
    if path.endswith(".safetensors"):
        tensors = read_safetensors(path)
    else:
        tensors = _read_torch_pickle(path)
    if tensors and all(k.startswith("module.") for k in tensors):  # saved from DistributedDataParallel
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return {k: (np.asarray(v, np.float32) if np.issubdtype(np.asarray(v).dtype, np.floating)
                or str(np.asarray(v).dtype) == "bfloat16" else np.asarray(v)) for k, v in tensors.items()}


def _read_torch_pickle(path: str) -> dict[str, np.ndarray]:
    try:
        import torch
    except ImportError as error:
        raise ModuleNotFoundError(
            f"{path} is a PyTorch pickle, which needs torch to read (fungizsl does not depend on it): "
            "install torch, or convert once elsewhere with safetensors.torch.save_file(state_dict, "
            "'open_clip_model.safetensors')") from error
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except RuntimeError as error:  # OpenAI's original .pt files are TorchScript archives
        if "TorchScript" not in str(error) and "constants.pkl" not in str(error):
            raise
        checkpoint = torch.jit.load(path, map_location="cpu").state_dict()
    if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
        checkpoint = checkpoint["state_dict"]
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path} does not hold a state dict (found {type(checkpoint).__name__})")
    return {k: v.detach().float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in checkpoint.items()}


def read_model_config(path: str, model_name: str | None = None) -> dict:
    """The open_clip model_cfg for a folder (its JSON) or, with `model_name`, from MODEL_CONFIGS."""
    if model_name:
        base = model_name.removesuffix("-quickgelu")
        if base not in MODEL_CONFIGS:
            raise ValueError(f"unknown open_clip model name {model_name!r}; known: {sorted(MODEL_CONFIGS)} "
                             "(each also with -quickgelu)")
        cfg = json.loads(json.dumps(MODEL_CONFIGS[base]))
        if model_name.endswith("-quickgelu"):
            cfg["quick_gelu"] = True
        return cfg
    config_path = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"{path!r} has no {CONFIG_FILE}; for a bare state-dict file pass "
                                f"model_name (one of {sorted(MODEL_CONFIGS)})")
    with open(config_path) as f:
        config = json.load(f)
    return config.get("model_cfg", config)


def load_open_clip(path: str, model_name: str | None = None, dtype: str = "float32", scan: bool = False,
                   remat: bool = False, frozen_batch_norm: bool = False):
    """Builds our ClipModel for an open_clip folder or state-dict file and loads it strictly.

    Returns (module, variables) with variables = {"params": ...} plus "batch_stats" for a ResNet
    tower; float32 numpy arrays (params stacked per layer when scan=True). A remote folder
    (`gs://...`) is read from a local copy.
    """
    if not workdir.is_local(path):
        path = workdir.local_dir(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"open_clip checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        model_cfg, weights_path = read_model_config(path, model_name), find_weights(path)
    else:
        if not model_name and not os.path.isfile(os.path.join(os.path.dirname(path), CONFIG_FILE)):
            raise ValueError(f"{path} is a bare state dict: pass model_name (one of {sorted(MODEL_CONFIGS)})")
        model_cfg, weights_path = read_model_config(os.path.dirname(path), model_name), path
    config = config_from_open_clip(model_cfg, dtype=dtype, remat=remat, frozen_batch_norm=frozen_batch_norm,
                                   source=path)
    model = two_towers.ClipModel(config)
    variables = variables_from_state_dict(model, read_state_dict(weights_path), source=weights_path)
    if scan:  # the transformer towers' layers stacked for nn.scan (a ResNet tower has none)
        vision = (config.vision if two_towers.is_resnet(config)
                  else dataclasses.replace(config.vision, scan=True))
        config = dataclasses.replace(config, vision=vision, text=dataclasses.replace(config.text, scan=True))
        model = two_towers.ClipModel(config)
        variables["params"] = stack_layers(variables["params"])
    return model, variables


def expected_variables(model) -> dict:
    """The model's variables as ShapeDtypeStructs, without allocating anything."""
    cfg = model.config
    size = cfg.vision.image_size
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, size, size, 3)),
                                             jnp.zeros((1, cfg.text.context_length), jnp.int32)))


def variables_from_state_dict(model, tensors: dict[str, np.ndarray], source: str) -> dict:
    """Our (unscanned) variables from open_clip state-dict tensors, strictly."""
    tensors = {k: v for k, v in tensors.items() if k.rsplit(".", 1)[-1] not in IGNORED_KEYS}
    # CustomTextCLIP (custom_text: true) keeps the text tower under "text."; CLIP at the top.
    tensors = {(k[len("text."):] if k.startswith("text.") else k): v for k, v in tensors.items()}
    plan = _plan(expected_variables(model))
    missing = sorted(set(plan) - set(tensors))
    unexpected = sorted(set(tensors) - set(plan))
    misshaped, flat = [], {}
    for key, entries in plan.items():
        if key not in tensors:
            continue
        value = tensors[key]
        want = _torch_shape(entries)
        if key == "logit_scale" and value.size == 1:
            value = value.reshape(())
        if tuple(value.shape) != want:
            misshaped.append(f"{key}: checkpoint {tuple(value.shape)}, model needs {want}")
            continue
        for flat_path, transform, qkv, _ in entries:
            part = np.split(value, 3, axis=0)[qkv] if qkv is not None else value
            flat[flat_path] = np.asarray(_from_torch(transform, part), np.float32)
    raise_if_mismatched(f"open_clip checkpoint {source} does not match the model:",
                        missing, unexpected, misshaped)
    return traverse_util.unflatten_dict(flat)


# ---------------------------------------------------------------------------------------------
# Writing
# ---------------------------------------------------------------------------------------------

def state_dict_from_variables(variables: dict) -> dict[str, np.ndarray]:
    variables = jax.device_get(variables)
    variables = {k: unstack_layers(v) for k, v in variables.items()}
    pieces: dict[str, dict[int | None, np.ndarray]] = {}
    for flat_path, value in traverse_util.flatten_dict(variables).items():
        key, transform, qkv = open_clip_key(flat_path[0], flat_path[1:])
        pieces.setdefault(key, {})[qkv] = _to_torch(transform, np.asarray(value, np.float32))
    out = {}
    for key, parts in pieces.items():
        value = parts[None] if None in parts else np.concatenate([parts[0], parts[1], parts[2]], axis=0)
        out[key] = np.ascontiguousarray(value)
        if key.endswith(".running_var"):  # PyTorch's BatchNorm buffer; unused at inference
            out[key[:-len("running_var")] + "num_batches_tracked"] = np.zeros((), np.int64)
    return out


def export_open_clip(model, variables: dict, out_dir, tokenizer_from=None) -> str:
    """Writes `open_clip_config.json` + `open_clip_model.safetensors` (fp32); copies the tokenizer
    files of `tokenizer_from` if given. Both may be local folders or URIs (`gs://...`).
    `open_clip.create_model("local-dir:" + out_dir)` rebuilds it in PyTorch. Returns out_dir.
    Writes go through :mod:`fungizsl.workdir` (its write audit records them); the trainer core
    calls this on process 0 only."""
    out = epath.Path(out_dir)
    workdir.write_bytes(out / EXPORT_WEIGHTS, save_safetensors(state_dict_from_variables(variables),
                                                               metadata={"format": "pt"}))
    config = {"model_cfg": config_to_open_clip(model.config),
              "preprocess_cfg": {"mean": list(OPENAI_MEAN), "std": list(OPENAI_STD)}}
    workdir.write_text(out / CONFIG_FILE, json.dumps(config, indent=2))
    if tokenizer_from:
        for name in ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt",
                     "special_tokens_map.json", tokenizers.BPE_METADATA_FILE):
            src = epath.Path(tokenizer_from) / name
            if src.is_file() and str(src) != str(out / name):
                workdir.write_bytes(out / name, src.read_bytes())
    return str(out_dir)


def load_open_clip_tokenizer(path: str, out_dir: str | None = None, context_length: int | None = None):
    """(tokenizer, folder it lives in) for an open_clip checkpoint: the folder's own tokenizer
    files if any (BioCLIP's Hub folders carry them), else CLIP's BPE from the open_clip package,
    written to `out_dir` (so that a training run keeps its tokenizer beside its checkpoints).
    open_clip pads with 0. A remote folder (`gs://...`) is read from a local copy (weights left out)."""
    folder = path if epath.Path(path).is_dir() else os.path.dirname(path)
    local = workdir.local_dir(folder, exclude=tokenizers.WEIGHT_SUFFIXES)
    if context_length is None:
        context_length = read_model_config(local)["text_cfg"].get("context_length", 77) \
            if os.path.isfile(os.path.join(local, CONFIG_FILE)) else 77
    has_files = any(os.path.isfile(os.path.join(local, n)) for n in ("tokenizer.json", "vocab.json"))
    if has_files:  # CLIP's BPE padded with 0 as open_clip does, or our own BPE of a fungizsl export
        kind = tokenizers.detect_tokenizer_kind(local)
        pad = 0 if kind == tokenizers.CLIP else None
        return tokenizers.load_tokenizer(local, context_length, pad_id=pad), folder
    tokenizer = tokenizers.open_clip_bpe_tokenizer(out_dir, context_length=context_length)
    logging.info("%s has no tokenizer files: using the CLIP BPE vocabulary of the open_clip package", folder)
    return tokenizer, out_dir
