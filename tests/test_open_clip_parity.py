"""open_clip checkpoints: our towers against open_clip's own PyTorch models on the same random
weights (ViT and modified-ResNet image towers, fp32, 1e-4), export round trips into open_clip,
strict loading, the published ResNet sizes, and open_clip's tokenizer."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from fungizsl import tokenizers, workdir
from fungizsl.models import resnet, two_towers
from fungizsl.weights import CheckpointMismatchError
from fungizsl.weights import open_clip as oc

import open_clip_reference as ref

TOL = 1e-4


def max_diff(a, b) -> float:
    a = a.detach().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    return float(np.abs(a - np.asarray(b)).max())


def _compare(torch_model, model, variables, images, ids, train=False) -> dict[str, float]:
    """Image/text features, normalised embeddings and logits of both models on the same inputs."""
    if train:
        torch_model.train()
    with torch.no_grad():
        want_img = torch_model.encode_image(ref.nchw(images))
        want_txt = torch_model.encode_text(torch.from_numpy(ids))
        img_n, txt_n, scale = torch_model(ref.nchw(images), torch.from_numpy(ids))
    torch_model.eval()
    if train:
        got_img, _ = model.apply(variables, jnp.asarray(images), train=True, method="encode_image",
                                 mutable=["batch_stats"])
    else:
        got_img = model.apply(variables, jnp.asarray(images), method="encode_image")
    got = model.apply(variables, jnp.asarray(images), jnp.asarray(ids), train=train,
                      **({"mutable": ["batch_stats"]} if train else {}))
    got = got[0] if train else got
    return {
        "image_features": max_diff(want_img, got_img),
        "text_features": max_diff(want_txt, model.apply(variables, jnp.asarray(ids), method="encode_text")),
        "image_embeds": max_diff(img_n, got["zimg"]),
        "text_embeds": max_diff(txt_n, got["ztxt"]),
        "logits_per_image": max_diff(scale * img_n @ txt_n.T, got["logits_per_image"]),
    }


@pytest.mark.parametrize("kind,quick_gelu", [("vit", False), ("vit", True), ("resnet", True)],
                         ids=["vit-gelu", "vit-quickgelu", "resnet"])
def test_matches_open_clip(tmp_path, kind, quick_gelu):
    cfg = ref.TINY_VIT if kind == "vit" else ref.TINY_RESNET
    torch_model = ref.build_tiny(cfg, quick_gelu=quick_gelu)
    folder = ref.save_folder(torch_model, cfg, tmp_path / "ckpt", quick_gelu=quick_gelu)
    model, variables = oc.load_open_clip(folder)
    assert two_towers.is_resnet(model.config) == (kind == "resnet")
    size = cfg["vision_cfg"]["image_size"]
    images = np.random.RandomState(1).randn(4, size, size, 3).astype(np.float32)
    ids = ref.token_ids()
    diffs = _compare(torch_model, model, variables, images[:3], ids)
    print(f"open_clip {kind} quick_gelu={quick_gelu} max |diff|:", diffs)
    assert max(diffs.values()) < TOL, diffs
    if kind == "resnet":  # training mode: BatchNorm with the batch's statistics
        diffs = _compare(torch_model, model, variables, images[:3], ids, train=True)
        print("open_clip resnet, batch statistics, max |diff|:", diffs)
        assert max(diffs.values()) < TOL, diffs


def test_bin_checkpoint_and_bare_state_dict(tmp_path):
    torch_model = ref.build_tiny(ref.TINY_RESNET, quick_gelu=True, seed=3)
    folder = ref.save_folder(torch_model, ref.TINY_RESNET, tmp_path / "bin", quick_gelu=True,
                             weights="open_clip_pytorch_model.bin")
    model, variables = oc.load_open_clip(folder)
    images = np.random.RandomState(2).randn(2, 64, 64, 3).astype(np.float32)
    with torch.no_grad():
        want = torch_model.encode_image(ref.nchw(images))
    assert max_diff(want, model.apply(variables, jnp.asarray(images), method="encode_image")) < TOL
    from safetensors.numpy import save_file
    bare = tmp_path / "bare" / "weights.safetensors"
    bare.parent.mkdir()
    save_file(oc.read_state_dict(os.path.join(folder, "open_clip_pytorch_model.bin")), str(bare))
    with pytest.raises(ValueError, match="bare state dict: pass model_name"):
        oc.load_open_clip(str(bare))
    with pytest.raises(CheckpointMismatchError, match="misshaped tensor: visual.conv1.weight"):
        oc.load_open_clip(str(bare), model_name="RN50-quickgelu")


@pytest.mark.parametrize("kind", ["vit", "resnet"])
def test_export_loads_into_open_clip(tmp_path, kind, monkeypatch):
    cfg = ref.TINY_VIT if kind == "vit" else ref.TINY_RESNET
    torch_model = ref.build_tiny(cfg, quick_gelu=True, seed=5)
    model, variables = oc.load_open_clip(ref.save_folder(torch_model, cfg, tmp_path / "in", quick_gelu=True))
    monkeypatch.setattr(workdir, "WRITES", [])
    out = oc.export_open_clip(model, variables, str(tmp_path / "out"))
    # written through the workdir module, so the write audit of a run sees the export
    assert sorted(workdir.WRITES) == [str(tmp_path / "out" / n) for n in
                                      ("open_clip_config.json", "open_clip_model.safetensors")]
    exported = json.loads(open(os.path.join(out, "open_clip_config.json")).read())["model_cfg"]
    rebuilt = ref.open_clip_module("model").CLIP(**exported).eval()
    from safetensors.torch import load_file
    rebuilt.load_state_dict(load_file(os.path.join(out, "open_clip_model.safetensors")), strict=True)
    size = cfg["vision_cfg"]["image_size"]
    images = ref.nchw(np.random.RandomState(3).randn(2, size, size, 3).astype(np.float32))
    ids = torch.from_numpy(ref.token_ids())
    with torch.no_grad():
        for a, b in zip(torch_model(images, ids), rebuilt(images, ids)):
            assert max_diff(a, b) < 1e-6
    # and back again: the same variables
    _, again = oc.load_open_clip(out)
    for a, b in zip(jax.tree.leaves(variables), jax.tree.leaves(again)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_strict_loading_names_every_bad_tensor(tmp_path):
    torch_model = ref.build_tiny(ref.TINY_RESNET, quick_gelu=True)
    folder = ref.save_folder(torch_model, ref.TINY_RESNET, tmp_path / "ok", quick_gelu=True)
    path = os.path.join(folder, "open_clip_model.safetensors")
    from safetensors.numpy import save_file
    tensors = oc.read_state_dict(path)
    tensors.pop("visual.layer2.1.bn2.running_var")
    tensors.pop("transformer.resblocks.1.attn.in_proj_bias")
    tensors["visual.attnpool.c_proj.weight"] = np.zeros((25, 512), np.float32)
    tensors["visual.head.weight"] = np.zeros(3, np.float32)
    save_file(tensors, path)
    with pytest.raises(CheckpointMismatchError) as error:
        oc.load_open_clip(folder)
    message = str(error.value)
    for line in ("missing tensor: visual.layer2.1.bn2.running_var",
                 "missing tensor: transformer.resblocks.1.attn.in_proj_bias",
                 "misshaped tensor: visual.attnpool.c_proj.weight: checkpoint (25, 512), model needs (24, 512)",
                 "unexpected tensor: visual.head.weight"):
        assert line in message, message
    assert path in message


def test_unsupported_open_clip_options_are_named(tmp_path):
    cfg = dict(ref.TINY_VIT, vision_cfg=dict(ref.TINY_VIT["vision_cfg"], ls_init_value=1e-4, qk_norm=True),
               init_logit_bias=-10)
    with pytest.raises(ValueError) as error:
        oc.config_from_open_clip(cfg, source="siglipish")
    for fragment in ("vision_cfg.ls_init_value=0.0001", "vision_cfg.qk_norm=True", "model_cfg.init_logit_bias=-10"):
        assert fragment in str(error.value)
    with pytest.raises(ValueError, match="text_cfg.hf_model_name"):
        oc.config_from_open_clip(dict(ref.TINY_VIT, text_cfg=dict(hf_model_name="roberta-base")))


# open_clip's docs/model_profile.csv (millions of parameters: image tower, text tower + logit scale).
PUBLISHED_MPARAMS = {"rn50": (38.32, 63.69), "rn101": (56.26, 63.43), "rn50x4": (87.14, 91.16),
                     "rn50x16": (167.33, 123.65), "rn50x64": (420.38, 202.88)}
OPEN_CLIP_NAMES = {"rn50": "RN50", "rn101": "RN101", "rn50x4": "RN50x4", "rn50x16": "RN50x16",
                   "rn50x64": "RN50x64"}


def _mparams(tree) -> float:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree)) / 1e6


@pytest.mark.parametrize("arch", sorted(PUBLISHED_MPARAMS))
def test_published_resnet_sizes(arch):
    """Parameter counts of our RN50 ... RN50x64 (shapes only, nothing allocated) against open_clip's
    published table; the open_clip model-name table builds the same model."""
    for config in (two_towers.clip_config(arch),
                   oc.config_from_open_clip(oc.read_model_config("", OPEN_CLIP_NAMES[arch]))):
        params = oc.expected_variables(two_towers.ClipModel(config))["params"]
        image, total = _mparams(params["vision_model"]), _mparams(params)
        want_image, want_text = PUBLISHED_MPARAMS[arch]
        print(f"{arch}: image {image:.2f} M (published {want_image}), text {total - image:.2f} M "
              f"(published {want_text})")
        assert abs(image - want_image) < 0.006 and abs(total - image - want_text) < 0.006


def test_model_name_table_matches_open_clip_package():
    spec_dir = os.path.join(os.path.dirname(ref.open_clip_module("model").__file__), "model_configs")
    for name, ours in oc.MODEL_CONFIGS.items():
        with open(os.path.join(spec_dir, f"{name}.json")) as f:
            theirs = json.load(f)
        theirs["vision_cfg"].pop("patch_size", None) if isinstance(theirs["vision_cfg"]["layers"], list) else None
        assert theirs == ours, name


def test_rn_tiny_is_cpu_sized():
    params = oc.expected_variables(two_towers.ClipModel(two_towers.clip_config("rn_tiny")))["params"]
    assert 1.0 < _mparams(params["vision_model"]) < 2.0
    assert resnet.VARIANTS["rn_tiny"]["image_size"] == 96


def test_open_clip_tokenizer_matches_open_clip(tmp_path):
    texts = ["a microscopy image of fungal hyphae", "Spores are small, round or elliptical cells!",
             "Mycelium: a dense network of branching hyphae (x400)", "It's 3 stages; don't they?"]
    ours = tokenizers.open_clip_bpe_tokenizer(tmp_path, context_length=77)
    theirs = ref.open_clip_module("tokenizer").SimpleTokenizer(context_length=77)
    np.testing.assert_array_equal(ours(texts)["input_ids"], theirs(texts).numpy())
    assert ours.pad_id == 0 and ours.eot_id == 49407 and ours.vocab_size == 49408


def test_torchscript_archives_are_read_as_state_dicts(tmp_path):
    """OpenAI's original RN50.pt etc. are TorchScript archives, which torch.load(weights_only=True)
    refuses; read_state_dict falls back to torch.jit.load and takes its state dict."""
    linear = torch.nn.Linear(2, 3)
    torch.jit.script(linear).save(str(tmp_path / "scripted.pt"))
    tensors = oc.read_state_dict(str(tmp_path / "scripted.pt"))
    assert sorted(tensors) == ["bias", "weight"]
    np.testing.assert_array_equal(tensors["weight"], linear.weight.detach().numpy())


def test_scan_layout_gives_the_same_features(tmp_path):
    torch_model = ref.build_tiny(ref.TINY_VIT, seed=7)
    folder = ref.save_folder(torch_model, ref.TINY_VIT, tmp_path / "ckpt")
    images = jnp.asarray(np.random.RandomState(4).randn(2, 32, 32, 3).astype(np.float32))
    ids = jnp.asarray(ref.token_ids())
    (plain, plain_vars), (scanned, scanned_vars) = oc.load_open_clip(folder), oc.load_open_clip(folder, scan=True)
    assert "layers" in scanned_vars["params"]["vision_model"]["encoder"]
    want = plain.apply(plain_vars, images, ids)
    got = scanned.apply(scanned_vars, images, ids)
    assert max_diff(want["logits_per_image"], got["logits_per_image"]) < 1e-5
    out = oc.export_open_clip(scanned, scanned_vars, str(tmp_path / "out"))  # unstacked on export
    assert "visual.transformer.resblocks.1.attn.in_proj_weight" in oc.read_state_dict(
        os.path.join(out, "open_clip_model.safetensors"))
