"""Tiny Hugging Face reference models for parity tests (PyTorch, random weights, saved locally).

Every parameter gets noise added after init, so LayerNorm scales, biases and LayerScale are not
at their trivial initial values and a wrong conversion cannot hide behind them.
"""

import numpy as np
import torch
import transformers

TINY_CLIP = dict(
    text_config=dict(vocab_size=99, hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                     num_attention_heads=4, max_position_embeddings=16, eos_token_id=98,
                     bos_token_id=97, pad_token_id=98),
    vision_config=dict(hidden_size=32, intermediate_size=37, num_hidden_layers=2,
                       num_attention_heads=4, image_size=30, patch_size=6),
    projection_dim=24)
TINY_DINOV2 = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, image_size=28,
                   patch_size=7, mlp_ratio=4)
DINOV2_KINDS = {
    "plain": (transformers.Dinov2Model, transformers.Dinov2Config, {}),
    "registers": (transformers.Dinov2WithRegistersModel, transformers.Dinov2WithRegistersConfig,
                  dict(num_register_tokens=4)),
    "swiglu": (transformers.Dinov2Model, transformers.Dinov2Config, dict(use_swiglu_ffn=True)),
}
TINY_BERT = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=37, max_position_embeddings=20)


def _perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
    return model.eval()


def save_tiny_clip(folder) -> transformers.CLIPModel:
    torch.manual_seed(0)
    model = _perturb(transformers.CLIPModel(transformers.CLIPConfig(**TINY_CLIP)), 1)
    model.save_pretrained(folder)
    return model


def save_tiny_dinov2(folder, kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    model_cls, config_cls, extra = DINOV2_KINDS[kind]
    model = _perturb(model_cls(config_cls(**TINY_DINOV2, **extra)), 2)
    model.save_pretrained(folder)
    return model


def save_tiny_bert(folder) -> transformers.BertModel:
    """A BertForPreTraining checkpoint (keys under `bert.` plus `cls.` heads, like bert-base);
    returns its encoder."""
    torch.manual_seed(0)
    model = _perturb(transformers.BertForPreTraining(transformers.BertConfig(**TINY_BERT)), 3)
    model.save_pretrained(folder)
    return model.bert


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def clip_token_ids(batch: int = 3, length: int = 16, eot: int = 98, seed: int = 0) -> np.ndarray:
    """Random ids with the end-of-text token at different places and both padding styles."""
    ids = np.random.RandomState(seed).randint(0, eot - 1, (batch, length))
    ids[0, 5:] = eot  # Hugging Face style: padded with the end-of-text id
    ids[1, length - 1] = eot  # full length
    ids[2, 3] = eot
    ids[2, 4:] = 0  # open_clip style: padded with 0
    return ids
