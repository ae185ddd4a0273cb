"""DINOv2 token extraction, JAX against PyTorch, in one process, on the same weights and images.

    python -m fungizsl.bench.dinov2_speed --variants=s,b --batch=16 --image_size=224 --rounds=7 \\
        --threads=0 --out=dinov2_speed.json

Every FungiCLEF user runs this step first (`fungizsl fungiclef features`), so this is what it
times: the JAX side is `fungiclef.features.embed_fn(module, "tokens")`, the jitted step feature
extraction runs (every token, float16 out), on a `weights.load_pretrained` module; the PyTorch side
is transformers' `Dinov2Model` (eager, SDPA attention, `inference_mode`, `last_hidden_state` cast
to float16). Both hold the same random weights: a `Dinov2Model` built from a `Dinov2Config` in code
(nothing is downloaded; its 1-D parameters - norms, biases, LayerScale - get noise so that a wrong
conversion cannot hide behind their initial values), saved and read back through our loader.

Method (as `python -m fungizsl.bench`): compile and first calls excluded, the two sides called in
alternating order round by round (`measure.timed_rounds`), every round checked for other
processes' CPU use and contended rounds left out of the ratio (`measure.clean_ratio`; no clean
round, no ratio); thread pools set on both sides (`--threads`: XLA through NPROC, torch intra-
and inter-op) and reported as counted. Reported per side: images/s of the fastest and the median
round (batch / time), CPU-seconds per image; speedup = torch time / JAX time (above 1: JAX is
faster), median of the clean rounds' ratios and fastest against fastest.

Before timing, the outputs are compared on the bench's own images: the float16 tokens JAX caches
and JAX's output before the cast against PyTorch's float32 `last_hidden_state`. A difference
above `TOLERANCE` (relative to the largest reference value, at least 1) stops the run.
`--dtype=bfloat16` runs our matmuls in bf16 and PyTorch under CPU autocast to bf16; the parity
check still compares with PyTorch in float32.
"""

import contextlib
import datetime
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np
import transformers
from absl import app, flags, logging

from fungizsl import weights
from fungizsl.bench import measure, runner, torch_clip
from fungizsl.fungiclef import features

# The published backbones' shapes (facebook/dinov2-small/base/large; patch 14); weights are
# random. "tiny" is for tests and smoke runs (patch 7: image sizes that are multiples of 7).
VARIANTS = {
    "tiny": {"hidden_size": 32, "num_attention_heads": 4, "num_hidden_layers": 2, "patch_size": 7},
    "s": {"hidden_size": 384, "num_attention_heads": 6, "num_hidden_layers": 12},
    "b": {"hidden_size": 768, "num_attention_heads": 12, "num_hidden_layers": 12},
    "l": {"hidden_size": 1024, "num_attention_heads": 16, "num_hidden_layers": 24},
}
# Largest |JAX - torch fp32| allowed, as a fraction of max(1, max |torch fp32|). float16's own
# rounding is 2^-11 (4.9e-4) of a value; fp32 compute adds far less; bf16 matmuls about 1e-2.
TOLERANCE = {"float32": 2e-3, "bfloat16": 6e-2}


class ParityError(AssertionError):
    """JAX's and PyTorch's tokens differ by more than the tolerance: the speed means nothing."""


def hf_config(variant: str, image_size: int) -> dict:
    return {"patch_size": 14, "mlp_ratio": 4, **VARIANTS[variant], "image_size": image_size}


def build_pair(config: dict, dtype: str = "float32", seed: int = 0):
    """(torch Dinov2Model, our module, params) holding the same random weights."""
    import torch


    torch.manual_seed(seed)
    hf = transformers.Dinov2Model(transformers.Dinov2Config(**config)).eval()
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in hf.parameters():
            if p.ndim <= 1:
                p.add_(0.1 * torch.randn(p.shape, generator=generator))
    with tempfile.TemporaryDirectory(prefix="fungizsl_dinov2_") as folder:
        hf.save_pretrained(folder)
        module, params = weights.load_pretrained(folder, dtype=dtype)
    return hf, module, jax.device_put(params)


def torch_tokens_fn(hf, dtype: str):
    """pixels (NCHW float32) -> float16 last_hidden_state, as the cache would store it."""
    import torch

    def run(pixels):
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            return hf(pixel_values=pixels).last_hidden_state.to(torch.float16)

    return run


def parity(module, params, embed, hf, images: np.ndarray, dtype: str) -> dict:
    """Max |difference| of JAX's cached tokens (float16) and of its output before the cast from
    PyTorch's float32 tokens on `images`; raises ParityError above the tolerance."""
    import torch

    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.inference_mode():
        ref = hf(pixel_values=pixels).last_hidden_state.float().numpy()
    cached = np.asarray(embed(params, images), np.float32)
    raw = jax.jit(lambda p, x: module.apply({"params": p}, x)["last_hidden_state"].astype(jnp.float32))
    before_cast = np.asarray(raw(params, images))
    scale = max(1.0, float(np.abs(ref).max()))
    out = {"reference": "torch float32 last_hidden_state", "max_abs_reference": float(np.abs(ref).max()),
           "max_abs_diff_cached_float16": float(np.abs(cached - ref).max()),
           "max_abs_diff_before_cast": float(np.abs(before_cast - ref).max()),
           "mean_abs_diff_cached_float16": float(np.abs(cached - ref).mean()),
           "tolerance": TOLERANCE[dtype] * scale, "tolerance_rule": f"{TOLERANCE[dtype]} x max(1, max |reference|)"}
    if dtype == "bfloat16":
        timed = torch_tokens_fn(hf, dtype)(pixels).float().numpy()
        out["max_abs_diff_torch_bfloat16_vs_float32"] = float(np.abs(timed - ref).max())
    if not out["max_abs_diff_cached_float16"] <= out["tolerance"]:
        raise ParityError(f"JAX and PyTorch DINOv2 tokens differ by {out['max_abs_diff_cached_float16']:.3g} "
                          f"(tolerance {out['tolerance']:.3g}): {out}")
    return out


def side_summary(t: dict, batch: int) -> dict:
    """images/s of the fastest and median round (clean rounds where any) and CPU-s per image."""
    h = t["clean"] or t
    return {"images_per_sec_fastest": batch / h["min_s"], "images_per_sec_median": batch / h["median_s"],
            "fastest_s": h["min_s"], "median_s": h["median_s"],
            "cpu_s_per_image": h["cpu_s_per_call_median"] / batch, "from_clean_rounds": t["clean"] is not None}


def run_variant(name: str, config: dict, batch: int, rounds: int, dtype: str = "float32", seed: int = 0,
                model=None) -> dict:
    """One variant at one batch: build (or reuse `model` = build_pair's triple), check parity,
    time both sides interleaved. Returns the record of one table row."""
    import torch


    hf, module, params = model or build_pair(config, dtype, seed)
    images = np.random.RandomState(seed).randn(batch, config["image_size"], config["image_size"], 3).astype(np.float32)
    embed = features.embed_fn(module, "tokens")
    placed = jax.device_put(images)
    start = time.perf_counter()
    measure.block(embed(params, placed))
    compile_s = time.perf_counter() - start
    check = parity(module, params, embed, hf, images, dtype)
    pixels = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    torch_run = torch_tokens_fn(hf, dtype)
    timing = measure.timed_rounds({"jax": lambda: measure.block(embed(params, placed)),
                                   "torch": lambda: torch_run(pixels)}, rounds)
    loads = [r["loadavg_before"][0] for r in timing["rounds"]] + [r["loadavg_after"][0] for r in timing["rounds"]]
    return {"variant": name, "hf_config": config, "batch": batch, "dtype": dtype,
            "tokens": int(module.config.grid ** 2 + 1 + module.config.num_registers),
            "params": int(sum(np.prod(x.shape) for x in jax.tree.leaves(params))), "jax_compile_s": compile_s,
            "parity": check, "jax": side_summary(timing["contenders"]["jax"], batch),
            "torch": side_summary(timing["contenders"]["torch"], batch),
            "speed_ratio": measure.clean_ratio(timing, "torch", "jax"),
            "loadavg_1m": [min(loads), max(loads)], "timing": timing}


def format_table(result: dict) -> str:
    th = result["threads"]
    lines = [(f"DINOv2 token extraction {result['date']}: {result['image_size']} px, {result['dtype']} compute, "
              f"{result['device']['device_kind']}, {result['device'].get('cores', '-')} cores"),
             (f"threads: XLA intra-op {th['xla_intra_op'] or '-'} (NPROC={th['NPROC']}), torch intra-op "
              f"{th.get('torch_intra_op')} inter-op {th.get('torch_inter_op')}"),
             ("JAX / torch columns: img/s = batch / round time (clean rounds where any), fastest/median; CPU ms "
              "per image JAX/torch; speedup = torch time / JAX time, median of clean rounds' ratios/fastest vs fastest"),
             (f"{'variant':<8} {'batch':>5} {'JAX img/s':>15} {'torch img/s':>15} {'CPU ms/img':>15} "
              f"{'JAX speedup':>14} {'clean':>6} {'load 1m':>11} {'max|diff|':>10}")]
    for run in result["runs"]:
        j, t = run["jax"], run["torch"]
        clean = f"{run['timing']['clean_rounds']}/{len(run['timing']['rounds'])}"
        ratio = run["speed_ratio"]
        ratio = "no clean round" if ratio["median"] is None else f"{ratio['median']:.2f}x/{ratio['fastest']:.2f}x"
        lines.append(f"{run['variant']:<8} {run['batch']:>5} "
                     f"{j['images_per_sec_fastest']:>7.1f}/{j['images_per_sec_median']:<7.1f} "
                     f"{t['images_per_sec_fastest']:>7.1f}/{t['images_per_sec_median']:<7.1f} "
                     f"{1e3 * j['cpu_s_per_image']:>7.1f}/{1e3 * t['cpu_s_per_image']:<7.1f} {ratio:>14} {clean:>6} "
                     f"{run['loadavg_1m'][0]:>5.2f}-{run['loadavg_1m'][1]:<5.2f} "
                     f"{run['parity']['max_abs_diff_cached_float16']:>10.2e}")
    lines.append("max|diff|: JAX's float16 tokens against PyTorch float32 "
                 f"(tolerance {TOLERANCE[result['dtype']]} x max(1, max|ref|)); per-round records in the JSON")
    for run in result["runs"]:
        lines.append(f"rounds {run['variant']} batch {run['batch']}:")
        lines += ["  " + line for line in runner.format_rounds(run["timing"])]
    return "\n".join(lines)


def run(variants, batches, image_size: int, rounds: int, dtype: str = "float32", threads: int = 0,
        configs: dict | None = None) -> dict:
    """The whole record. `configs` ({name: Dinov2Config kwargs}) replaces `variants` (tests)."""
    import torch


    threads = threads or len(measure.available_cores())
    torch_threads = torch_clip.set_threads(threads)
    configs = configs or {v: hf_config(v, image_size) for v in variants}
    runs = []
    for name, config in configs.items():
        model = build_pair(config, dtype)
        runs += [run_variant(name, config, batch, rounds, dtype, model=model) for batch in batches]
    return {"date": datetime.date.today().isoformat(), "device": runner.device_info(),
            "image_size": image_size, "dtype": dtype, "rounds": rounds, "jax_version": jax.__version__,
            "torch_version": torch.__version__, "transformers_version": transformers.__version__,
            "xla_flags": os.environ.get("XLA_FLAGS", ""), "threads": runner.threads_report(threads, torch_threads),
            "runs": runs}


def main(argv) -> None:

    del argv
    f = flags.FLAGS
    if not f["verbosity"].present:
        logging.set_verbosity(logging.WARNING)
    threads = f.threads or len(measure.available_cores())
    # XLA:CPU sizes its pools from NPROC when its backend starts (the first device use, below).
    os.environ["NPROC"] = str(threads)
    result = run(f.variants.split(","), [int(b) for b in f.batch.split(",")], f.image_size, f.rounds, f.dtype, threads)
    print(format_table(result))
    if f.out:
        os.makedirs(os.path.dirname(os.path.abspath(f.out)), exist_ok=True)
        with open(f.out, "w") as out:
            json.dump(result, out, indent=1)
        print(f"wrote {f.out}")


def define_flags() -> None:

    flags.DEFINE_string("variants", "s,b", f"comma list of {sorted(VARIANTS)} (DINOv2-S/B/L shapes, random weights)")
    flags.DEFINE_string("batch", "16", "comma list of batch sizes")
    flags.DEFINE_integer("image_size", 224, "pixels (a multiple of 14)")
    flags.DEFINE_integer("rounds", 5, "timed rounds (each calls both sides once)")
    flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype of both sides")
    flags.DEFINE_integer("threads", 0, "threads of every pool on both sides; 0: the cores this process may use")
    flags.DEFINE_string("out", None, "write the record as JSON here")


if __name__ == "__main__":

    define_flags()
    app.run(main)
