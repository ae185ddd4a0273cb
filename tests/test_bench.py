"""Smoke test of the throughput benchmark (no timing asserts): the record has the keys docs/benchmarks.md
and the JSON promise, PyTorch's reference starts from our weights (equal initial loss), model
FLOPs are counted exactly, and the loss's communication grows with the batch."""

import json

import jax
import jax.numpy as jnp
import pytest

from configs import fungalzsl
from fungizsl.bench import measure, runner, scaling

pytest.importorskip("torch")


def _tiny_config():
    config = fungalzsl.get_config("arch=tiny,runlocal")
    config.data.image_size = 32
    config.model.text_context = 16
    config.model.vocab_size = 300
    return config


def test_bench_record_and_same_weights_as_torch():
    config = _tiny_config()
    record = runner.run_all(config, batch=8, dtypes=["float32"], rounds=1, reference="torch",
                            torch_modes="eager", profile=True, pipeline=True, embed=True)
    for key in ("jax_images_per_sec", "torch_images_per_sec", "speed_ratio", "mfu", "pipeline_images_per_sec",
                "step_ms", "peak_flops", "model_flops_per_sec"):
        assert record[key] is not None and record[key] > 0, key
    run = record["runs"][0]
    assert run["initial_loss_torch"] == pytest.approx(run["initial_loss_jax"], abs=1e-5)
    assert {"jax", "torch_eager", "matmul_peak"} <= set(run["timing"])
    assert run["profile"]["buckets"] and run["embed"]["torch_images_per_sec"] > 0
    report = runner.format_report(dict(record, date="today", device=runner.device_info(), config="tiny",
                                       batch=8, image_size=32))
    assert "torch_eager" in report and "MFU" in report
    json.dumps(record)  # JSON-serialisable as written by --out


def test_matmul_flops_counts_forward_and_backward():
    f = lambda a, b: jnp.sum(a @ b)
    a, b = jnp.ones((4, 8)), jnp.ones((8, 16))
    assert measure.model_flops(f, a, b) == 2 * 4 * 8 * 16
    assert measure.model_flops(jax.value_and_grad(f, argnums=(0, 1)), a, b) == 3 * 2 * 4 * 8 * 16


def test_loss_communication_grows_with_batch():
    rows = scaling.loss_comm_child([64, 256], dim=32)
    gathered = {(r["batch"], r["version"]): r["collectives_bytes"].get("all-gather", 0) for r in rows}
    assert gathered[256, "jit"] == 4 * gathered[64, "jit"] > 0
    assert gathered[256, "shard_map"] == 4 * gathered[64, "shard_map"] > 0


def test_sweep_times_each_size_and_skips_sizes_the_patch_does_not_divide():
    from configs import fungalzsl as fungalzsl_config

    config = fungalzsl_config.get_config("arch=tiny,runlocal")
    rows = scaling.sweep(config, [8], [32, 36], "float32", rounds=1)
    assert rows[0]["resolution"] == 32 and rows[0]["step_ms"] > 0 and rows[0]["images_per_sec"] > 0
    assert rows[1]["resolution"] == 36 and "not a multiple of patch_size" in rows[1]["skipped"]
