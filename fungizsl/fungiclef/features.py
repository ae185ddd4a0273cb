"""Frozen image-tower features for the FungiCLEF 2025 system of Lu et al. (stage 0: "we extract
DINOv2 features"), cached once as sharded array_record files.

    fungizsl fungiclef features --data-dir ~/tfds --dataset-config 300p --out runs/features \\
        --tower /ckpt/dinov2-large --image-size 224 --views identity,hflip

* Tower: `weights.load_pretrained(folder)` of a local facebook/dinov2-* folder (with or without
  registers). Without a folder the tower is a small ViT of the same code (`vit.VisionTransformer`,
  dinov2 flavour) trained briefly with cross-entropy on the *training* split's images; its
  records and `info.json` say "self-trained small ViT (not DINOv2)". Random or self-trained
  features are never called DINOv2.
* Output per image: `tokens` float16 [V, T, D] (V test-time views; T = CLS, registers and
  patches with `keep="tokens"`, or the pooled CLS with `keep="pooled"`), its observation id,
  category id, record index and metadata (every non-image field of the record, as JSON), in
  `{split}-{shard:05d}-of-{n:05d}.array_record` files of `shard_size` images.
* Sharding: each batch is split over the local devices (a ("data", "fsdp") mesh); several hosts
  take shards round-robin.
* Resumable: a shard is written to a temporary name and renamed when complete; shards already
  there are skipped, so a killed run continues where it stopped. `info.json` records the
  settings and a resume with different ones is refused.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import os
import sys
import tempfile
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from array_record.python.array_record_module import ArrayRecordReader, ArrayRecordWriter
from etils import epath
from flax import serialization
from PIL import Image
from tqdm import tqdm

from fungizsl import metrics_io, placement, weights
from fungizsl import workdir as workdir_lib
from fungizsl.data import augment as aug
from fungizsl.data import builders
from fungizsl.errors import ConfigError
from fungizsl.models import vit

INFO_FILE = "info.json"
SMALL_TOWER_FILE, SMALL_TOWER_INFO = "small_tower.msgpack", "small_tower.json"
SELF_TRAINED = "self-trained small ViT (not DINOv2)"
VIEWS = ("identity", "hflip", "vflip", "rot90", "rot180", "rot270", "crop")


@dataclasses.dataclass(frozen=True)
class FeatureConfig:
    tower: str = ""  # a local facebook/dinov2-* folder; "" trains a small ViT on the training split
    image_size: int = 64  # DINOv2: a multiple of 14 (224, 448, 518)
    keep: str = "tokens"  # "tokens" (CLS, registers, patches) | "pooled" (the CLS after the final norm)
    views: tuple[str, ...] = ("identity", "hflip")
    batch_size: int = 64
    shard_size: int = 256
    # the self-trained tower
    small_variant: str = "dinov2_tiny"
    small_patch: int = 8
    small_width: int = 96
    small_depth: int = 3
    small_heads: int = 4
    small_steps: int = 300
    small_batch: int = 64
    small_lr: float = 1e-3
    seed: int = 0  # training seed of the small tower (the data seed is the dataset's)

    def check(self):
        if self.keep not in ("tokens", "pooled"):
            raise ConfigError(f"features keep must be 'tokens' or 'pooled', got {self.keep!r}")
        unknown = [v for v in self.views if v not in VIEWS]
        if unknown or not self.views:
            raise ConfigError(f"features views {list(self.views)}: unknown {unknown}; known: {VIEWS}")


# -------------------------------------------------------------------------------------------------
# Views and images
# -------------------------------------------------------------------------------------------------

def view_image(image: np.ndarray, view: str, size: int) -> np.ndarray:
    """uint8 [H, W, 3] -> uint8 [size, size, 3] of one test-time view."""
    pil = Image.fromarray(np.asarray(image, np.uint8))
    if view == "crop":  # the central 85 %
        w, h = pil.size
        dw, dh = w * 0.075, h * 0.075
        pil = pil.crop((dw, dh, w - dw, h - dh))
    out = np.asarray(pil.resize((size, size), Image.BICUBIC))
    if view == "hflip":
        out = out[:, ::-1]
    elif view == "vflip":
        out = out[::-1]
    elif view.startswith("rot"):
        out = np.rot90(out, int(view[3:]) // 90)
    return np.ascontiguousarray(out)


def normalise(images: np.ndarray) -> np.ndarray:
    norm = aug.get_normalization("imagenet")
    return ((images.astype(np.float32) / 255.0 - np.asarray(norm.mean, np.float32)) /
            np.asarray(norm.std, np.float32))


def _metadata_json(record) -> bytes:
    out = {}
    for k, v in record.items():
        if k != "image":
            v = v.decode("utf-8") if isinstance(v, bytes) else v.item() if isinstance(v, np.generic) else v
            out[k] = None if isinstance(v, float) and math.isnan(v) else v
    return json.dumps(out).encode("utf-8")


# -------------------------------------------------------------------------------------------------
# Towers
# -------------------------------------------------------------------------------------------------

def small_tower_config(cfg: FeatureConfig):
    return vit.vit_config(cfg.small_variant, image_size=cfg.image_size, patch_size=cfg.small_patch,
                          width=cfg.small_width, depth=cfg.small_depth, heads=cfg.small_heads,
                          mlp_dim=4 * cfg.small_width)


def train_small_tower(source, cfg: FeatureConfig, show_progress: bool = True):
    """A small dinov2-flavour ViT trained with cross-entropy (linear head on the CLS) on the
    training split's images, random crop/flip/rotation/brightness. Returns (module, params)."""
    config = small_tower_config(cfg)
    tower = vit.VisionTransformer(config)
    n = len(source)
    images = np.stack([np.asarray(Image.fromarray(source[i]["image"]).resize((cfg.image_size,) * 2, Image.BICUBIC))
                       for i in range(n)])
    labels = np.asarray([int(source[i]["category_id"]) for i in range(n)])
    num_classes = int(labels.max()) + 1

    class WithHead(nn.Module):
        @nn.compact
        def __call__(self, x):
            out = vit.VisionTransformer(config, name="tower")(x)
            return nn.Dense(num_classes, name="head")(out["pooled"])

    model = WithHead()
    rng = jax.random.key(cfg.seed)
    params = model.init(rng, jnp.zeros((1, cfg.image_size, cfg.image_size, 3)))["params"]
    tx = optax.adamw(optax.warmup_cosine_decay_schedule(0, cfg.small_lr, max(1, cfg.small_steps // 10),
                                                        cfg.small_steps), weight_decay=0.05)
    opt_state = tx.init(params)

    @jax.jit
    def step(params, opt_state, x, y):
        def loss_of(p):
            logits = model.apply({"params": p}, x)
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), logits

        (loss, logits), grads = jax.value_and_grad(loss_of, has_aux=True)(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss, jnp.mean(jnp.argmax(logits, -1) == y)

    data_rng = np.random.default_rng([cfg.seed, 7])
    bar = tqdm(range(cfg.small_steps), desc=f"training the {SELF_TRAINED}", disable=not _tty(show_progress),
               mininterval=5)
    for s in bar:
        pick = data_rng.integers(0, n, cfg.small_batch)
        x = _augment(images[pick], data_rng)
        params, opt_state, loss, acc = step(params, opt_state, normalise(x), labels[pick])
        if s % 50 == 0 or s == cfg.small_steps - 1:
            bar.set_postfix(loss=f"{float(loss):.3f}", train_acc=f"{float(acc):.2f}")
            if show_progress and not _tty(True):  # one line per log step in logs
                print(f"{SELF_TRAINED}: step {s + 1}/{cfg.small_steps}, loss {float(loss):.3f}, "
                      f"batch accuracy {float(acc):.2f}", flush=True)
    return tower, jax.device_get(params["tower"]), float(loss)


def _tty(show_progress: bool) -> bool:
    return show_progress and sys.stderr.isatty()


def _augment(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    out = np.empty_like(x)
    size = x.shape[1]
    for i, img in enumerate(x):
        k = rng.integers(0, 4)
        img = np.rot90(img, k) if rng.uniform() < 0.3 else img
        if rng.uniform() < 0.5:
            img = img[:, ::-1]
        crop = int(size * rng.uniform(0.75, 1.0))
        y0, x0 = rng.integers(0, size - crop + 1, 2)
        img = np.asarray(Image.fromarray(np.ascontiguousarray(img[y0:y0 + crop, x0:x0 + crop])).resize(
            (size, size), Image.BILINEAR), np.float32)
        out[i] = np.clip(img * rng.uniform(0.8, 1.2), 0, 255)
    return out


def _save_params(path: epath.Path, params) -> None:
    workdir_lib.write_bytes(path, serialization.msgpack_serialize(jax.tree.map(np.asarray, params)))


def _load_params(path: epath.Path):
    return serialization.msgpack_restore(path.read_bytes())


def get_tower(cfg: FeatureConfig, out: epath.Path, train_source, show_progress: bool = True):
    """(module, params, description) of the tower; the self-trained one is saved under `out` so
    a resumed run uses the very same weights."""
    if cfg.tower:
        if not epath.Path(cfg.tower).is_dir():
            raise ConfigError(f"features tower {cfg.tower!r} is not a local folder (config.json + model.safetensors)")
        module, params = weights.load_pretrained(cfg.tower)
        if not (isinstance(module, vit.VisionTransformer) and module.config.flavour == "dinov2"):
            raise ConfigError(f"features tower {cfg.tower}: expected a DINOv2 checkpoint (model_type dinov2 or "
                              f"dinov2_with_registers), got {type(module).__name__}")
        if cfg.image_size % module.config.patch_size:
            raise ConfigError(f"features image_size {cfg.image_size} is not a multiple of the tower's patch size "
                              f"{module.config.patch_size}")
        regs = module.config.num_registers
        return module, params, (f"DINOv2 from {cfg.tower} (width {module.config.width}, "
                                f"{regs} registers)" if regs else f"DINOv2 from {cfg.tower} (width {module.config.width})")
    path = out / SMALL_TOWER_FILE
    module = vit.VisionTransformer(small_tower_config(cfg))
    if path.exists():
        params = _load_params(path)
        loss = json.loads((out / SMALL_TOWER_INFO).read_text())["final_train_loss"]
    else:
        start = time.perf_counter()
        _, params, loss = train_small_tower(train_source, cfg, show_progress)
        if workdir_lib.is_main():
            _save_params(path, params)
            metrics_io.write_json(out / SMALL_TOWER_INFO, digits=0, metrics={
                "description": SELF_TRAINED, "steps": cfg.small_steps, "final_train_loss": loss,
                "seconds": round(time.perf_counter() - start, 1), "trained_on": "train split images only"})
    c = module.config
    return module, params, (f"{SELF_TRAINED}: width {c.width}, depth {c.depth}, patch {c.patch_size}, "
                            f"{cfg.small_steps} steps of cross-entropy on the training images (loss {loss:.3f})")


# -------------------------------------------------------------------------------------------------
# Shards
# -------------------------------------------------------------------------------------------------

def encode_record(tokens, observation_id, category_id, index, metadata: bytes) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, tokens=np.asarray(tokens, np.float16), observation_id=np.int64(observation_id),
             category_id=np.int64(category_id), index=np.int64(index),
             metadata=np.frombuffer(metadata, np.uint8))
    return buffer.getvalue()


def decode_record(data: bytes) -> dict:
    with np.load(io.BytesIO(data)) as z:
        return {"tokens": z["tokens"], "observation_id": int(z["observation_id"]),
                "category_id": int(z["category_id"]), "index": int(z["index"]),
                "metadata": json.loads(z["metadata"].tobytes().decode("utf-8"))}


def shard_name(split: str, shard: int, num_shards: int) -> str:
    return f"{split}-{shard:05d}-of-{num_shards:05d}.array_record"


def _write_shard(path: epath.Path, records: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "shard.array_record")
        writer = ArrayRecordWriter(local, "group_size:1")
        for r in records:
            writer.write(r)
        writer.close()
        data = open(local, "rb").read()
    partial = path.parent / (path.name + ".partial")
    partial.write_bytes(data)
    partial.rename(path)  # complete shards only ever appear under their final name


def iter_shard(path, chunk: int = 64):
    """A shard's decoded records in order, read `chunk` at a time (a shard of DINOv2 tokens is about
    0.8 GB: never held whole); a remote shard is copied to a local temporary file first."""
    path = epath.Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        local = os.fspath(path)
        if not workdir_lib.is_local(path):
            local = os.path.join(tmp, "shard.array_record")
            with open(local, "wb") as f:
                f.write(path.read_bytes())
        reader = ArrayRecordReader(local)
        try:
            n = reader.num_records()
            for start in range(0, n, chunk):
                for raw in reader.read(list(range(start, min(n, start + chunk)))):
                    yield decode_record(raw)
        finally:
            reader.close()


def _info(cfg: FeatureConfig, description: str, is_dinov2: bool, num_registers: int, sizes: dict) -> dict:
    return {"tower": description, "is_dinov2": is_dinov2, "num_registers": num_registers,
            "settings": dataclasses.asdict(cfg),
            "splits": {s: {"num_images": n, "num_shards": max(1, math.ceil(n / cfg.shard_size))}
                       for s, n in sizes.items()}}


def embed_fn(module, keep: str):
    """jitted (params, images) -> the cached features, float16: every token ("tokens") or the
    pooled CLS as one token ("pooled"). The step `extract` runs (and `fungizsl.bench.plan` compiles)."""

    @jax.jit
    def embed(p, x):
        out = module.apply({"params": p}, x)
        return (out["last_hidden_state"] if keep == "tokens" else out["pooled"][:, None]).astype(jnp.float16)

    return embed


def extract(sources: dict, out_dir, cfg: FeatureConfig = FeatureConfig(), show_progress: bool = True,
            stop_after_shards: int | None = None) -> dict:
    """Writes the feature shards of `sources` ({split: random-access source of records with
    "image", "observationID", "category_id"}) under `out_dir`; returns info.json's content.
    `stop_after_shards` stops after writing that many new shards (tests of resumption)."""
    cfg.check()
    out = workdir_lib.as_path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sizes = {s: len(src) for s, src in sources.items()}
    settings = dataclasses.asdict(cfg)
    info_path = out / INFO_FILE
    if info_path.exists():
        old = json.loads(info_path.read_text())
        old_settings = {k: (tuple(v) if isinstance(v, list) else v) for k, v in old["settings"].items()}
        if old_settings != settings or {s: v["num_images"] for s, v in old["splits"].items()} != sizes:
            raise ConfigError(f"{out} holds features made with other settings or data ({old['settings']}, "
                              f"{old['splits']}); use another output folder or delete it")
    if "train" not in sources and not cfg.tower and not (out / SMALL_TOWER_FILE).exists():
        raise ConfigError("the self-trained tower needs the 'train' split (or its weights in the output folder, "
                          "see `extract_like`)")
    module, params, description = get_tower(cfg, out, sources.get("train"), show_progress)
    info = _info(cfg, description, bool(cfg.tower), int(module.config.num_registers), sizes)
    if workdir_lib.is_main():
        metrics_io.write_json(info_path, info, digits=0)

    devices = jax.local_devices()
    mesh = placement.make_mesh(data=len(devices), fsdp=1, devices=devices)  # this host's devices
    batch = math.ceil(cfg.batch_size / mesh.size) * mesh.size
    params = jax.device_put(params, placement.replicated(mesh))
    embed = embed_fn(module, cfg.keep)

    written = 0
    for split, source in sources.items():
        num_shards = info["splits"][split]["num_shards"]
        todo = [s for s in range(num_shards) if s % jax.process_count() == jax.process_index()
                and not (out / shard_name(split, s, num_shards)).exists()]
        if not todo:
            continue
        images_done, seconds = 0, 0.0
        bar = tqdm(total=sum(min(sizes[split], (s + 1) * cfg.shard_size) - s * cfg.shard_size for s in todo), desc=f"features {split}", unit="img",
                   disable=not _tty(show_progress), mininterval=5)
        for s in todo:
            lo, hi = s * cfg.shard_size, min(sizes[split], (s + 1) * cfg.shard_size)
            records = [source[i] for i in range(lo, hi)]
            start = time.perf_counter()
            views = np.stack([np.stack([view_image(r["image"], v, cfg.image_size) for v in cfg.views])
                              for r in records])  # [n, V, S, S, 3]
            flat = normalise(views.reshape((-1,) + views.shape[2:]))
            outs = []
            for b0 in range(0, len(flat), batch):
                chunk = flat[b0:b0 + batch]
                pad = batch - len(chunk)
                chunk = np.concatenate([chunk, np.zeros((pad,) + chunk.shape[1:], chunk.dtype)])
                placed = jax.device_put(chunk, placement.batch_sharding(mesh))
                outs.append(np.asarray(embed(params, placed))[:batch - pad])
            tokens = np.concatenate(outs).reshape((len(records), len(cfg.views)) + outs[0].shape[1:])
            seconds += time.perf_counter() - start
            images_done += len(records)
            _write_shard(out / shard_name(split, s, num_shards), [
                encode_record(t, r["observationID"], r["category_id"], lo + j, _metadata_json(r))
                for j, (t, r) in enumerate(zip(tokens, records))])
            bar.update(len(records))
            bar.set_postfix(img_per_s=f"{images_done / max(seconds, 1e-9):.0f}")
            written += 1
            if stop_after_shards is not None and written >= stop_after_shards:
                bar.close()
                return info
        bar.close()
        if show_progress:
            print(f"features {split}: {images_done} images x {len(cfg.views)} views, "
                  f"{images_done * len(cfg.views) / max(seconds, 1e-9):.0f} views/s ({description})", flush=True)
    workdir_lib.barrier("fungiclef_features_done")
    return info


def settings_of(cache_dir) -> FeatureConfig:
    """The `FeatureConfig` an existing cache was made with (its info.json)."""
    info = json.loads((workdir_lib.as_path(cache_dir) / INFO_FILE).read_text())
    return FeatureConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in info["settings"].items()})


def extract_like(cache_dir, sources: dict, out_dir, show_progress: bool = True) -> dict:
    """Features of `sources` made exactly as the cache `cache_dir` made its own: the same settings
    and, for a self-trained tower, the same weights (copied from it, never trained again).
    Returns the new cache's info.json content."""
    cache, out = workdir_lib.as_path(cache_dir), workdir_lib.as_path(out_dir)
    if not (cache / INFO_FILE).exists():
        raise ConfigError(f"{cache} is not a feature cache (no {INFO_FILE})")
    cfg = settings_of(cache)
    if not cfg.tower:
        if not (cache / SMALL_TOWER_FILE).exists():
            raise ConfigError(f"feature cache {cache} has no {SMALL_TOWER_FILE}: the self-trained tower that made "
                              f"it is lost, so new images cannot be given the same features")
        out.mkdir(parents=True, exist_ok=True)
        for name in (SMALL_TOWER_FILE, SMALL_TOWER_INFO):
            (out / name).write_bytes((cache / name).read_bytes())
    return extract(sources, out, cfg, show_progress)


def is_complete(out_dir) -> bool:
    out = workdir_lib.as_path(out_dir)
    if not (out / INFO_FILE).exists():
        return False
    info = json.loads((out / INFO_FILE).read_text())
    return all((out / shard_name(s, i, v["num_shards"])).exists()
               for s, v in info["splits"].items() for i in range(v["num_shards"]))


def load_split(out_dir, split: str) -> dict:
    """Every image of `split`, in record order: tokens float16 [N, V, T, D], observation_id,
    category_id, index [N], metadata (list of dicts)."""
    out = workdir_lib.as_path(out_dir)
    info = json.loads((out / INFO_FILE).read_text())
    if split not in info["splits"]:
        raise ConfigError(f"{out} has no features of split {split!r} (has {sorted(info['splits'])})")
    num_shards = info["splits"][split]["num_shards"]
    num_images = int(info["splits"][split]["num_images"])
    # One array for the split, filled shard by shard: the peak is the split plus one shard, not
    # twice the split (a list of every record's tokens, then a stacked copy).
    tokens = None
    ids, categories, indices, metadata = [], [], [], []
    for s in range(num_shards):
        path = out / shard_name(split, s, num_shards)
        if not path.exists():
            raise ConfigError(f"{path} is missing: the feature extraction did not finish; run it again (it resumes)")
        for r in iter_shard(path):
            row = len(ids)
            if row >= num_images:
                raise ConfigError(f"{path} holds more images than {INFO_FILE} says split {split!r} has ({num_images})")
            if tokens is None:
                tokens = np.empty((num_images,) + r["tokens"].shape, r["tokens"].dtype)
            tokens[row] = r["tokens"]
            ids.append(r["observation_id"])
            categories.append(r["category_id"])
            indices.append(r["index"])
            metadata.append(r["metadata"])
    if len(ids) != num_images:
        raise ConfigError(f"{out} split {split!r}: {INFO_FILE} says {num_images} images, its shards hold {len(ids)}")
    return {"tokens": tokens,
            "observation_id": np.asarray(ids, np.int64),
            "category_id": np.asarray(categories, np.int64),
            "index": np.asarray(indices, np.int64),
            "metadata": metadata, "tower": info["tower"], "is_dinov2": info["is_dinov2"],
            "num_registers": int(info.get("num_registers", 0))}


# -------------------------------------------------------------------------------------------------
# Command line
# -------------------------------------------------------------------------------------------------

def register_cli(subparsers) -> None:
    p = subparsers.add_parser("features", help="cache image-tower token features of a built fungiclef2025 dataset")
    p.add_argument("--data-dir", required=True, help="TFDS data dir holding fungiclef2025/<config>")
    p.add_argument("--dataset-config", default="300p", help="the fungiclef2025 config that was built (default 300p)")
    p.add_argument("--splits", default="train,val,test")
    p.add_argument("--out", required=True, help="output folder (resumes if it holds a partial run)")
    p.add_argument("--tower", default="", help="local facebook/dinov2-* folder; empty: self-trained small ViT")
    p.add_argument("--image-size", type=int, default=FeatureConfig.image_size)
    p.add_argument("--keep", default="tokens", choices=("tokens", "pooled"))
    p.add_argument("--views", default=",".join(FeatureConfig.views), help=f"test-time views, from {VIEWS}")
    p.add_argument("--batch-size", type=int, default=FeatureConfig.batch_size)
    p.add_argument("--shard-size", type=int, default=FeatureConfig.shard_size)
    p.add_argument("--small-steps", type=int, default=FeatureConfig.small_steps)
    p.add_argument("--seed", type=int, default=0, help="training seed of the self-trained tower")
    p.set_defaults(func=_run_cli)


def sources_from_tfds(data_dir, dataset_config: str, splits) -> dict:
    return {s: builders.data_source("fungiclef2025", s, dataset_config, data_dir=data_dir) for s in splits}


def _run_cli(args: argparse.Namespace) -> int:
    cfg = FeatureConfig(tower=args.tower, image_size=args.image_size, keep=args.keep,
                        views=tuple(v for v in args.views.split(",") if v), batch_size=args.batch_size,
                        shard_size=args.shard_size, small_steps=args.small_steps, seed=args.seed)
    sources = sources_from_tfds(args.data_dir, args.dataset_config, [s for s in args.splits.split(",") if s])
    start = time.perf_counter()
    info = extract(sources, args.out, cfg)
    print(f"features in {args.out} ({time.perf_counter() - start:.0f} s): {info['tower']}; "
          + ", ".join(f"{s} {v['num_images']} images" for s, v in info["splits"].items()))
    return 0
