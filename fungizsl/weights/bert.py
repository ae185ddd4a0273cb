"""Conversion table and config mapping for Hugging Face `BertModel` checkpoints: bert-base (keys
under `bert.`, with pre-training heads beside them) and MiniLM (keys without the prefix)."""

import jax.numpy as jnp

from fungizsl.models import bert
from fungizsl.weights.convert import ModelSpec

RULES = (
    (r"^encoder\.layers_(\d+)\.", r"encoder.layer.\1."),
    (r"\.attn\.query\.", ".attention.self.query."),
    (r"\.attn\.key\.", ".attention.self.key."),
    (r"\.attn\.value\.", ".attention.self.value."),
    (r"\.attn\.out\.", ".attention.output.dense."),
    (r"\.norm1\.", ".attention.output.LayerNorm."),
    (r"\.mlp\.fc1\.", ".intermediate.dense."),
    (r"\.mlp\.fc2\.", ".output.dense."),
    (r"\.norm2\.", ".output.LayerNorm."),
    (r"^pooler\.", "pooler.dense."),
)
# Checkpoints from the original TensorFlow conversion name LayerNorm parameters gamma/beta.
KEY_RENAMES = ((r"LayerNorm\.gamma$", "LayerNorm.weight"), (r"LayerNorm\.beta$", "LayerNorm.bias"))


def config_from_hf(hf: dict, dtype: str = "float32", scan: bool = False, remat: bool = False,
                   with_pooler: bool = True):
    return bert.BertConfig(
        vocab_size=hf.get("vocab_size", 30522), width=hf.get("hidden_size", 768),
        depth=hf.get("num_hidden_layers", 12), heads=hf.get("num_attention_heads", 12),
        mlp_dim=hf.get("intermediate_size", 3072), mlp_act=hf.get("hidden_act", "gelu"),
        max_positions=hf.get("max_position_embeddings", 512), type_vocab_size=hf.get("type_vocab_size", 2),
        layer_norm_eps=hf.get("layer_norm_eps", 1e-12), pad_token_id=hf.get("pad_token_id", 0),
        with_pooler=with_pooler, dtype=dtype, scan=scan, remat=remat)


def config_to_hf(cfg: bert.BertConfig) -> dict:
    return dict(architectures=["BertModel"], model_type="bert", vocab_size=cfg.vocab_size,
                hidden_size=cfg.width, num_hidden_layers=cfg.depth, num_attention_heads=cfg.heads,
                intermediate_size=cfg.mlp_dim, hidden_act=cfg.mlp_act, max_position_embeddings=cfg.max_positions,
                type_vocab_size=cfg.type_vocab_size, layer_norm_eps=cfg.layer_norm_eps,
                pad_token_id=cfg.pad_token_id, add_pooling_layer=cfg.with_pooler)


def dummy_inputs(cfg: bert.BertConfig) -> tuple:
    return (jnp.zeros((1, 8), jnp.int32),)


SPEC = ModelSpec(name="BERT", model_types=("bert",), rules=RULES, config_from_hf=config_from_hf,
                 config_to_hf=config_to_hf, build=bert.BertModel, dummy_inputs=dummy_inputs,
                 key_prefixes=("bert.",), key_renames=KEY_RENAMES)
