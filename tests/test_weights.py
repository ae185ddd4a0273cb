"""Strict checkpoint loading, sharded and bf16 checkpoints, export round trips, layouts and sizes."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers
from safetensors.numpy import save_file
from safetensors.torch import load_file as torch_load_file
from safetensors.torch import save_file as torch_save_file

from fungizsl import weights
from fungizsl.models import bert, two_towers, vit
from fungizsl.weights import convert

import reference_models as ref


def _paired_leaves(a, b):
    """Leaves of two parameter trees side by side, after checking that the trees have the same
    structure (zip alone would stop at the shorter one and pair leaves by position)."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    return zip(jax.tree.leaves(a), jax.tree.leaves(b))


@pytest.fixture(scope="module")
def clip_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    ref.save_tiny_clip(folder)
    return folder


def _rewrite_weights(folder, edit):
    path = os.path.join(folder, "model.safetensors")
    tensors = torch_load_file(path)
    edit(tensors)
    torch_save_file(tensors, path, metadata={"format": "pt"})


def test_removed_tensor_is_named(clip_folder, tmp_path):
    broken = tmp_path / "broken"
    weights.export_pretrained(*weights.load_pretrained(str(clip_folder)), str(broken))
    _rewrite_weights(broken, lambda t: t.pop("vision_model.encoder.layers.1.mlp.fc2.bias"))
    with pytest.raises(weights.CheckpointMismatchError) as error:
        weights.load_pretrained(str(broken))
    message = str(error.value)
    assert "missing tensor: vision_model.encoder.layers.1.mlp.fc2.bias" in message
    assert str(broken) in message


def test_reshaped_and_unexpected_tensors_are_all_named(clip_folder, tmp_path):
    broken = tmp_path / "broken"
    weights.export_pretrained(*weights.load_pretrained(str(clip_folder)), str(broken))

    def edit(tensors):
        tensors["text_model.encoder.layers.0.self_attn.q_proj.weight"] = torch.zeros(32, 16)
        tensors["visual_projection.weight"] = torch.zeros(25, 32)
        tensors["vision_model.extra_head.weight"] = torch.zeros(3)

    _rewrite_weights(broken, edit)
    with pytest.raises(weights.CheckpointMismatchError) as error:
        weights.load_pretrained(str(broken))
    message = str(error.value)
    assert "misshaped tensor: text_model.encoder.layers.0.self_attn.q_proj.weight: checkpoint (32, 16)" in message
    assert "misshaped tensor: visual_projection.weight: checkpoint (25, 32)" in message
    assert "unexpected tensor: vision_model.extra_head.weight" in message


def test_folder_errors_name_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        weights.load_pretrained(str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no config.json"):
        weights.load_pretrained(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "clip"}))
    with pytest.raises(FileNotFoundError, match="neither model.safetensors"):
        weights.load_pretrained(str(tmp_path))
    save_file({"x": np.zeros(2, np.float32)}, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        weights.load_pretrained(str(tmp_path))


def test_sharded_and_bf16_checkpoints_load(tmp_path):
    torch_model = ref.save_tiny_dinov2(tmp_path / "single", "registers")
    torch_model.to(torch.bfloat16).save_pretrained(tmp_path / "sharded", max_shard_size="20KB")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").exists()
    _, single = weights.load_pretrained(str(tmp_path / "single"))
    _, sharded = weights.load_pretrained(str(tmp_path / "sharded"))
    for a, b in _paired_leaves(single, sharded):
        assert b.dtype == np.float32
        np.testing.assert_allclose(a, b, rtol=1e-2, atol=1e-2)  # bf16 rounding only


def _perturbed(params, seed=7):
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.RandomState(seed)
    return jax.tree.unflatten(tree, [x + np.float32(0.05) * rng.standard_normal(x.shape).astype(np.float32) for x in leaves])


def test_clip_export_round_trip_through_pytorch(clip_folder, tmp_path):
    model, params = weights.load_pretrained(str(clip_folder))
    tuned = _perturbed(params)  # stands in for a fine-tuned model
    weights.export_pretrained(model, tuned, str(tmp_path / "out"))
    torch_model = transformers.CLIPModel.from_pretrained(tmp_path / "out").eval()
    images = np.random.RandomState(0).randn(2, 30, 30, 3).astype(np.float32)
    ids = ref.clip_token_ids()
    with torch.no_grad():
        want = torch_model(input_ids=torch.from_numpy(ids), pixel_values=ref.nchw(images)).logits_per_image
    got = model.apply({"params": tuned}, jnp.asarray(images), jnp.asarray(ids))["logits_per_image"]
    np.testing.assert_allclose(want.numpy(), np.asarray(got), atol=1e-4)
    # and back again, bit for bit
    _, reloaded = weights.load_pretrained(str(tmp_path / "out"))
    for a, b in _paired_leaves(tuned, reloaded):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("kind", ["registers", "swiglu"])
def test_dinov2_scanned_export_round_trip_through_pytorch(tmp_path, kind):
    ref.save_tiny_dinov2(tmp_path / "src", kind)
    model, params = weights.load_pretrained(str(tmp_path / "src"), scan=True)
    assert "layers" in params["encoder"] and params["encoder"]["layers"]["norm1"]["scale"].shape[0] == 2
    tuned = _perturbed(params)
    weights.export_pretrained(model, tuned, str(tmp_path / "out"))
    torch_model = transformers.AutoModel.from_pretrained(tmp_path / "out").eval()
    images = np.random.RandomState(0).randn(2, 28, 28, 3).astype(np.float32)
    with torch.no_grad():
        want = torch_model(pixel_values=ref.nchw(images)).last_hidden_state
    got = model.apply({"params": tuned}, jnp.asarray(images))["last_hidden_state"]
    np.testing.assert_allclose(want.numpy(), np.asarray(got), atol=1e-4)


def test_bert_from_scratch_exports_to_pytorch(tmp_path):
    model = bert.BertModel(bert.bert_config("bert_tiny"))
    ids = np.random.RandomState(0).randint(0, 1000, (2, 9))
    params = model.init(jax.random.key(0), jnp.asarray(ids))["params"]
    weights.export_pretrained(model, params, str(tmp_path))
    torch_model = transformers.BertModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        want = torch_model(input_ids=torch.from_numpy(ids)).pooler_output
    got = model.apply({"params": params}, jnp.asarray(ids))["pooled"]
    np.testing.assert_allclose(want.numpy(), np.asarray(got), atol=1e-4)


def test_scan_and_remat_match_unrolled(clip_folder):
    model, params = weights.load_pretrained(str(clip_folder))
    scanned, scanned_params = weights.load_pretrained(str(clip_folder), scan=True, remat=True)
    images = jnp.asarray(np.random.RandomState(0).randn(2, 30, 30, 3), jnp.float32)
    ids = jnp.asarray(ref.clip_token_ids())

    def loss(p, m):
        return m.apply({"params": p}, images, ids)["logits_per_image"].sum()

    np.testing.assert_allclose(loss(params, model), loss(scanned_params, scanned), rtol=1e-5)
    grads = jax.grad(loss)(params, model)
    scanned_grads = convert.unstack_layers(jax.grad(loss)(scanned_params, scanned))
    for a, b in _paired_leaves(grads, scanned_grads):
        np.testing.assert_allclose(a, b, atol=1e-4)


def test_bf16_matmuls_keep_fp32_params_and_stay_close(clip_folder):
    model, params = weights.load_pretrained(str(clip_folder))
    fast, _ = weights.load_pretrained(str(clip_folder), dtype="bfloat16")
    images = jnp.asarray(np.random.RandomState(0).randn(2, 30, 30, 3), jnp.float32)
    ids = jnp.asarray(ref.clip_token_ids())
    full = model.apply({"params": params}, images, ids)
    half = fast.apply({"params": params}, images, ids)
    assert half["zimg"].dtype == jnp.float32
    assert float(jnp.abs(full["zimg"] - half["zimg"]).max()) < 5e-2
    assert float(jnp.abs(full["zimg"] - half["zimg"]).max()) > 0  # bf16 really ran


def _param_count(module, spec) -> int:
    shapes = weights.init_params_shapes(module, spec)
    return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


# Published totals of the OpenAI CLIP checkpoints (open_clip / Hugging Face model cards).
CLIP_PARAMS = {"b32": 151_277_313, "b16": 149_620_737, "l14": 427_616_513, "l14_336": 427_944_193}


@pytest.mark.parametrize("arch", sorted(CLIP_PARAMS))
def test_clip_variants_have_published_sizes(arch):
    model = two_towers.ClipModel(two_towers.clip_config(arch))
    assert _param_count(model, weights.clip.SPEC) == CLIP_PARAMS[arch]


# Parameter totals of the released DINOv2 backbones as Hugging Face's Dinov2Model holds them
# (facebook/dinov2-{small,base,large,giant}: sum of numel over the loaded model, including the mask
# token and the 37x37+1 position table; counts of the released checkpoints, which no paper prints),
# published only rounded, in the DINOv2 paper and model card
# (Oquab et al. 2023, arXiv:2304.07193; github.com/facebookresearch/dinov2 MODEL_CARD.md) as
# 21 M, 86 M, 300 M and 1,100 M. The register variants (Darcet et al. 2023, arXiv:2309.16588) add
# four register tokens of the model width to the same backbone.
DINOV2_PARAMS = {"dinov2_s14": 22_056_576, "dinov2_b14": 86_580_480, "dinov2_l14": 304_368_640,
                 "dinov2_g14": 1_136_480_768}
DINOV2_PARAMS_ROUNDED = {"dinov2_s14": 21e6, "dinov2_b14": 86e6, "dinov2_l14": 300e6, "dinov2_g14": 1100e6}
DINOV2_WIDTH = {"dinov2_s14": 384, "dinov2_b14": 768, "dinov2_l14": 1024, "dinov2_g14": 1536}


@pytest.mark.parametrize("variant", ["dinov2_s14", "dinov2_b14", "dinov2_l14", "dinov2_g14",
                                     "dinov2_s14_reg", "dinov2_g14_reg"])
def test_dinov2_variants_have_published_sizes(variant):
    base = variant.removesuffix("_reg")
    count = _param_count(vit.VisionTransformer(vit.vit_config(variant)), weights.dinov2.SPEC)  # eval_shape only
    registers = 4 * DINOV2_WIDTH[base] if variant.endswith("_reg") else 0
    assert count == DINOV2_PARAMS[base] + registers
    # and the model card's loose figures (it writes "21 M" for ViT-S/14's 22.06 M), within 6 %
    assert abs(count - DINOV2_PARAMS_ROUNDED[base]) / DINOV2_PARAMS_ROUNDED[base] < 0.06


@pytest.mark.parametrize("variant", ["dinov2_s14", "dinov2_b14", "dinov2_l14", "dinov2_g14",
                                     "dinov2_s14_reg", "dinov2_g14_reg"])
def test_full_size_dinov2_variants_load_hf_architecture(variant):
    """The Hugging Face model built (on the meta device) from our variant's config has exactly
    the tensor names and shapes our strict loader expects, at full size, without allocating them.
    Sizes are checked against published numbers above, not here: this config is our own."""
    config = vit.vit_config(variant)
    hf_config = weights.dinov2.config_to_hf(config)
    model_cls = (transformers.Dinov2WithRegistersModel if config.num_registers else transformers.Dinov2Model)
    config_cls = (transformers.Dinov2WithRegistersConfig if config.num_registers else transformers.Dinov2Config)
    with torch.device("meta"):
        torch_model = model_cls(config_cls(**hf_config))
    # zero-stride stand-ins with the right shapes: no memory for ViT-g's 1.1B parameters
    tensors = {k: np.broadcast_to(np.float32(0), tuple(v.shape)) for k, v in torch_model.state_dict().items()}
    tensors = {k: v for k, v in _as_saved(tensors).items()}
    module = vit.VisionTransformer(config)
    expected = weights.init_params_shapes(module, weights.dinov2.SPEC)
    weights.convert.hf_to_flax(tensors, expected, weights.dinov2.SPEC, source=variant)


def _as_saved(tensors):
    """transformers 5 names DINOv2's modules differently in memory and on disk; save_pretrained
    writes the on-disk (hub) names, which are what our loader reads."""
    renamed = {}
    for key, value in tensors.items():
        for new, old in ((".attention.q_proj.", ".attention.attention.query."),
                         (".attention.k_proj.", ".attention.attention.key."),
                         (".attention.v_proj.", ".attention.attention.value."),
                         (".attention.o_proj.", ".attention.output.dense."),
                         (".mlp.down_proj.", ".mlp.weights_out.")):
            key = key.replace(new, old)
        renamed[key] = value
    for key in [k for k in renamed if ".mlp.gate_proj." in k]:
        up = key.replace("gate_proj", "up_proj")
        shape = (renamed[key].shape[0] * 2,) + renamed[key].shape[1:]
        renamed[key.replace("gate_proj", "weights_in")] = np.broadcast_to(np.float32(0), shape)
        del renamed[key], renamed[up]
    return renamed
