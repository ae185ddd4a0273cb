"""A from-scratch CLIP exported to Hugging Face pools its text at the same token in PyTorch as here.

Hugging Face's CLIPTextTransformer treats ``eos_token_id == 2`` as the legacy OpenAI config and pools
at ``argmax(input_ids)``; our from-scratch BPE therefore must not put end-of-text at id 2.
"""

import dataclasses

import numpy as np
import pytest

from fungizsl import tokenizers, weights
from fungizsl.models import two_towers
from tiny_clip import random_tiny_clip

TEXTS = ["round spores with a thin wall", "dense mycelium of branching hyphae", "germ tubes from two spores",
         "a bright-field view of septate hyphae", "spores", "mycelium covering the field"] * 3


def test_from_scratch_tokenizer_does_not_use_the_legacy_eos_id(tmp_path):
    tokenizer = tokenizers.train_bpe_tokenizer(TEXTS, 300, tmp_path, context_length=16)
    assert tokenizer.eot_id != 2 and tokenizer.pad_id == 0


def test_exported_from_scratch_text_tower_matches_pytorch(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    model, params, tokenizer = random_tiny_clip(TEXTS, tmp_path / "tok")
    weights.export_pretrained(model, params, str(tmp_path / "export"))

    ids = tokenizer(TEXTS[:3])["input_ids"]
    ours = np.asarray(model.apply({"params": params}, ids, method="encode_text"))
    torch_model = transformers.CLIPModel.from_pretrained(tmp_path / "export").eval()
    with torch.no_grad():
        theirs = torch_model.get_text_features(input_ids=torch.as_tensor(ids, dtype=torch.long))
    theirs = getattr(theirs, "pooler_output", theirs)  # transformers 5 may wrap the features
    np.testing.assert_allclose(ours, theirs.numpy(), atol=1e-4)


def test_export_refuses_a_text_tower_with_end_of_text_id_2():
    cfg = two_towers.clip_config("tiny")
    cfg = dataclasses.replace(cfg, text=dataclasses.replace(cfg.text, eot_token_id=2))
    with pytest.raises(ValueError, match="end-of-text id is 2"):
        weights.clip.config_to_hf(cfg)
