"""The JAX side of the benchmark: the FungalZSL train step exactly as the trainer compiles it.

Model, optimizer and step come from the trainer's own functions (`make_train_step`,
`optim.make_optimizer`, the same sharding rules and donation), built from an experiment config;
only the batch is synthetic (random normalised images, random token ids with one end-of-text per
row, three classes), so the benchmark needs no data on disk and no tokenizer training.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from fungizsl import weights
from fungizsl.models import two_towers
from fungizsl.train import fungalzsl as trainer
from fungizsl.train import optim, sharding


@dataclasses.dataclass
class ClipBench:
    """Everything one measurement needs, for one (config, batch, dtype)."""

    config: object
    model: two_towers.ClipModel
    params: dict  # host (numpy) initial params, shared with the torch reference
    optimizer: object
    schedule: object
    mesh: object
    state_sharding: object
    batch_size: int

    @property
    def image_size(self) -> int:
        return self.model.config.vision.image_size


def clip_model_config(config, dtype: str, image_size: int | None = None) -> two_towers.ClipConfig:
    """The from-scratch architecture the trainer builds (vocabulary and context from the config;
    the trainer takes them from the BPE it trains, at most those sizes)."""
    m = config.model
    clip = two_towers.clip_config(m.arch, dtype=dtype, scan=m.scan, remat=m.remat)
    vocab = int(m.vocab_size)
    return dataclasses.replace(
        clip,
        vision=dataclasses.replace(clip.vision, image_size=image_size or config.data.image_size,
                                   patch_size=m.get("patch_size") or clip.vision.patch_size),
        text=dataclasses.replace(clip.text, vocab_size=vocab, eot_token_id=vocab - 1,
                                 context_length=int(m.text_context)))


def build(config, batch_size: int, dtype: str, image_size: int | None = None, mesh=None,
          params=None) -> ClipBench:
    model = two_towers.ClipModel(clip_model_config(config, dtype, image_size))
    if params is None:
        params = jax.device_get(model.init(jax.random.key(config.seed),
                                           *weights.clip.dummy_inputs(model.config))["params"])
    optimizer, schedule = optim.make_optimizer(
        params, learning_rate=config.lr, total_steps=config.total_steps, warmup_steps=config.warmup_steps,
        weight_decay=config.wd, b2=config.optim.b2, grad_clip_norm=config.optim.grad_clip_norm,
        frozen=tuple(config.optim.frozen), layer_decay=config.optim.layer_decay)
    mesh = mesh or sharding.make_mesh(data=config.mesh.data, fsdp=config.mesh.fsdp)
    abstract = jax.eval_shape(lambda p: init_state(optimizer, p), params)
    rules = tuple(tuple(r) for r in config.sharding_rules)
    state_sharding = (sharding.fsdp_sharding(abstract, mesh, rules) if rules
                      else jax.tree.map(lambda _: sharding.replicated(mesh), abstract))
    return ClipBench(config, model, params, optimizer, schedule, mesh, state_sharding, batch_size)


def init_state(optimizer, params):
    return {"step": jnp.zeros((), jnp.int32), "params": params, "opt_state": optimizer.init(params)}


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
    return sharding.shard_batch(batch, bench.mesh)


def new_state(bench: ClipBench):
    return jax.jit(lambda p: init_state(bench.optimizer, p), out_shardings=bench.state_sharding)(bench.params)


def train_step_fn(bench: ClipBench):
    """jit of the trainer's step with the trainer's shardings and donation."""
    return jax.jit(trainer.make_train_step(bench.model, bench.optimizer, bench.schedule,
                                           bench.config.loss.class_aware),
                   in_shardings=(bench.state_sharding, sharding.batch_sharding(bench.mesh)),
                   out_shardings=(bench.state_sharding, sharding.replicated(bench.mesh)), donate_argnums=0)


def loss_and_grad_fn(bench: ClipBench):
    """The loss and its gradient only (no optimizer): the model-FLOP part of the step."""
    encode = trainer._encode(bench.model)
    from fungizsl import losses

    def loss_fn(params, batch):
        zimg, ztxt = encode(params, batch["image"], batch["input_ids"])
        scale = jnp.exp(jnp.minimum(params["logit_scale"], two_towers.MAX_LOGIT_SCALE))
        return losses.contrastive_loss(zimg, ztxt, scale, labels=batch["label"],
                                       class_aware=bench.config.loss.class_aware)[0]

    return jax.jit(jax.value_and_grad(loss_fn))


def embed_images_fn(bench: ClipBench):
    return jax.jit(lambda p, images: bench.model.apply({"params": p}, images, method="encode_image"))


def param_count(params) -> int:
    return int(sum(np.size(x) for x in jax.tree.leaves(params)))
