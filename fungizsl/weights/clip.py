"""Conversion table and config mapping for Hugging Face `CLIPModel` checkpoints (openai/clip-vit-*)."""

import dataclasses

import jax.numpy as jnp

from fungizsl.models import clip_text, two_towers, vit
from fungizsl.weights.convert import ModelSpec

_BLOCK_RULES = (
    (r"\.layers_(\d+)\.", r".layers.\1."),
    (r"\.attn\.query\.", ".self_attn.q_proj."),
    (r"\.attn\.key\.", ".self_attn.k_proj."),
    (r"\.attn\.value\.", ".self_attn.v_proj."),
    (r"\.attn\.out\.", ".self_attn.out_proj."),
    (r"\.norm1\.", ".layer_norm1."),
    (r"\.norm2\.", ".layer_norm2."),
)
RULES = _BLOCK_RULES + (
    (r"^text_model\.token_embedding\.", "text_model.embeddings.token_embedding."),
    (r"^text_model\.position_embedding$", "text_model.embeddings.position_embedding.weight"),
)

# HF's defaults for fields a config.json may omit (CLIPVisionConfig / CLIPTextConfig).
_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                        num_attention_heads=12, image_size=224, patch_size=32,
                        hidden_act="quick_gelu", layer_norm_eps=1e-5)
_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                      num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                      layer_norm_eps=1e-5, eos_token_id=49407)


def config_from_hf(hf: dict, dtype: str = "float32", scan: bool = False, remat: bool = False):
    v = {**_VISION_DEFAULTS, **hf.get("vision_config", {})}
    t = {**_TEXT_DEFAULTS, **hf.get("text_config", {})}
    runtime = dict(dtype=dtype, scan=scan, remat=remat)
    vision = vit.ViTConfig(
        flavour="clip", image_size=v["image_size"], patch_size=v["patch_size"], width=v["hidden_size"],
        depth=v["num_hidden_layers"], heads=v["num_attention_heads"], mlp_dim=v["intermediate_size"],
        mlp_act=v["hidden_act"], layer_norm_eps=v["layer_norm_eps"], **runtime)
    # Original OpenAI configs say eos_token_id=2 and HF then pools at argmax(input_ids): the
    # end-of-text id is the largest in the vocabulary, so that is its first occurrence.
    eot = t["vocab_size"] - 1 if t["eos_token_id"] == 2 else t["eos_token_id"]
    text = clip_text.ClipTextConfig(
        vocab_size=t["vocab_size"], context_length=t["max_position_embeddings"], width=t["hidden_size"],
        depth=t["num_hidden_layers"], heads=t["num_attention_heads"], mlp_dim=t["intermediate_size"],
        mlp_act=t["hidden_act"], layer_norm_eps=t["layer_norm_eps"], eot_token_id=eot, **runtime)
    return two_towers.ClipConfig(vision, text, projection_dim=hf.get("projection_dim", 512),
                                 logit_scale_init=hf.get("logit_scale_init_value", 2.6592))


def text_config_to_hf(t: clip_text.ClipTextConfig, projection_dim: int) -> dict:
    """The `text_config` of a Hugging Face CLIP config.json (a `transformers.CLIPTextConfig`)."""
    if t.eot_token_id == 2:  # HF would read it as the legacy OpenAI config and pool at argmax(ids)
        raise ValueError("a CLIP text tower whose end-of-text id is 2 cannot be exported to Hugging Face "
                         "(it would pool at argmax(input_ids)); retrain its tokenizer with this version "
                         "of fungizsl.tokenizers.train_bpe_tokenizer, which puts end-of-text at id 1")
    return dict(vocab_size=t.vocab_size, hidden_size=t.width, intermediate_size=t.mlp_dim,
                num_hidden_layers=t.depth, num_attention_heads=t.heads,
                max_position_embeddings=t.context_length, hidden_act=t.mlp_act,
                layer_norm_eps=t.layer_norm_eps, eos_token_id=t.eot_token_id,
                bos_token_id=max(t.eot_token_id - 1, 0), pad_token_id=t.eot_token_id,
                projection_dim=projection_dim, model_type="clip_text_model")


def config_to_hf(cfg: two_towers.ClipConfig) -> dict:
    v = cfg.vision
    text_config = text_config_to_hf(cfg.text, cfg.projection_dim)
    return {
        "architectures": ["CLIPModel"], "model_type": "clip", "projection_dim": cfg.projection_dim,
        "logit_scale_init_value": cfg.logit_scale_init,
        "vision_config": dict(hidden_size=v.width, intermediate_size=v.mlp_dim, num_hidden_layers=v.depth,
                              num_attention_heads=v.heads, image_size=v.image_size, patch_size=v.patch_size,
                              hidden_act=v.mlp_act, layer_norm_eps=v.layer_norm_eps,
                              projection_dim=cfg.projection_dim, model_type="clip_vision_model"),
        "text_config": text_config,
    }


def dummy_inputs(cfg: two_towers.ClipConfig) -> tuple:
    size = cfg.vision.image_size
    return (jnp.zeros((1, size, size, 3), jnp.float32),
            jnp.zeros((1, cfg.text.context_length), jnp.int32))


SPEC = ModelSpec(name="CLIP", model_types=("clip",), rules=RULES, config_from_hf=config_from_hf,
                 config_to_hf=config_to_hf, build=two_towers.ClipModel, dummy_inputs=dummy_inputs)


def with_runtime(cfg: two_towers.ClipConfig, **runtime) -> two_towers.ClipConfig:
    return dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **runtime),
                               text=dataclasses.replace(cfg.text, **runtime))
