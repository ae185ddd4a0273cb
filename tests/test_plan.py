"""The memory and FLOPs planner (`fungizsl.bench.plan`): compile only, nothing allocated.

* Hand numbers: a toy step's per-device argument bytes and a matmul's FLOPs (2*M*N*K, split over
  the devices) computed here, and the real FungalZSL train step of a tiny config under FSDP,
  whose argument bytes must be its sharded state plus 1/N of the batch.
* The paper-size steps: L/14@336's train step on 8 devices and FungiCLEF's stage-1 and stage-2
  train steps on one device, under an H100's 80 GB per device as XLA's CPU compiler measures them.
* The command line: `--fail_over` exits non-zero with one line naming the step and the overflow.
"""

import os
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from configs import fungalzsl as fungalzsl_configs
from configs import fungiclef as fungiclef_configs
from fungizsl import placement
from fungizsl.bench import plan

H100 = 80e9
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_toy_step_argument_bytes_by_hand():
    mesh = placement.make_mesh(data=1, fsdp=8)
    w = jax.ShapeDtypeStruct((1024, 512), jnp.float32, sharding=NamedSharding(mesh, P("fsdp", None)))
    x = jax.ShapeDtypeStruct((64, 1024), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))
    y = jax.ShapeDtypeStruct((64, 512), jnp.float32, sharding=NamedSharding(mesh, P(("data", "fsdp"), None)))
    step = jax.jit(lambda w, x, y: jnp.mean(jnp.square(x @ w - y)))
    row = plan.measure_step(plan.Step("toy", step, (w, x, y), 64, 8), 8)
    # per device: 128 rows of w, 8 rows of x and of y, float32
    assert row["argument_bytes"] == 128 * 512 * 4 + 8 * 1024 * 4 + 8 * 512 * 4 == 311296
    assert row["peak_bytes"] == row["argument_bytes"] + row["output_bytes"] - row["alias_bytes"] + row["temp_bytes"]


@pytest.mark.parametrize("devices", [1, 8])
def test_matmul_flops_by_hand(devices):
    m, k, n = 256, 512, 128
    mesh = placement.make_mesh(data=devices, fsdp=1, devices=jax.devices()[:devices])
    a = jax.ShapeDtypeStruct((m, k), jnp.float32, sharding=placement.batch_sharding(mesh))
    b = jax.ShapeDtypeStruct((k, n), jnp.float32, sharding=placement.replicated(mesh))
    row = plan.measure_step(plan.Step("matmul", jax.jit(lambda a, b: a @ b), (a, b), m, m // devices), devices)
    assert row["model_flops_per_step"] == 2 * m * n * k == 33554432
    assert row["xla_flops_per_device"] == 2 * (m // devices) * n * k  # rows of a split over the devices


def _state_bytes(step) -> int:
    state = step.args[0]
    return sum(int(np.prod(a.sharding.shard_shape(a.shape))) * a.dtype.itemsize for a in jax.tree.leaves(state))


def test_real_train_step_under_fsdp_is_sharded_state_plus_batch_share():
    config = fungalzsl_configs.get_config("arch=tiny,runlocal")
    config.mesh.fsdp = -1
    config.sharding_rules = ((".*", "fsdp"),)
    config.sharding_min_size = 2 ** 12
    config.loss.class_aware = True  # the loss reads the labels (jit drops unused arguments)
    train = plan.plan_steps(config, jax.devices())[0]
    state = train.args[0]
    split = [a for a in jax.tree.leaves(state) if any(p is not None for p in a.sharding.spec)]
    assert len(split) > 10  # the rules really split parameters and both Adam moments
    row = plan.measure_step(train, 8)
    b, size, context = config.batch_size, config.data.image_size, config.model.text_context
    batch_bytes = b * size * size * 3 * 4 + b * context * 4 + b * 4  # image f32, input_ids i32, label i32
    assert row["argument_bytes"] == _state_bytes(train) + batch_bytes // 8
    assert (row["batch"], row["batch_per_device"]) == (64, 8)
    full = sum(int(np.prod(a.shape)) * a.dtype.itemsize for a in jax.tree.leaves(state))
    assert _state_bytes(train) < full / 4  # params + optimizer state split, small leaves replicated
    assert row["alias_bytes"] == _state_bytes(train)  # the state is donated


def test_l14_336_train_step_fits_an_h100_on_8_devices():
    config = fungalzsl_configs.get_config("arch=l14_336")
    train = plan.plan_steps(config, jax.devices())[0]
    row = plan.measure_step(train, 8)
    print(f"L/14@336 train, batch {row['batch_per_device']:g}/device: args {row['argument_bytes'] / 1e9:.2f} GB, "
          f"temps {row['temp_bytes'] / 1e9:.2f} GB, peak {row['peak_bytes'] / 1e9:.2f} GB per device")
    assert row["batch_per_device"] == config.batch_size / 8
    assert row["peak_bytes"] < H100
    assert "h100" in row["fits"]


@pytest.fixture(scope="module")
def fungiclef_one_device():
    steps = plan.plan_steps(fungiclef_configs.get_config(), jax.devices()[:1])
    return {s.name: s for s in steps}


@pytest.mark.parametrize("name", ["stage1", "stage1_tokens", "stage2"])
def test_fungiclef_paper_size_train_steps_fit_an_h100(fungiclef_one_device, name):
    row = plan.measure_step(fungiclef_one_device[name], 1)
    print(f"FungiCLEF {name}, batch {row['batch']}: temps {row['temp_bytes'] / 1e9:.2f} GB, "
          f"peak {row['peak_bytes'] / 1e9:.2f} GB")
    assert row["peak_bytes"] < H100


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fungizsl.bench.plan", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=600, env=dict(os.environ, PYTHONPATH=ROOT))


def test_fail_over_exits_non_zero_with_one_line(tmp_path):
    config = "--config=configs/fungalzsl.py:arch=tiny,runlocal"
    over = _cli(config, "--config.batch_size=8192", "--devices=1", "--fail_over=tpu_v5e",
                f"--out={tmp_path / 'plan.json'}")
    assert over.returncode == 1, over.stderr[-2000:]
    lines = [line for line in over.stderr.splitlines() if line.startswith("plan:")]
    assert len(lines) == 1 and over.stderr.strip().splitlines()[-1] == lines[0], over.stderr[-2000:]
    assert re.fullmatch(r"plan: fungalzsl:arch=tiny,runlocal --config\.batch_size=8192 train on 1 device\(s\) "
                        r"needs [\d.]+ GB per device, [\d.]+ GB over the TPU v5e \(16 GB\)", lines[0]), lines[0]
    assert "| train | 1 | 8192 |" in over.stdout
    ok = _cli(config, "--devices=1", "--fail_over=tpu_v5e")
    assert ok.returncode == 0, ok.stderr[-2000:]
