"""A random tiny CLIP (32 px images) with a small byte-level BPE trained on given texts: the model
that tests export to Hugging Face folders or hand to evaluation-only runs."""

import dataclasses

import jax

from fungizsl import tokenizers, weights
from fungizsl.models import two_towers


def random_tiny_clip(texts, tokenizer_dir, context_length: int = 16):
    """(module, params, tokenizer): the tiny CLIP sized to a BPE of 300 tokens trained on `texts`
    (saved in `tokenizer_dir`), with random weights from key 0."""
    tokenizer = tokenizers.train_bpe_tokenizer(texts, 300, tokenizer_dir, context_length=context_length)
    cfg = two_towers.clip_config("tiny")
    cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, image_size=32),
                              text=dataclasses.replace(cfg.text, vocab_size=tokenizer.vocab_size,
                                                       eot_token_id=tokenizer.eot_id, context_length=context_length))
    module = two_towers.ClipModel(cfg)
    params = module.init(jax.random.key(0), *weights.clip.dummy_inputs(cfg))["params"]
    return module, params, tokenizer
