"""The PyTorch reference of the benchmark: transformers' `CLIPModel` trained exactly as ours.

Same architecture (built from our config through `weights.clip.config_to_hf`), same weights
(written by `weights.export_pretrained` and read back by `CLIPModel.from_pretrained`), same batch,
same loss (`fungizsl.losses.contrastive_loss`, written again here in torch), same optimizer
(AdamW with global-norm clipping, no decay on norms/biases/embeddings-free leaves as in
`fungizsl.train.optim`), same thread count. torch is a test-extra dependency: this module is
imported only when the benchmark runs with `--reference=torch`.
"""

import contextlib
import tempfile

import numpy as np
import torch
import torch.nn.functional as F
import transformers

from flax import traverse_util

from fungizsl import weights
from fungizsl.train import optim
from fungizsl.weights import clip as clip_weights
from fungizsl.weights import convert

# Building the reference (from_pretrained) otherwise prints a "Loading weights" progress bar and
# load reports into the benchmark's log, once per reference built.
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def set_threads(threads: int) -> dict:
    """Both of torch's CPU pools at `threads`: intra-op (OpenMP, what a matmul or conv splits
    over) and inter-op (independent ops; settable once per process, before first use, so a second
    call keeps the first value). Returns the counts torch reports."""
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(threads)
    except RuntimeError:  # already set, or inter-op work already ran
        pass
    return {"torch_intra_op": torch.get_num_threads(), "torch_inter_op": torch.get_num_interop_threads()}


def build(model, params, threads: int):
    """A `CLIPModel` holding `params` (our Flax tree) via the Hugging Face export path."""
    set_threads(threads)
    with tempfile.TemporaryDirectory(prefix="fungizsl_bench_") as folder:
        weights.export_pretrained(model, params, folder)
        hf = transformers.CLIPModel.from_pretrained(folder, attn_implementation="sdpa")
    return hf.train()


def decayed_names(params) -> frozenset[str]:
    """The torch names of the leaves `fungizsl.train.optim.weight_decay_mask` decays, through the
    CLIP conversion table: the one decay rule, for transformers' CLIPModel and for torch_convnet."""
    mask = traverse_util.flatten_dict(optim.weight_decay_mask(convert.unstack_layers(params)))
    return frozenset(convert.to_hf_key(path, clip_weights.SPEC) for path, decayed in mask.items() if decayed)


def decay_rule(params):
    """`(name, param) -> decayed?` for `make_optimizer` / `TorchClipStep(decayed=...)`."""
    names = decayed_names(params)
    return lambda name, param: name in names


def make_optimizer(hf, lr: float, weight_decay: float, b2: float, decayed):
    """AdamW with weight decay on the parameters `decayed(name, param)` picks (`decay_rule`)."""
    decay = [p for n, p in hf.named_parameters() if decayed(n, p)]
    rest = [p for n, p in hf.named_parameters() if not decayed(n, p)]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": rest, "weight_decay": 0.0}],
                             lr=lr, betas=(0.9, b2), eps=1e-6)


def contrastive_loss(zimg, ztxt, scale, labels=None, class_aware=False, combine="mean"):
    """`fungizsl.losses.contrastive_loss` in torch."""
    logits_i2t = scale * zimg @ ztxt.T
    logits_t2i = logits_i2t.T
    if class_aware:
        same = (labels[:, None] == labels[None, :]).float()
        targets = same / same.sum(-1, keepdim=True)
    else:
        targets = torch.eye(zimg.shape[0], dtype=zimg.dtype)
    l_image = -(targets * F.log_softmax(logits_i2t.float(), -1)).sum(-1).mean()
    l_text = -(targets * F.log_softmax(logits_t2i.float(), -1)).sum(-1).mean()
    return 0.5 * (l_image + l_text) if combine == "mean" else l_image + l_text


def to_torch_batch(batch: dict) -> dict:
    images = np.ascontiguousarray(np.asarray(batch["image"], np.float32).transpose(0, 3, 1, 2))
    return {"pixel_values": torch.from_numpy(images),
            "input_ids": torch.from_numpy(np.asarray(batch["input_ids"], np.int64)),
            "label": torch.from_numpy(np.asarray(batch["label"], np.int64))}


class TorchClipStep:
    """One training step (forward, loss, backward, clip, AdamW, clamp) of the HF model; `mode` is
    "eager" or "compile" (torch.compile of the forward+loss), `dtype` "float32" or "bfloat16"
    (CPU autocast). `hf` may be any module with CLIPModel's `forward(pixel_values, input_ids)`
    -> `.image_embeds`, `.text_embeds` (normalised) and `logit_scale`; `decayed` as in
    `make_optimizer`."""

    def __init__(self, hf, *, lr, weight_decay, b2, grad_clip_norm, class_aware, combine="mean",
                 dtype="float32", mode="eager", decayed=None):
        self.hf, self.class_aware, self.clip, self.combine = hf, class_aware, grad_clip_norm, combine
        if decayed is None:
            raise ValueError("TorchClipStep needs decayed=decay_rule(params): the trainer's weight-decay set")
        self.optimizer = make_optimizer(hf, lr, weight_decay, b2, decayed)
        self.dtype = dtype
        self.forward = torch.compile(self._loss) if mode == "compile" else self._loss

    def _autocast(self):
        if self.dtype == "bfloat16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _loss(self, pixel_values, input_ids, label):
        with self._autocast():
            out = self.hf(pixel_values=pixel_values, input_ids=input_ids)
        scale = self.hf.logit_scale.clamp(max=float(np.log(100.0))).exp()
        return contrastive_loss(out.image_embeds.float(), out.text_embeds.float(), scale, label, self.class_aware,
                                self.combine)

    def loss(self, batch) -> float:
        with torch.no_grad():
            return float(self._loss(**batch))

    def __call__(self, batch) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        loss = self.forward(**batch)
        loss.backward()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.hf.parameters(), self.clip)
        self.optimizer.step()
        with torch.no_grad():
            self.hf.logit_scale.clamp_(max=float(np.log(100.0)))
        return loss


def make_embed_images(hf, dtype="float32"):
    def embed(pixel_values):
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
        with torch.inference_mode(), ctx:
            return hf.get_image_features(pixel_values=pixel_values)
    return embed


