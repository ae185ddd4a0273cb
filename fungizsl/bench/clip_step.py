"""The JAX side of the benchmark: the FungalZSL train step exactly as the trainer compiles it.

Model, loss, optimizer and step come from the trainer's own functions (`fungalzsl.model.clip_model`
for the architecture, every tower and override included; `fungalzsl.make_loss_fn`; `core.build`:
the same optimizer, sharding rules, donation and NaN guard), built from an experiment config;
only the batch is synthetic (random normalised images, random token ids with one end-of-text per
row, three classes), so the benchmark needs no data on disk and no tokenizer training.
"""

import dataclasses
import time
import types

import jax
import numpy as np

from fungizsl import placement, xla_options
from fungizsl.bench import measure
from fungizsl.fungalzsl import model as model_lib
from fungizsl.fungalzsl import trainer
from fungizsl.models import two_towers
from fungizsl.train import core


@dataclasses.dataclass
class ClipBench:
    """Everything one measurement needs, for one (config, batch, dtype)."""

    config: object
    model: two_towers.ClipModel
    params: dict  # host (numpy) initial params, shared with the torch reference
    trainable: core.Trainable
    mesh: object
    batch_size: int
    extra: dict = dataclasses.field(default_factory=dict)  # a conv tower's batch_stats (host)

    @property
    def image_size(self) -> int:
        return self.model.config.vision.image_size

    @property
    def state_sharding(self):
        return self.trainable.state_sharding

    @property
    def variables(self) -> dict:
        return {"params": self.params, **self.extra}

    @property
    def vit_tower(self) -> bool:
        """A ViT image tower: the only kind transformers' CLIPModel (the torch reference) has."""
        c = self.model.config
        return not (two_towers.is_convnet(c) or two_towers.is_resnet(c))


def _model(config, dtype: str, image_size: int | None) -> two_towers.ClipModel:
    """The from-scratch model the trainer builds (`fungalzsl.model.clip_model`: the tower of every
    arch, cnn_tiny and rn_tiny included, with the config's overrides), the text tower sized to the
    config's vocabulary and context (the trainer takes them from the BPE it trains, at most those
    sizes)."""
    m = config.model
    if image_size:
        config = config.copy_and_resolve_references()
        config.data.image_size = image_size
    vocab = int(m.vocab_size)
    tokenizer = types.SimpleNamespace(vocab_size=vocab, eot_id=vocab - 1, context_length=int(m.text_context))
    return model_lib.clip_model(config, tokenizer, dtype=dtype, scan=m.scan, remat=m.remat)


def build(config, batch_size: int, dtype: str, image_size: int | None = None, mesh=None,
          params=None) -> ClipBench:
    """The trainer's Trainable (fungizsl.train.core.build) for the FungalZSL task's loss."""
    model = _model(config, dtype, image_size)
    extra = {}
    if params is None:
        # One compiled init, not one small compile per initialiser op (eager init took seconds).
        variables = dict(jax.device_get(jax.jit(trainer.init_fn(model))(jax.random.key(config.seed))))
        params = variables.pop("params")
        extra = variables
    task = core.Task(name="fungalzsl_bench", init_variables=trainer.init_fn(model),
                     loss_fn=trainer.make_loss_fn(model, config.loss.class_aware, config.loss.get("combine", "mean")),
                     train_iterator=None, evaluate=lambda *a: {}, post_update=trainer.clamp_logit_scale)
    mesh = mesh or placement.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
    return ClipBench(config, model, params, core.build(config, task, mesh), mesh, batch_size, extra)


def synthetic_batch(bench: ClipBench, seed: int = 0) -> dict:
    """Host numpy batch shaped like the pipeline's: image [B,H,W,3] f32, input_ids [B,T] i32, label [B]."""
    rng = np.random.RandomState(seed)
    text = bench.model.config.text
    size = bench.image_size
    ids = rng.randint(0, text.eot_token_id, (bench.batch_size, text.context_length)).astype(np.int32)
    ends = rng.randint(1, text.context_length, bench.batch_size)
    for row, end in enumerate(ends):
        ids[row, end:] = text.eot_token_id  # Hugging Face padding: end-of-text repeated
    return {"image": rng.randn(bench.batch_size, size, size, 3).astype(np.float32),
            "input_ids": ids,
            "label": rng.randint(0, 3, bench.batch_size).astype(np.int32)}


def place_batch(bench: ClipBench, batch: dict):
    return placement.shard_batch(batch, bench.mesh)


def new_state(bench: ClipBench):
    return bench.trainable.place_variables(bench.variables)


def train_step_fn(bench: ClipBench):
    """The trainer core's jitted step (its shardings, donation, NaN guard, optimizer)."""
    return bench.trainable.train_step


def loss_and_grad_fn(bench: ClipBench):
    """The loss and its gradient only (no optimizer): the model-FLOP part of the step."""
    loss_fn = trainer.make_loss_fn(bench.model, bench.config.loss.class_aware,
                                   bench.config.loss.get("combine", "mean"))
    extra = jax.device_put(bench.extra)
    return jax.jit(jax.value_and_grad(lambda params, batch: loss_fn(params, extra, batch, None)[0]))


def embed_images_fn(bench: ClipBench):
    """(params, images) -> image embeddings; a conv tower normalises with its running statistics."""
    extra = jax.device_put(bench.extra)
    return xla_options.jit(lambda p, images: bench.model.apply({"params": p, **extra}, images, method="encode_image"))


def param_count(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))


def compiled_step(bench, batch_np):
    """(step(): one blocking train step on a fixed placed batch, the compiled step, compile
    seconds, the placed batch), starting from a fresh state."""
    state = new_state(bench)
    placed = place_batch(bench, batch_np)
    start = time.perf_counter()
    compiled = train_step_fn(bench).lower(state, placed).compile()
    compile_s = time.perf_counter() - start
    box = [state]

    def step():
        box[0], metrics = compiled(box[0], placed)
        measure.block(metrics)
        return box[0]

    return step, compiled, compile_s, placed
