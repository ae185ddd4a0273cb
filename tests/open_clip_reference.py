"""open_clip's own PyTorch CLIP models, tiny and random, as the reference for our towers.

`import open_clip` runs its package `__init__`, which imports torchvision's transforms, and PyPI's
torchvision does not import beside the local torch 2.13.0 CPU wheel. The model modules need
only `torchvision.ops.misc.FrozenBatchNorm2d` (used when freezing BatchNorm statistics), so we
register `open_clip` as a bare package (its `__init__` is not executed), give it a small
FrozenBatchNorm2d stand-in when torchvision is missing, and import `open_clip.model` and
`open_clip.tokenizer` directly. The tokenizer module imports `ftfy`, which only repairs broken
Unicode: a pass-through stand-in is used when ftfy is absent (the test texts are plain ASCII).
Nothing is downloaded: the models are built from configs and filled with random weights.
"""

import importlib
import importlib.machinery
import importlib.util
import json
import os
import sys
import types

import numpy as np
import pytest
import torch

TINY_VIT = dict(embed_dim=24, vision_cfg=dict(image_size=32, layers=2, width=64, patch_size=8, head_width=16),
                text_cfg=dict(context_length=16, vocab_size=99, width=32, heads=4, layers=2))
TINY_RESNET = dict(embed_dim=24, vision_cfg=dict(image_size=64, layers=[1, 2, 1, 1], width=16, head_width=32),
                   text_cfg=dict(context_length=16, vocab_size=99, width=32, heads=4, layers=2))


class _FrozenBatchNorm2d(torch.nn.Module):
    """torchvision.ops.misc.FrozenBatchNorm2d: BatchNorm with fixed statistics and affine terms."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        for name, init in (("weight", torch.ones), ("bias", torch.zeros), ("running_mean", torch.zeros),
                           ("running_var", torch.ones)):
            self.register_buffer(name, init(num_features))

    def forward(self, x):
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


def _stand_ins() -> dict[str, types.ModuleType]:
    """Modules to lend open_clip while its modules import: torchvision.ops.misc and ftfy, each only
    where the real one does not import."""
    lent = {}
    try:
        import torchvision.ops.misc  # noqa: F401  (a working torchvision needs no stand-in)
    except Exception:
        for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc"):
            lent[name] = types.ModuleType(name)
            lent[name].__spec__ = importlib.machinery.ModuleSpec(name, None)
        lent["torchvision.ops.misc"].FrozenBatchNorm2d = _FrozenBatchNorm2d
        lent["torchvision"].ops, lent["torchvision.ops"].misc = lent["torchvision.ops"], lent["torchvision.ops.misc"]
    try:
        import ftfy  # noqa: F401
    except ImportError:
        lent["ftfy"] = types.ModuleType("ftfy")
        lent["ftfy"].fix_text = lambda text: text
    return lent


def open_clip_module(name: str):
    """`open_clip.<name>` from the installed open_clip_torch, without its package __init__.

    The stand-ins are in `sys.modules` only while open_clip's modules import, so no other library
    (transformers checks for torchvision) ever sees them.
    """
    if "open_clip" not in sys.modules:
        spec = importlib.util.find_spec("open_clip")
        if spec is None:
            # launch/setup_env.sh installs it in every mode (launch/requirements-no-deps.txt): a
            # missing package is a broken environment, not a reason to skip the parity tests.
            pytest.fail("open_clip_torch is not installed: run ./launch/test.sh, or "
                        "pip install --no-deps -r launch/requirements-no-deps.txt")
        import transformers  # noqa: F401  (settles its optional-dependency checks first)

        package = types.ModuleType("open_clip")
        package.__path__ = list(spec.submodule_search_locations)
        package.__spec__ = spec  # the real one, so find_spec("open_clip") still answers
        sys.modules["open_clip"] = package
        lent = _stand_ins()
        sys.modules.update(lent)
        try:
            for module in ("model", "tokenizer"):
                importlib.import_module(f"open_clip.{module}")
        finally:
            for key in lent:
                sys.modules.pop(key, None)
    return importlib.import_module(f"open_clip.{name}")


def _randomise(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Noise on every parameter and BatchNorm statistic, so no conversion hides behind an init value."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=generator))
        for name, buffer in model.named_buffers():
            if name.endswith("running_mean"):
                buffer.copy_(0.2 * torch.randn(buffer.shape, generator=generator))
            elif name.endswith("running_var"):
                buffer.copy_(0.5 + torch.rand(buffer.shape, generator=generator))
        model.logit_scale.fill_(2.5)
    return model.eval()


def build_tiny(model_cfg: dict, quick_gelu: bool = False, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = open_clip_module("model").CLIP(**model_cfg, quick_gelu=quick_gelu)
    return _randomise(model, seed + 1)


def save_folder(model: torch.nn.Module, model_cfg: dict, folder, quick_gelu: bool = False,
                weights: str = "open_clip_model.safetensors") -> str:
    """An open_clip folder as the Hub holds them: open_clip_config.json + weights."""
    os.makedirs(folder, exist_ok=True)
    config = {"model_cfg": dict(model_cfg, **({"quick_gelu": True} if quick_gelu else {})),
              "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                                 "std": [0.26862954, 0.26130258, 0.27577711]}}
    with open(os.path.join(folder, "open_clip_config.json"), "w") as f:
        json.dump(config, f)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    path = os.path.join(folder, weights)
    if weights.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file(state, path)
    else:
        torch.save(state, path)
    return str(folder)


def nchw(images: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


def token_ids(batch: int = 3, length: int = 16, eot: int = 98, seed: int = 0) -> np.ndarray:
    """open_clip-style rows: start, random ids, end-of-text (the largest id), then 0 padding."""
    ids = np.random.RandomState(seed).randint(1, eot - 1, (batch, length))
    ids[:, 0] = eot - 1
    for row, end in enumerate((5, length - 1, 3)[:batch]):
        ids[row, end] = eot
        ids[row, end + 1:] = 0
    return ids
