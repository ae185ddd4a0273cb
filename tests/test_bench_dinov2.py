"""The DINOv2 extraction benchmark (`fungizsl.bench.dinov2_speed`) on a tiny DINOv2: its CLI writes
a record with both sides, their tokens agree, img/s is batch over the recorded time, the ratio
comes from clean rounds only, and a parity failure stops the run. No timing asserts."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from fungizsl.bench import dinov2_speed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "patch_size": 7, "image_size": 28,
        "mlp_ratio": 4}


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = tmp_path_factory.mktemp("dinov2_speed") / "bench.json"
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, "-m", "fungizsl.bench.dinov2_speed", "--variants=tiny", "--image_size=28",
                           "--batch=4", "--rounds=2", "--threads=1", f"--out={out}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "JAX speedup" in proc.stdout and "tiny" in proc.stdout
    return json.loads(out.read_text())


def test_record_has_both_sides_and_threads(record):
    (run,) = record["runs"]
    assert run["variant"] == "tiny" and run["batch"] == 4 and run["dtype"] == "float32"
    assert run["tokens"] == (28 // 7) ** 2 + 1
    assert set(run["timing"]["contenders"]) == {"jax", "torch"}
    for side in ("jax", "torch"):
        assert len(run["timing"]["contenders"][side]["times_s"]) == 2
        assert run[side]["images_per_sec_fastest"] > 0 and run[side]["cpu_s_per_image"] >= 0
    threads = record["threads"]
    assert threads["requested"] == 1 and threads["NPROC"] == "1"
    assert threads["torch_intra_op"] == 1
    assert record["torch_version"] and record["jax_version"] == jax.__version__


def test_tokens_agree_with_pytorch(record):
    p = record["runs"][0]["parity"]
    # LayerNorm outputs of a few units: float16 keeps about 3 decimal digits of them.
    assert p["max_abs_diff_cached_float16"] < 5e-3
    assert p["max_abs_diff_before_cast"] < 1e-4  # float32 against float32
    assert p["max_abs_diff_cached_float16"] <= p["tolerance"]


def test_images_per_second_is_batch_over_recorded_time(record):
    run = record["runs"][0]
    timing = run["timing"]
    clean = [i for i, r in enumerate(timing["rounds"]) if not r["contended"]]
    for side in ("jax", "torch"):
        times = timing["contenders"][side]["times_s"]
        used = [times[i] for i in clean] or times  # clean rounds where any, else all
        # two rounds: the median is their mean
        want_fastest = 4 / min(used)
        want_median = 4 / (sum(used) / len(used))
        assert run[side]["images_per_sec_fastest"] == pytest.approx(want_fastest, rel=1e-9)
        assert run[side]["images_per_sec_median"] == pytest.approx(want_median, rel=1e-9)
    ratio = run["speed_ratio"]
    if clean:
        per_round = [timing["rounds"][i]["calls"]["torch"]["wall_s"] / timing["rounds"][i]["calls"]["jax"]["wall_s"]
                     for i in clean]
        assert ratio["median"] == pytest.approx(float(np.median(per_round)))
    else:
        assert ratio["median"] is None and ratio["fastest"] is None and "no clean round" in ratio["note"]


def test_parity_failure_stops_the_run():
    hf, module, params = dinov2_speed.build_pair(TINY)
    wrong = jax.tree.map(lambda x: x, params)
    wrong["layernorm"]["bias"] = wrong["layernorm"]["bias"] + 0.1
    with pytest.raises(dinov2_speed.ParityError, match="differ by"):
        dinov2_speed.run_variant("tiny", TINY, batch=2, rounds=1, model=(hf, module, wrong))


def test_import_defines_no_flags():
    from absl import flags

    assert "variants" not in flags.FLAGS  # defined only when the module is the program
