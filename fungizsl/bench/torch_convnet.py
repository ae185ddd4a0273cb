"""The PyTorch reference of the benchmark for the plain conv tower (`cnn_tiny`), trained as ours.

transformers' `CLIPModel` (`torch_clip.py`) has a ViT image tower only. This module is our
`two_towers.ClipModel` on `models/convnet.py` written in torch:

* image tower: the ConvNet layer for layer (per-image input standardisation, 3x3 convolutions
  with stride 2 then 1, BatchNorm, ReLU, 2x2 max pools, global average pool, bias-free `proj`
  into the joint space). BatchNorm is Flax's `nn.BatchNorm` as `layers.batch_norm` sets it up,
  not `torch.nn.BatchNorm2d`: in training it normalises with the batch's statistics and moves
  its running ones by `new = momentum * old + (1 - momentum) * batch` with the *biased* batch
  variance (BatchNorm2d would store the unbiased one), computed in fp32;
* text tower: transformers' `CLIPTextModel` (the same network as `models/clip_text.py`, built
  from `weights.clip.text_config_to_hf`) and a bias-free `text_projection`;
* every parameter and buffer is named as `weights.convert.flax_to_hf` names our leaves with the
  CLIP conversion table (`vision_model.conv0.weight`, `vision_model.bn0.mean`,
  `text_model.encoder.layers.0.self_attn.q_proj.weight`, ...), so our params and batch_stats
  load strictly with no table of its own; the weight-decay set is `torch_clip.decay_rule`
  (`train.optim`'s mask mapped through the same table), as for the ViT.

Its `forward(pixel_values, input_ids)` returns normalised `image_embeds` / `text_embeds` and it
has `logit_scale` and `get_image_features`, as `CLIPModel`, so `torch_clip.TorchClipStep` (loss,
clipping, AdamW, clamp; eager or torch.compile; fp32 or bf16 autocast) trains it unchanged.
torch is a test-extra dependency: imported only when the benchmark runs with `--reference=torch`.
"""

from typing import NamedTuple

import torch
import torch.nn.functional as F
import transformers

from fungizsl.bench import torch_clip
from fungizsl.models import convnet, two_towers
from fungizsl.weights import clip as clip_weights
from fungizsl.weights import convert


class BatchNorm(torch.nn.Module):
    """Flax's BatchNorm over N, H, W of NCHW activations: `weight`/`bias` are Flax's `scale`/`bias`,
    the buffers `mean`/`var` its `batch_stats` (named alike)."""

    def __init__(self, channels: int, momentum: float, eps: float, frozen: bool = False):
        super().__init__()
        self.momentum, self.eps, self.frozen = momentum, eps, frozen
        self.weight = torch.nn.Parameter(torch.ones(channels))
        self.bias = torch.nn.Parameter(torch.zeros(channels))
        self.register_buffer("mean", torch.zeros(channels))
        self.register_buffer("var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        if self.training and not self.frozen:
            with torch.no_grad():
                var, mean = torch.var_mean(x32, dim=(0, 2, 3), correction=0)
                self.mean.mul_(self.momentum).add_(mean, alpha=1 - self.momentum)
                self.var.mul_(self.momentum).add_(var, alpha=1 - self.momentum)
            y = F.batch_norm(x32, None, None, self.weight, self.bias, training=True, eps=self.eps)
        else:
            y = F.batch_norm(x32, self.mean, self.var, self.weight, self.bias, training=False, eps=self.eps)
        return y.to(x.dtype)


class ConvNet(torch.nn.Module):
    """`models/convnet.py`'s ConvNet on NCHW images; returns the pooled, projected features."""

    def __init__(self, cfg: convnet.ConvNetConfig):
        super().__init__()
        self.cfg = cfg
        for i, (cin, cout) in enumerate(zip((3,) + tuple(cfg.widths[:-1]), cfg.widths)):
            self.add_module(f"conv{i}", torch.nn.Conv2d(cin, cout, 3, stride=2 if i == 0 else 1, padding=1,
                                                        bias=False))
            self.add_module(f"bn{i}", BatchNorm(cout, cfg.batch_norm_momentum, cfg.batch_norm_eps,
                                                cfg.frozen_batch_norm))
        self.proj = torch.nn.Linear(cfg.widths[-1], cfg.output_dim, bias=False)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.float()
        if self.cfg.standardize_input:
            var, mean = torch.var_mean(x, dim=(2, 3), keepdim=True, correction=0)
            x = (x - mean) * torch.rsqrt(var + convnet.STANDARDIZE_EPS)
        last = len(self.cfg.widths) - 1
        for i in range(last + 1):
            x = F.relu(getattr(self, f"bn{i}")(getattr(self, f"conv{i}")(x)))
            if 0 < i < last:
                x = F.max_pool2d(x, 2, 2)
        return self.proj(x.float().mean(dim=(2, 3)))


class ClipOutput(NamedTuple):
    image_embeds: torch.Tensor  # L2-normalised, float32
    text_embeds: torch.Tensor


class ConvClip(torch.nn.Module):
    """`two_towers.ClipModel` with the conv tower (which projects itself: no visual projection)."""

    def __init__(self, config: two_towers.ClipConfig):
        super().__init__()
        if not two_towers.is_convnet(config):
            raise ValueError(f"torch_convnet builds the plain conv tower only, not {type(config.vision).__name__}")
        self.vision_model = ConvNet(config.vision)
        text = transformers.CLIPTextConfig(**clip_weights.text_config_to_hf(config.text, config.projection_dim),
                                           attn_implementation="sdpa")
        self.text_model = transformers.CLIPTextModel(text)
        self.text_projection = torch.nn.Linear(config.text.width, config.projection_dim, bias=False)
        self.logit_scale = torch.nn.Parameter(torch.tensor(float(config.logit_scale_init)))

    def get_image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """Unnormalised image embeddings (as `ClipModel.encode_image`)."""
        return self.vision_model(pixel_values).float()

    def get_text_features(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.text_projection(self.text_model(input_ids=input_ids).pooler_output).float()

    def forward(self, pixel_values: torch.Tensor, input_ids: torch.Tensor) -> ClipOutput:
        return ClipOutput(F.normalize(self.get_image_features(pixel_values), dim=-1, eps=1e-12),
                          F.normalize(self.get_text_features(input_ids), dim=-1, eps=1e-12))


def state_dict_from_flax(params, batch_stats) -> dict[str, torch.Tensor]:
    """Our Flax params and batch_stats as a `ConvClip` state dict (the CLIP conversion table)."""
    tensors = {**convert.flax_to_hf(params, clip_weights.SPEC), **convert.flax_to_hf(batch_stats, clip_weights.SPEC)}
    return {name: torch.from_numpy(array) for name, array in tensors.items()}


def build(model: two_towers.ClipModel, params, threads: int, batch_stats) -> ConvClip:
    """A `ConvClip` of `model`'s architecture holding `params` and `batch_stats` (strictly: every
    tensor used, none missing), in training mode."""
    torch_clip.set_threads(threads)
    module = ConvClip(model.config)
    module.load_state_dict(state_dict_from_flax(params, batch_stats), strict=True)
    return module.train()
