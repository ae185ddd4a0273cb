"""Tests of the throughput benchmark (no timing asserts): the record has the keys docs/benchmarks.md
and the JSON promise, PyTorch's reference starts from our weights (equal initial loss), ratios come
from clean rounds only, a run beside a CPU hog is flagged and gives no ratio, model FLOPs are
counted exactly, and the loss's communication grows with the batch."""

import json
import os
import subprocess
import sys
import time
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import fungalzsl
from fungizsl.bench import clip_step, measure, runner, scaling
from fungizsl.fungalzsl import model as model_lib
from fungizsl.models import convnet

pytest.importorskip("torch")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.data.image_size=32", "--config.model.text_context=16", "--config.model.vocab_size=300"]


def _tiny_config(arch="tiny"):
    config = fungalzsl.get_config(f"arch={arch},runlocal")
    config.data.image_size = 32
    config.model.text_context = 16
    config.model.vocab_size = 300
    return config


def _check_rounds(timing: dict) -> None:
    """Every round's record is consistent with itself and the contender summaries with the rounds."""
    for rec in timing["rounds"]:
        assert rec["others_cores"] == pytest.approx(rec["others_cpu_s"] / rec["wall_s"])
        assert rec["own_cores"] == pytest.approx(rec["cpu_s"] / rec["wall_s"])
        slack = measure.CALL_SLACK_TICKS * rec["cores"] / os.sysconf("SC_CLK_TCK")
        for call in rec["calls"].values():
            assert call["contended"] == (call["others_cpu_s"] > timing["contended_cores"] * call["window_s"] + slack)
        assert rec["contended_calls"] == [n for n, call in rec["calls"].items() if call["contended"]]
        assert rec["contended"] == (rec["others_cores"] > timing["contended_cores"] or bool(rec["contended_calls"]))
        assert len(rec["loadavg_before"]) == len(rec["loadavg_after"]) == 3
        assert rec["cores"] == len(os.sched_getaffinity(0))
    clean = [r for r in timing["rounds"] if not r["contended"]]
    assert timing["clean_rounds"] == len(clean)
    for name, t in timing["contenders"].items():
        assert t["times_s"] == [r["calls"][name]["wall_s"] for r in timing["rounds"]]
        if clean:
            assert t["clean"]["median_s"] == pytest.approx(np.median([r["calls"][name]["wall_s"] for r in clean]))
            assert t["clean"]["cpu_s_per_call_median"] == pytest.approx(
                np.median([r["calls"][name]["cpu_s"] for r in clean]))
        else:
            assert t["clean"] is None


def test_bench_record_and_same_weights_as_torch(capfd):
    config = _tiny_config()
    capfd.readouterr()
    record = runner.run_all(config, batch=8, dtypes=["float32"], rounds=2, reference="torch",
                            torch_modes="eager", profile=True, pipeline=True, embed=True, threads=2, peak_matmul=256)
    assert "Loading weights" not in "".join(capfd.readouterr())  # the reference builds quietly
    for key in ("jax_images_per_sec", "torch_images_per_sec", "mfu", "pipeline_images_per_sec",
                "step_ms", "step_ms_fastest", "peak_flops", "model_flops_per_sec"):
        assert record[key] is not None and record[key] > 0, key
    run = record["runs"][0]
    assert run["initial_loss_torch"] == pytest.approx(run["initial_loss_jax"], abs=1e-5)
    timing = run["timing"]
    assert {"jax", "torch_eager", "matmul_peak"} == set(timing["contenders"])
    _check_rounds(timing)
    clean = [r for r in timing["rounds"] if not r["contended"]]
    if clean:  # the machine may be busy: then no ratio, and the note says so
        ratios = [r["calls"]["torch_eager"]["wall_s"] / r["calls"]["jax"]["wall_s"] for r in clean]
        assert record["speed_ratio"] == pytest.approx(np.median(ratios))
        assert record["speed_ratio_fastest"] == pytest.approx(
            min(r["calls"]["torch_eager"]["wall_s"] for r in clean) / min(r["calls"]["jax"]["wall_s"] for r in clean))
        assert record["cpu_s_per_step"]["jax"] == timing["contenders"]["jax"]["clean"]["cpu_s_per_call_median"]
    else:
        assert record["speed_ratio"] is None and record["speed_ratio_note"].startswith("no clean round: 2 of 2")
    assert record["threads"]["torch_intra_op"] == 2 and record["threads"]["xla_intra_op"] >= 1
    assert run["profile"]["buckets"] and run["embed"]["torch_images_per_sec"] > 0
    report = runner.format_report(dict(record, date="today", device=runner.device_info(), config="tiny",
                                       batch=8, image_size=32))
    assert "torch_eager" in report and "MFU" in report and "others cores" in report
    assert report.count("CONTENDED") == 2 - len(clean)
    json.dumps(record)  # JSON-serialisable as written by --out


def test_bench_beside_a_cpu_hog_flags_every_round_and_gives_no_ratio(tmp_path):
    """A busy-looping process beside a short `python -m fungizsl.bench --threads=1`: with the
    bench's one busy thread and the hog on two cores, the hog keeps about a core to itself (at
    least 2/3 of one should the bench's other threads wake), so every round is contended, the JSON
    and the table say so, and no speedup is printed."""
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"])]
    out = tmp_path / "bench.json"
    try:
        time.sleep(0.5)
        env = dict(os.environ, XLA_FLAGS="", PYTHONPATH=ROOT)
        proc = subprocess.run(
            [sys.executable, "-m", "fungizsl.bench", "--config=configs/fungalzsl.py:arch=tiny,runlocal", *SMALL,
             "--batch=8", "--steps=3", "--dtype=float32", "--reference=torch", "--torch_modes=eager", "--threads=1",
             "--peak_matmul=0", "--noprofile", "--nopipeline", "--noembed", f"--out={out}"],
            check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    timing = result["runs"][0]["timing"]
    _check_rounds(timing)
    assert [r["contended"] for r in timing["rounds"]] == [True] * 3
    assert min(r["others_cores"] for r in timing["rounds"]) > 0.5
    assert result["clean_rounds"] == 0 and result["speed_ratio"] is None and result["speed_ratio_fastest"] is None
    assert result["speed_ratio_note"].startswith("no clean round: 3 of 3 contended")
    assert result["runs"][0]["torch_eager_speed_ratio"]["median"] is None
    assert result["threads"]["NPROC"] == "1"
    assert (result["threads"]["xla_intra_op"], result["threads"]["torch_intra_op"],
            result["threads"]["torch_inter_op"]) == (1, 1, 1)
    assert "none reported, no clean round: 3 of 3 contended" in proc.stdout
    assert proc.stdout.count("CONTENDED") == 3
    assert "Loading weights" not in proc.stdout + proc.stderr


def test_busy_seconds_reads_only_our_cores():
    stat = ("cpu  9 9 9 9 9 9 9 9 9 9\n"
            "cpu0 100 10 20 500 7 1 2 3 0 0\n"
            "cpu1 1000 1000 1000 1000 1000 1000 1000 1000 0 0\n"
            "cpu2 200 0 30 400 9 4 5 6 0 0\nintr 1 2 3\n")
    ticks = (100 + 10 + 20 + 1 + 2 + 3) + (200 + 30 + 4 + 5 + 6)  # idle and iowait excluded
    assert measure.busy_seconds([0, 2], stat) == pytest.approx(ticks / os.sysconf("SC_CLK_TCK"))


def test_round_is_contended_when_others_take_more_than_a_quarter_core():
    def sample(wall, own, busy):
        return measure.MachineSample(wall, own, busy, (1.0, 1.0, 1.0), [0, 1])

    busy = measure.round_record(sample(0.0, 0.0, 10.0), sample(2.0, 1.5, 13.5))
    assert busy["others_cpu_s"] == pytest.approx(2.0) and busy["others_cores"] == pytest.approx(1.0)
    assert busy["own_cores"] == pytest.approx(0.75) and busy["contended"]
    quiet = measure.round_record(sample(0.0, 0.0, 10.0), sample(2.0, 1.5, 11.9))
    assert quiet["others_cores"] == pytest.approx(0.2) and not quiet["contended"]
    # One 0.1 s call on 2 cores: others may take 0.25 * 0.1 s plus 2 ticks per core before it counts.
    allowed = 0.25 * 0.1 + 2 * 2 / os.sysconf("SC_CLK_TCK")
    ok = measure.call_record(sample(5.0, 1.0, 20.0), sample(5.1, 1.2, 20.2 + 0.9 * allowed), 0.1)
    hit = measure.call_record(sample(5.0, 1.0, 20.0), sample(5.1, 1.2, 20.2 + 1.1 * allowed), 0.1)
    assert ok["others_cpu_s"] == pytest.approx(0.9 * allowed) and not ok["contended"] and hit["contended"]
    # A round whose average looks quiet is still contended when one of its calls was.
    mixed = measure.round_record(sample(0.0, 0.0, 10.0), sample(2.0, 1.5, 11.9), calls={"jax": hit, "torch": ok})
    assert mixed["contended"] and mixed["contended_calls"] == ["jax"]


def test_clean_ratio_uses_clean_rounds_only():
    def rnd(jax_s, torch_s, contended):
        return {"contended": contended, "others_cores": 1.5 if contended else 0.0,
                "calls": {"jax": {"wall_s": jax_s}, "torch": {"wall_s": torch_s}}}

    timing = {"cores": 2, "rounds": [rnd(1.0, 2.0, False), rnd(1.0, 9.0, True), rnd(2.0, 3.0, False),
                                     rnd(1.0, 4.0, False)]}
    ratio = measure.clean_ratio(timing, "torch", "jax")
    assert ratio["median"] == pytest.approx(2.0)  # median of 2.0, 1.5, 4.0; the contended 9.0 is left out
    assert ratio["fastest"] == pytest.approx(2.0 / 1.0) and ratio["clean_rounds"] == 3
    none = measure.clean_ratio(dict(timing, rounds=[rnd(1.0, 2.0, True)] * 2), "torch", "jax")
    assert none["median"] is None and none["fastest"] is None
    assert none["note"] == "no clean round: 2 of 2 contended (others used 1.50 of 2 cores, median)"


def test_bench_builds_the_model_the_trainer_builds_cnn_tiny_included():
    config = _tiny_config("cnn_tiny")
    bench = clip_step.build(config, 8, "float32")
    tokenizer = types.SimpleNamespace(vocab_size=300, eot_id=299, context_length=16)
    assert bench.model.config == model_lib.clip_model(config, tokenizer, dtype="float32", scan=False,
                                                      remat=False).config
    assert isinstance(bench.model.config.vision, convnet.ConvNetConfig) and not bench.vit_tower
    assert bench.extra  # BatchNorm statistics travel into the state
    # cnn_tiny has a PyTorch reference (tests/test_bench_convnet.py); CLIP's ResNet still has none.
    record = runner.run_all(_tiny_config("rn_tiny"), batch=8, dtypes=["float32"], rounds=1, reference="torch",
                            torch_modes="eager", profile=False, pipeline=False, embed=True, threads=2, peak_matmul=0)
    run = record["runs"][0]
    assert set(run["timing"]["contenders"]) == {"jax"} and record["speed_ratio"] is None
    assert record["speed_ratio_note"] == runner.NO_TORCH_TOWER.format("rn_tiny")
    assert run["embed"]["jax_images_per_sec"] > 0 and "torch_images_per_sec" not in run["embed"]


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
    config = fungalzsl.get_config("arch=tiny,runlocal")
    rows = scaling.sweep(config, [8], [32, 36], "float32", rounds=1)
    assert rows[0]["resolution"] == 32 and rows[0]["step_ms"] > 0 and rows[0]["images_per_sec"] > 0
    assert rows[1]["resolution"] == 36 and "not a multiple of patch_size" in rows[1]["skipped"]
