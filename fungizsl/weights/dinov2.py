"""Conversion table and config mapping for Hugging Face `Dinov2Model` and
`Dinov2WithRegistersModel` checkpoints (facebook/dinov2-*, facebook/dinov2-with-registers-*)."""

import jax.numpy as jnp

from fungizsl.models import vit
from fungizsl.weights.convert import ModelSpec

RULES = (
    (r"^encoder\.layers_(\d+)\.", r"encoder.layer.\1."),
    (r"\.attn\.query\.", ".attention.attention.query."),
    (r"\.attn\.key\.", ".attention.attention.key."),
    (r"\.attn\.value\.", ".attention.attention.value."),
    (r"\.attn\.out\.", ".attention.output.dense."),
)


def config_from_hf(hf: dict, dtype: str = "float32", scan: bool = False, remat: bool = False):
    width = hf.get("hidden_size", 768)
    mlp_ratio = hf.get("mlp_ratio", 4)
    swiglu = hf.get("use_swiglu_ffn", False)
    # The MLP width follows mlp_ratio; DINOv2 configs carry no usable intermediate_size.
    mlp = (dict(mlp_dim=vit._dinov2_swiglu_hidden(width, mlp_ratio), mlp_act="swiglu") if swiglu
           else dict(mlp_dim=int(width * mlp_ratio), mlp_act=hf.get("hidden_act", "gelu")))
    registers = hf.get("num_register_tokens", 0) if hf.get("model_type") == "dinov2_with_registers" else 0
    return vit.ViTConfig(
        flavour="dinov2", image_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 14),
        width=width, depth=hf.get("num_hidden_layers", 12), heads=hf.get("num_attention_heads", 12),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-6), num_registers=registers,
        layer_scale_init=hf.get("layerscale_value", 1.0), dtype=dtype, scan=scan, remat=remat, **mlp)


def _ratio(mlp_dim: int, width: int):
    # transformers validates mlp_ratio as an int when it is one (4, not 4.0).
    ratio = mlp_dim / width
    return int(ratio) if ratio.is_integer() else ratio


def config_to_hf(cfg: vit.ViTConfig) -> dict:
    registers = cfg.num_registers > 0
    swiglu = cfg.mlp_act == "swiglu"
    hf = dict(
        architectures=["Dinov2WithRegistersModel" if registers else "Dinov2Model"],
        model_type="dinov2_with_registers" if registers else "dinov2",
        hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
        mlp_ratio=4 if swiglu else _ratio(cfg.mlp_dim, cfg.width), hidden_act="gelu" if swiglu else cfg.mlp_act,
        use_swiglu_ffn=swiglu, image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=3,
        layer_norm_eps=cfg.layer_norm_eps, layerscale_value=cfg.layer_scale_init, qkv_bias=True)
    if registers:
        hf["num_register_tokens"] = cfg.num_registers
    return hf


def dummy_inputs(cfg: vit.ViTConfig) -> tuple:
    return (jnp.zeros((1, cfg.image_size, cfg.image_size, 3), jnp.float32),)


SPEC = ModelSpec(name="DINOv2", model_types=("dinov2", "dinov2_with_registers"), rules=RULES,
                 config_from_hf=config_from_hf, config_to_hf=config_to_hf, build=vit.VisionTransformer,
                 dummy_inputs=dummy_inputs, key_prefixes=("dinov2.", "dinov2_with_registers."))
