"""Our Flax towers against the PyTorch references on the same weights and inputs (fp32, 1e-4)."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fungizsl import weights
from fungizsl.models.bert import mean_pool
from fungizsl import tokenizers

import reference_models as ref

TOL = 1e-4


def max_diff(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.abs(a - np.asarray(b)).max())


@pytest.fixture(scope="module")
def clip_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    torch_model = ref.save_tiny_clip(folder)
    model, params = weights.load_pretrained(str(folder))
    return torch_model, model, params


def test_clip_matches_pytorch(clip_pair):
    torch_model, model, params = clip_pair
    images = np.random.RandomState(1).randn(3, 30, 30, 3).astype(np.float32)
    ids = ref.clip_token_ids()
    with torch.no_grad():
        want = torch_model(input_ids=torch.from_numpy(ids), pixel_values=ref.nchw(images))
        vision = torch_model.vision_model(pixel_values=ref.nchw(images))
        text = torch_model.text_model(input_ids=torch.from_numpy(ids))
    got = model.apply({"params": params}, jnp.asarray(images), jnp.asarray(ids))
    variables = {"params": params}
    zimg = model.apply(variables, jnp.asarray(images), method="encode_image")
    ztxt = model.apply(variables, jnp.asarray(ids), method="encode_text")
    diffs = {
        "logits_per_image": max_diff(want.logits_per_image, got["logits_per_image"]),
        "logits_per_text": max_diff(want.logits_per_text, got["logits_per_text"]),
        "image_embeds": max_diff(want.image_embeds, got["zimg"]),
        "text_embeds": max_diff(want.text_embeds, got["ztxt"]),
        "image_features": max_diff(torch_model.visual_projection(vision.pooler_output), zimg),
        "text_features": max_diff(torch_model.text_projection(text.pooler_output), ztxt),
        "vision_last_hidden": max_diff(
            vision.last_hidden_state,
            model.apply(variables, jnp.asarray(images), method=lambda m, x: m.vision_model(x)["last_hidden_state"])),
        "text_last_hidden": max_diff(
            text.last_hidden_state,
            model.apply(variables, jnp.asarray(ids), method=lambda m, x: m.text_model(x)["last_hidden_state"])),
    }
    print("CLIP max |diff|:", diffs)
    assert max(diffs.values()) < TOL, diffs


def test_clip_matches_pytorch_at_other_resolution(clip_pair):
    torch_model, model, params = clip_pair
    images = np.random.RandomState(2).randn(2, 42, 36, 3).astype(np.float32)  # native is 30x30
    with torch.no_grad():
        want = torch_model.vision_model(pixel_values=ref.nchw(images), interpolate_pos_encoding=True)
        want = torch_model.visual_projection(want.pooler_output)
    got = model.apply({"params": params}, jnp.asarray(images), method="encode_image")
    diff = max_diff(want, got)
    print("CLIP 42x36 image features max |diff|:", diff)
    assert diff < TOL


@pytest.mark.parametrize("kind", sorted(ref.DINOV2_KINDS))
@pytest.mark.parametrize("size", [(28, 28), (42, 35)], ids=["native", "resampled"])
def test_dinov2_matches_pytorch(tmp_path, kind, size):
    torch_model = ref.save_tiny_dinov2(tmp_path, kind)
    model, params = weights.load_pretrained(str(tmp_path))
    assert model.config.num_registers == (4 if kind == "registers" else 0)
    images = np.random.RandomState(3).randn(2, *size, 3).astype(np.float32)
    with torch.no_grad():
        want = torch_model(pixel_values=ref.nchw(images))
    got = model.apply({"params": params}, jnp.asarray(images))
    diffs = (max_diff(want.last_hidden_state, got["last_hidden_state"]),
             max_diff(want.pooler_output, got["pooled"]))
    print(f"DINOv2 {kind} {size} max |diff| (hidden, pooled):", diffs)
    assert max(diffs) < TOL


def test_bert_matches_pytorch_with_prefix_and_heads(tmp_path):
    torch_model = ref.save_tiny_bert(tmp_path)
    model, params = weights.load_pretrained(str(tmp_path))
    rng = np.random.RandomState(4)
    ids = rng.randint(0, 99, (3, 12))
    mask = np.ones_like(ids)
    mask[1, 7:] = 0
    mask[2, 3:] = 0
    token_types = np.zeros_like(ids)
    token_types[0, 6:] = 1
    with torch.no_grad():
        want = torch_model(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                           token_type_ids=torch.from_numpy(token_types))
    got = model.apply({"params": params}, jnp.asarray(ids), jnp.asarray(mask), jnp.asarray(token_types))
    kept = mask.astype(bool)  # padded positions are never read downstream
    diffs = (max_diff(want.last_hidden_state.numpy()[kept], np.asarray(got["last_hidden_state"])[kept]),
             max_diff(want.pooler_output, got["pooled"]))
    print("BERT max |diff| (hidden, pooled):", diffs)
    assert max(diffs) < TOL


SENTENCES = [
    "Hyphae branch repeatedly and fuse into a dense mycelium.",
    "Spores are small, round or elliptical reproductive cells.",
    "This fungi specimen was collected on 2021-09-14 in a Mixed woodland area, growing on a soil substrate.",
    "Amanita muscaria",
    "A microscopy image of fungal spores germinating on agar, with thin germ tubes emerging.",
]


def test_minilm_real_weights_match_pytorch():
    import transformers

    folder = tokenizers.minilm_folder()
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(SENTENCES, padding=True, return_tensors="np")
    torch_model = transformers.BertModel.from_pretrained(folder).eval()
    with torch.no_grad():
        hidden = torch_model(**{k: torch.from_numpy(v) for k, v in encoded.items()}).last_hidden_state
    mask = encoded["attention_mask"]
    want = mean_pool(jnp.asarray(hidden.numpy()), jnp.asarray(mask))

    model, params = weights.load_pretrained(folder)
    assert (model.config.width, model.config.depth) == (384, 6)
    got = model.apply({"params": params}, jnp.asarray(encoded["input_ids"]), jnp.asarray(mask),
                      jnp.asarray(encoded["token_type_ids"]))
    got = mean_pool(got["last_hidden_state"], jnp.asarray(mask))
    diff = max_diff(want, got)
    print("MiniLM mean-pooled sentence embedding max |diff|:", diff)
    assert diff < TOL
    # The embeddings carry meaning: the two sentences about morphology are closer to each other
    # than either is to the bare species name.
    unit = np.asarray(got) / np.linalg.norm(np.asarray(got), axis=-1, keepdims=True)
    sims = unit @ unit.T
    assert sims[0, 1] > sims[0, 3] and sims[0, 1] > sims[1, 3]
