"""The FungalZSL CLIP model and its tokenizer, built from a config's ``model.init``.

``config.model.init`` says where a run starts:

* ``"scratch"``: a byte-level BPE trained on the run's own captions (written to
  ``<workdir>/tokenizer``) and a freshly initialised :class:`~fungizsl.models.two_towers.ClipModel`
  of ``config.model.arch``, with the image tower at the data's resolution (:func:`tower_config`);
* a Hugging Face CLIP folder (``config.json``, :func:`fungizsl.weights.is_hf_folder`): its
  architecture, weights and tokenizer;
* an open_clip folder (``open_clip_config.json``): likewise, through :mod:`fungizsl.weights.open_clip`;
* an earlier fungizsl run, or one of its step folders: the run's tokenizer and architecture, with
  the weights of that checkpoint (for a run folder, the step its ``summary.json`` selected on val,
  :func:`fungizsl.runs.selected_step_folder`; the newest where it has no summary).

Only a from-scratch run that has no tokenizer yet trains one: the caption corpus is asked for
(``corpus``, a callable) then, by process 0, and never when the init brings its tokenizer.

The trainer (:mod:`fungizsl.fungalzsl.trainer`) and the evaluation-only loader
(:mod:`fungizsl.fungalzsl.load`) both build the from-scratch architecture through
:func:`clip_model`, so a run and its reload can never disagree on the tower.
"""

from __future__ import annotations

import dataclasses
import hashlib
import tempfile

import jax
from etils import epath

from fungizsl import runs, tokenizers, weights
from fungizsl import workdir as workdir_lib
from fungizsl.errors import ConfigError
from fungizsl.models import convnet, resnet, two_towers
from fungizsl.train import checkpoint
from fungizsl.weights.convert import stack_layers


def is_hf_init(init: str) -> bool:
    """``model.init`` names a Hugging Face folder (never the literal ``"scratch"``)."""
    return init != "scratch" and weights.is_hf_folder(init)


def is_open_clip_init(init: str) -> bool:
    """``model.init`` names an open_clip folder (never the literal ``"scratch"``)."""
    return init != "scratch" and weights.open_clip.is_open_clip_checkpoint(init)


def folder_with_tokenizer(path: epath.Path) -> epath.Path | None:
    """The first of ``path`` and its parents that holds a ``tokenizer/`` folder: the workdir of a
    fungizsl run given it or a folder inside it (a checkpoint step)."""
    return next((p for p in (path, *path.parents) if (p / "tokenizer").is_dir()), None)


def _run_dir(path) -> epath.Path:
    """The workdir of an earlier run, given it or a folder inside it (a checkpoint step)."""
    path = workdir_lib.as_path(path)
    found = folder_with_tokenizer(path)
    if found is None:
        raise FileNotFoundError(f"config.model.init={str(path)!r}: no fungizsl run (with a tokenizer folder) there")
    return found


INIT_KINDS = ("scratch, a Hugging Face CLIP folder (config.json), an open_clip folder (open_clip_config.json) "
              "or a fungizsl run (a workdir with tokenizer/, or one of its checkpoint step folders)")


def check_init(init: str) -> None:
    """Before any work: a :class:`ConfigError` naming ``config.model.init`` unless it is
    ``"scratch"`` or a folder of a kind :func:`build_model` starts from."""
    if init == "scratch":
        return
    if not epath.Path(init).is_dir():
        raise ConfigError(f"config.model.init={init}: no such folder; init= is {INIT_KINDS}")
    if not (is_hf_init(init) or is_open_clip_init(init) or folder_with_tokenizer(workdir_lib.as_path(init))):
        raise ConfigError(f"config.model.init={init} is not a model folder; init= is {INIT_KINDS}")


def make_tokenizer(config, corpus, workdir: epath.Path):
    """(tokenizer, folder it lives in). From scratch, process 0 trains the BPE on ``corpus()`` (the
    training captions; called only then) and writes it into the workdir; the others wait and read
    that same file. An init folder or run brings its tokenizer, and ``corpus`` is never called."""
    init, m = config.model.init, config.model
    if is_hf_init(init):
        return tokenizers.load_tokenizer(init), epath.Path(init)
    if is_open_clip_init(init):  # its own tokenizer files, else CLIP's BPE (same on every process)
        local = tempfile.mkdtemp(prefix="open_clip_bpe_")
        tokenizer, folder = weights.open_clip.load_open_clip_tokenizer(init, local)
        return tokenizer, epath.Path(folder)
    folder = workdir / "tokenizer" if init == "scratch" else _run_dir(init) / "tokenizer"
    exists = (folder / "tokenizer.json").exists()
    workdir_lib.barrier("tokenizer_checked")  # every process has looked before anyone writes
    if not exists:
        if init != "scratch":
            raise FileNotFoundError(f"{folder} is missing: config.model.init={init!r} is not a fungizsl run")
        if workdir_lib.is_main():
            with tempfile.TemporaryDirectory() as local:
                tokenizers.train_bpe_tokenizer(corpus(), m.vocab_size, local, context_length=m.text_context)
                workdir_lib.upload_dir(local, folder)
        workdir_lib.barrier("tokenizer_written")
    local = workdir_lib.local_dir(folder)
    tokenizer = tokenizers.load_tokenizer(local, length=m.text_context)
    digest = hashlib.sha256((epath.Path(local) / "tokenizer.json").read_bytes()).hexdigest()[:16]
    print(f"process {jax.process_index()}: tokenizer {folder} sha256 {digest}", flush=True)
    return tokenizer, folder


def tower_config(config, vision):
    """The architecture's image tower at the data's resolution, with the from-scratch overrides."""
    m = config.model
    if isinstance(vision, resnet.ResNetConfig):
        width = m.get("resnet_width") or vision.width
        return dataclasses.replace(vision, image_size=config.data.image_size, width=width,
                                   heads=vision.heads if width == vision.width else max(1, width * 32 // 64),
                                   layers=tuple(m.get("resnet_layers") or vision.layers),
                                   frozen_batch_norm=m.get("freeze_bn_stats", False))
    if isinstance(vision, convnet.ConvNetConfig):
        return dataclasses.replace(vision, image_size=config.data.image_size,
                                   widths=tuple(m.get("convnet_widths") or vision.widths),
                                   standardize_input=m.get("standardize_input", vision.standardize_input),
                                   frozen_batch_norm=m.get("freeze_bn_stats", False))
    return dataclasses.replace(vision, image_size=config.data.image_size,
                               patch_size=m.get("patch_size") or vision.patch_size)


def clip_model(config, tokenizer, **options) -> two_towers.ClipModel:
    """The from-scratch architecture of ``config.model.arch``: its image tower by
    :func:`tower_config`, its text tower sized to ``tokenizer``. ``options`` (dtype, scan, remat)
    go to :func:`fungizsl.models.two_towers.clip_config`."""
    clip = two_towers.clip_config(config.model.arch, **options)
    clip = dataclasses.replace(
        clip, vision=tower_config(config, clip.vision),
        text=dataclasses.replace(clip.text, vocab_size=tokenizer.vocab_size, eot_token_id=tokenizer.eot_id,
                                 context_length=tokenizer.context_length))
    return two_towers.ClipModel(clip)


def build_model(config, tokenizer):
    """(module, host variables or None): {"params": ...} plus "batch_stats" for a conv tower;
    None for a fresh init."""
    init, m = config.model.init, config.model
    if is_hf_init(init):
        model, params = weights.load_pretrained(init, dtype=m.dtype, scan=m.scan, remat=m.remat)
        return model, {"params": params}
    if is_open_clip_init(init):
        return weights.open_clip.load_open_clip(init, dtype=m.dtype, scan=m.scan, remat=m.remat,
                                                frozen_batch_norm=m.get("freeze_bn_stats", False))
    model = clip_model(config, tokenizer, dtype=m.dtype, scan=m.scan, remat=m.remat)
    variables = None if init == "scratch" else checkpoint.load_variables(runs.selected_step_folder(init))
    if variables is not None and m.scan and "layers" not in variables["params"]["vision_model"]["encoder"]:
        variables["params"] = stack_layers(variables["params"])
    return model, variables
