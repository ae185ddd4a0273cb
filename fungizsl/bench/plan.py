"""Memory and FLOPs planner: compiles a config's real steps for N devices and says what fits.

    python -m fungizsl.bench.plan --config=configs/fungalzsl.py:arch=l14_336 --devices=1,8 \\
        [--fail_over=h100|a100_40|tpu_v4|tpu_v5e] [--out=plan.json]
    python -m fungizsl.bench.plan --preset=readme      # the README's table (every config below)

For each device count a child process (XLA reads `--xla_force_host_platform_device_count` once
per process) builds the steps of the config from shapes alone (`jax.ShapeDtypeStruct` state and
batch, nothing allocated), compiles them ahead of time and reads XLA's memory analysis
(argument, output, alias and temporary bytes, per device) and cost analysis (FLOPs per device),
beside the model's matmul FLOPs per step from the jaxpr (`measure.matmul_flops`: 2*M*N*K of every
dot and convolution, scan bodies times their length; the whole, unsplit step). Peak per device =
arguments + outputs - aliased (donated) + temporaries.

The steps (`plan_steps`):

* FungalZSL (`configs/fungalzsl.py`): `train`, the trainer core's jitted step
  (`core.build(config, task, mesh).train_step`, the trainer's loss, optimizer, shardings and
  donation) at the config's global batch split over the mesh the config asks for; `eval`, the
  evaluator's image + caption embedding step (`fungalzsl.trainer.make_encoder`) at its eval batch.
* FungiCLEF (`configs/fungiclef.py`, the full system) at the paper's sizes: `stage1` and
  `stage2` train steps (the tasks' own parts, `stage1_step_parts` / `stage2_step_parts`, through
  `core.build`; stage 2 on the frozen encoder's tokens when the config computes them once,
  `stage1_tokens` being that step), their scoring steps `stage1_eval` / `stage2_eval` (chunks of
  256, as the scorers run them; the trainers hand them host arrays, so the chunk is whole on every device),
  and the feature extraction `extract_dinov2_b14` / `extract_dinov2_l14` (`features.embed_fn`,
  the batch split over the devices). Shapes the data would give (`FUNGICLEF_PAPER`): 2,427
  species, DINOv2 tokens at 224 px (257 of width 1024 for L/14), the metadata fields' vocabulary
  sizes of FungiTastic-FewShot-Train.csv, MiniLM states (width 384) of `data.text_max_length`.

These are the numbers of XLA's CPU compiler: GPU and TPU compilers fuse and schedule
differently, so their temporaries differ (usually downwards: the CPU backend keeps more
intermediates and computes bfloat16 elementwise work through float32). Read the table as a
plan to check on the device, not as its measurement.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from ml_collections import config_flags

from fungizsl import cpu_devices, placement, xla_options
from fungizsl.bench import clip_step, measure
from fungizsl.errors import ConfigError
from fungizsl.fungalzsl import trainer as fungalzsl_trainer
from fungizsl.fungiclef import features as features_lib
from fungizsl.fungiclef import full, metadata, stage1, stage2
from fungizsl.models import vit
from fungizsl.train import core

GB = 1e9
# Named accelerators: memory per chip as sold (decimal GB; a process gets somewhat less).
DEVICES = {"h100": ("H100 80 GB", 80 * GB), "a100_40": ("A100 40 GB", 40 * GB),
           "tpu_v4": ("TPU v4 (32 GB)", 32 * GB), "tpu_v5e": ("TPU v5e (16 GB)", 16 * GB)}
SHORT = {"h100": "H100", "a100_40": "A100-40", "tpu_v4": "v4", "tpu_v5e": "v5e"}

# FungiCLEF 2025 few-shot at the paper's sizes: what the Kaggle data would give the trainers.
FUNGICLEF_PAPER = dict(
    num_classes=2427,  # species of FungiTastic-FewShot
    field_sizes=(32, 31, 10, 14, 76, 206, 8, 27, 13),  # FieldVocab of the Train CSV, config.data.fields
    text_width=384,  # all-MiniLM-L6-v2 states
    tower="dinov2_l14", image_size=224,  # config.features.tower's DINOv2 at config.features.image_size
    extract_towers=("dinov2_b14", "dinov2_l14"),
    extract_batch=256,  # docs/fungiclef.md's features command (--batch-size 256)
    eval_chunk=256)  # Stage2Scorer / stage1_embeddings chunk size

README_CONFIGS = ("configs/fungalzsl.py:arch=b32", "configs/fungalzsl.py:arch=b16",
                  "configs/fungalzsl.py:arch=l14", "configs/fungalzsl.py:arch=l14_336", "configs/fungiclef.py",
                  "configs/fungiclef.py:paper")


@dataclasses.dataclass
class Step:
    """One jitted function with abstract (sharded) arguments; `batch` is its global batch and
    `per_device` the rows each device holds (the whole batch when it is not split)."""

    name: str
    fn: object
    args: tuple
    batch: int
    per_device: int


def _spec(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
    return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def _step(name: str, fn, args: tuple, batch_arg: jax.ShapeDtypeStruct) -> Step:
    """A Step whose batch size and rows per device are read from `batch_arg`'s shape and sharding."""
    return Step(name, fn, args, batch_arg.shape[0], batch_arg.sharding.shard_shape(batch_arg.shape)[0])


def mesh_for(config, devices):
    """The config's ("data", "fsdp") mesh over `devices` (-1: every device left), as
    `core.make_mesh` makes it over all devices."""
    n = len(devices)
    fsdp = n if config.mesh.fsdp == -1 else config.mesh.fsdp
    mesh = placement.make_mesh(data=config.mesh.data, fsdp=fsdp, devices=devices)
    if config.batch_size % mesh.size:
        raise ConfigError(f"batch_size={config.batch_size} is not divisible by the {mesh.size} devices")
    return mesh


def _train_step(name: str, trainable, batch: dict, mesh) -> Step:
    shard = placement.batch_sharding(mesh)
    batch = {k: _spec(s, d, shard) for k, (s, d) in batch.items()}
    return _step(name, trainable.train_step, (core.sharded_abstract(trainable), batch), batch["label"])


def _variables(trainable):
    return core.variables_of(core.sharded_abstract(trainable))


# -- FungalZSL --------------------------------------------------------------------------------------

def fungalzsl_steps(config, devices) -> list[Step]:
    mesh = mesh_for(config, devices)
    bench = clip_step.build(config, config.batch_size, config.model.dtype, mesh=mesh, params={})
    size, text = bench.image_size, bench.model.config.text
    b = config.batch_size
    train = _train_step("train", bench.trainable, {
        "image": ((b, size, size, 3), jnp.float32), "input_ids": ((b, text.context_length), jnp.int32),
        "label": ((b,), jnp.int32)}, mesh)
    e = -(-max(mesh.size, config.get("eval_batch_size", config.batch_size)) // mesh.size) * mesh.size
    shard = placement.batch_sharding(mesh)
    images = _spec((e, size, size, 3), jnp.float32, shard)
    evaluate = _step("eval", jax.jit(fungalzsl_trainer.make_encoder(bench.model)),
                     (_variables(bench.trainable), images, _spec((e, text.context_length), jnp.int32, shard)), images)
    return [train, evaluate]


# -- FungiCLEF --------------------------------------------------------------------------------------

def _tower_tokens(variant: str, image_size: int) -> tuple[int, int]:
    c = vit.vit_config(variant, image_size=image_size)
    return c.grid ** 2 + 1 + c.num_registers, c.width


def _stage2_batch(c2, rows: int, tokens: tuple[int, int]) -> dict:
    p = FUNGICLEF_PAPER
    length = c2.data.text_max_length
    return {"tokens": ((rows,) + tokens, jnp.float16), "label": ((rows,), jnp.int32),
            "field_ids": ((rows, len(p["field_sizes"])), jnp.int32),
            "numeric": ((rows, len(metadata.NUMERIC_FEATURES)), jnp.float32),
            "prior": ((rows, p["num_classes"]), jnp.float32), "proto": ((rows, p["num_classes"]), jnp.float32),
            "text_states": ((rows, length, p["text_width"]), jnp.float16),
            "text_mask": ((rows, length), jnp.bool_)}


def _task(name, init_variables, loss_fn) -> core.Task:
    return core.Task(name=name, init_variables=init_variables, loss_fn=loss_fn, train_iterator=None,
                     evaluate=None)


def fungiclef_steps(config, devices) -> list[Step]:
    p = FUNGICLEF_PAPER
    tokens = _tower_tokens(p["tower"], p["image_size"])
    first_kept = 1 + vit.vit_config(p["tower"]).num_registers
    steps = []

    c1 = full.stage_config(config, "stage1")
    mesh = mesh_for(c1, devices)
    model1, init1, loss1 = stage1.stage1_step_parts(c1, p["num_classes"], tokens, first_kept)
    trainable = core.build(c1, _task("fungiclef_stage1", init1, loss1), mesh)
    b = c1.batch_size
    steps.append(_train_step("stage1", trainable, {
        "tokens": ((b,) + tokens, jnp.float16), "label": ((b,), jnp.int32),
        "augmented": ((b,), jnp.bool_), "valid": ((b,), jnp.bool_)}, mesh))
    whole = placement.replicated(mesh)
    chunk = p["eval_chunk"]
    rows = _spec((chunk,) + tokens, jnp.float16, whole)
    steps.append(_step("stage1_eval", stage1.embedding_fn(model1), (_variables(trainable)["params"], rows), rows))

    encoded = stage2.reads_encoded_tokens(config)
    if encoded:  # stage 2 reads the frozen encoder's tokens, computed once by this step
        params1 = _variables(trainable)["params"]
        steps.append(_step("stage1_tokens", stage1.tokens_fn(model1), (params1, rows), rows))
        tokens = (tokens[0] + 1, c1.stage1.width)

    c2 = full.stage_config(config, "stage2")
    c2.optim.frozen = stage2.trained_patterns(c2.optim.frozen, encoded)
    mesh = mesh_for(c2, devices)
    model2 = stage2.stage2_model_for(c2, p["num_classes"], p["field_sizes"], encoded)
    example = {k: jnp.zeros(s, d) for k, (s, d) in _stage2_batch(c2, 2, tokens).items()}
    init2, loss2 = stage2.stage2_step_parts(c2, model2, example)
    trainable = core.build(c2, _task("fungiclef_stage2", init2, loss2), mesh)
    steps.append(_train_step("stage2", trainable, _stage2_batch(c2, c2.batch_size, tokens), mesh))
    whole = placement.replicated(mesh)
    scored = {k: _spec(s, d, whole) for k, (s, d) in _stage2_batch(c2, chunk, tokens).items() if k != "label"}
    steps.append(_step("stage2_eval", stage2.scoring_fn(c2, model2), (_variables(trainable)["params"], scored),
                       scored["tokens"]))

    data_mesh = placement.make_mesh(data=len(devices), fsdp=1, devices=devices)  # as features.extract
    batch = math.ceil(p["extract_batch"] / data_mesh.size) * data_mesh.size
    size = config.features.image_size
    for variant in p["extract_towers"]:
        module = vit.VisionTransformer(vit.vit_config(variant, image_size=size))
        params = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))["params"]
        params = jax.tree.map(lambda a: _spec(a.shape, a.dtype, placement.replicated(data_mesh)), params)
        images = _spec((batch, size, size, 3), jnp.float32, placement.batch_sharding(data_mesh))
        steps.append(_step(f"extract_{variant}", features_lib.embed_fn(module, config.features.keep),
                           (params, images), images))
    return steps


def plan_steps(config, devices) -> list[Step]:
    """The steps of `config` (a FungalZSL or full FungiCLEF config) for a mesh over `devices`."""
    if config.get("trainer") == "fungizsl.fungalzsl.trainer":
        return fungalzsl_steps(config, devices)
    if config.get("trainer") == "fungizsl.fungiclef.full":
        return fungiclef_steps(config, devices)
    raise ConfigError(f"the planner knows FungalZSL and the full FungiCLEF system, not trainer "
                      f"{config.get('trainer')!r}")


# -- measuring --------------------------------------------------------------------------------------

def fits(peak: int) -> list[str]:
    return [key for key, (_, capacity) in DEVICES.items() if peak <= capacity]


def measure_step(step: Step, devices: int) -> dict:
    """XLA's memory and cost analysis of one compiled step, per device, and its model FLOPs."""
    start = time.perf_counter()
    compiled = step.fn.lower(*step.args).compile()
    compile_s = time.perf_counter() - start
    memory = measure.memory(compiled)
    model = measure.matmul_flops(jax.make_jaxpr(xla_options.unwrapped(step.fn))(*step.args).jaxpr)
    return {"step": step.name, "devices": devices, "batch": step.batch, "batch_per_device": step.per_device,
            "argument_bytes": memory["argument_size"], "output_bytes": memory["output_size"],
            "alias_bytes": memory["alias_size"], "temp_bytes": memory["temp_size"],
            "peak_bytes": memory["peak_estimate"], "xla_flops_per_device": measure.cost_analysis_flops(compiled),
            "model_flops_per_step": model, "fits": fits(memory["peak_estimate"]),
            "compile_s": round(compile_s, 1)}


def plan(config, devices) -> list[dict]:
    return [measure_step(step, len(devices)) for step in plan_steps(config, devices)]


def run_child(config_args: list[str], devices: int, timeout: int = 1800) -> list[dict]:
    """`plan` in a process with `devices` simulated CPU devices; `config_args` are the --config
    flags (the file with its arguments, and any --config.x=y overrides)."""
    env = cpu_devices.simulated_env(os.environ, devices)
    command = [sys.executable, "-m", "fungizsl.bench.plan", *config_args, f"--child={devices}"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"{' '.join(config_args)} on {devices} devices: {last}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def overflow(rows: list[dict], device: str) -> str | None:
    """One line naming the steps that exceed `device`'s memory, or None when all fit."""
    name, capacity = DEVICES[device]
    over = [r for r in rows if r["peak_bytes"] > capacity]
    if not over:
        return None
    worst = max(over, key=lambda r: r["peak_bytes"])
    more = f"; {len(over) - 1} more step(s) over" if len(over) > 1 else ""
    return (f"{worst['config']} {worst['step']} on {worst['devices']} device(s) needs "
            f"{worst['peak_bytes'] / GB:.1f} GB per device, {(worst['peak_bytes'] - capacity) / GB:.1f} GB over the "
            f"{name}{more}")


def table(rows: list[dict]) -> str:
    head = ("| config | step | devices | batch/device | args GB | outputs GB | temps GB | peak GB "
            "| XLA TFLOP/device | model TFLOP/step | fits |")
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        xla = r["xla_flops_per_device"]
        lines.append(
            f"| {r['config']} | {r['step']} | {r['devices']} | {r['batch_per_device']:g} "
            f"| {r['argument_bytes'] / GB:.2f} | {r['output_bytes'] / GB:.2f} | {r['temp_bytes'] / GB:.2f} "
            f"| **{r['peak_bytes'] / GB:.2f}** | {'-' if xla is None else f'{xla / 1e12:.3f}'} "
            f"| {r['model_flops_per_step'] / 1e12:.3f} | {', '.join(SHORT[k] for k in r['fits']) or 'none'} |")
    return "\n".join(lines)


def short_name(config_args: list[str]) -> str:
    spec = config_args[0].split("=", 1)[1]
    return " ".join([os.path.basename(spec).replace(".py", "")] + config_args[1:])


# -- command line -----------------------------------------------------------------------------------

FLAGS = flags.FLAGS
_CONFIG = None


def define_flags() -> None:
    """The command line's flags, defined only when this module is the program: importing it (the
    tests, other tools) must not add a second --config beside fungizsl.main's."""
    global _CONFIG
    _CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config, e.g. configs/fungalzsl.py:arch=l14_336")
    flags.DEFINE_string("devices", "1,8", "comma list of device counts (each compiled in its own process)")
    flags.DEFINE_enum("fail_over", None, list(DEVICES), "exit non-zero when a step's peak per device exceeds this device")
    flags.DEFINE_string("out", None, "write the rows as JSON here")
    flags.DEFINE_enum("preset", None, ["readme"], "readme: every config of the README's table, on 1 and 8 devices")
    flags.DEFINE_integer("child", 0, "internal: plan in this process, which has this many devices; print JSON")


def _config_args(argv: list[str]) -> list[str]:
    return [a for a in argv[1:] if a.startswith("--config")]


def main(argv):
    if FLAGS.child:
        if jax.device_count() != FLAGS.child:
            raise SystemExit(f"plan child: expected {FLAGS.child} devices, found {jax.device_count()}")
        print(json.dumps(plan(_CONFIG.value, jax.devices())))
        return
    if FLAGS.preset:
        jobs = [[f"--config={spec}"] for spec in README_CONFIGS]
    elif _CONFIG.value is not None:
        jobs = [_config_args(sys.argv)]
    else:
        raise SystemExit("plan: give --config=FILE[:ARGS] or --preset=readme")
    counts = [int(n) for n in FLAGS.devices.split(",")]
    start = time.perf_counter()
    rows = []
    try:
        for config_args in jobs:
            for n in counts:
                rows.extend(dict(r, config=short_name(config_args)) for r in run_child(config_args, n))
    except (ConfigError, subprocess.TimeoutExpired) as error:
        raise SystemExit(f"plan: {error}")
    print(table(rows))
    print(f"planned {len(rows)} steps in {time.perf_counter() - start:.0f} s", flush=True)
    if FLAGS.out:
        with open(FLAGS.out, "w") as f:
            json.dump(rows, f, indent=1)
    if FLAGS.fail_over and (line := overflow(rows, FLAGS.fail_over)):
        print(f"plan: {line}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    define_flags()
    app.run(main)
