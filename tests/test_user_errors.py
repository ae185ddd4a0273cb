"""What users get wrong stops `python -m fungizsl.main` with one line on stderr and exit code 2.

Each case runs the command as a user would and compares the whole of stderr with the expected
line (no library warning needed filtering here: stderr is exactly that one line), and where the
check runs before any work, that nothing was written. A corrupt image in an evaluation-only run
is the one case that does not stop: it is skipped and counted (docs/evaluation.md), and its one
line is a warning beside tqdm's progress output.
"""

import json
import os
import subprocess
import sys

import pytest
from PIL import Image

import trainer_runs
from tiny_clip import random_tiny_clip
from fungizsl import cpu_devices, weights
from fungizsl.data import synthetic
from fungizsl.fungalzsl import load, model as model_lib

ARCHS = ("tiny", "b32", "b16", "l14", "l14_336", "cnn_tiny", "rn_tiny", "rn50", "rn101", "rn50x4", "rn50x16",
         "rn50x64")


def run_main(*flags, workdir, timeout=120, prefix=()):
    env = dict(cpu_devices.simulated_env(os.environ, 1), PYTHONPATH=trainer_runs.ROOT)
    return subprocess.run([*prefix, sys.executable, "-m", "fungizsl.main", *flags, f"--workdir={workdir}"],
                          cwd=trainer_runs.ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def assert_one_line(out, expected: str, code: int = 2):
    """Exit code `code` and stderr exactly `fungizsl: <expected>` (one line, nothing else)."""
    assert out.returncode == code, out.stderr[-3000:]
    assert out.stderr.splitlines() == [f"fungizsl: {expected}"], out.stderr[-3000:]


def assert_nothing_written(workdir):
    assert not os.path.exists(workdir), sorted(os.listdir(workdir))


def train(tmp_path, *flags):
    workdir = tmp_path / "run"
    return run_main(*trainer_runs.TINY_FLAGS, *flags, workdir=workdir), workdir


def test_config_key_typo(tmp_path):
    out, workdir = train(tmp_path, "--config.totl_steps=5")
    assert_one_line(out, "--config.totl_steps: the config has no field config.totl_steps; "
                         "did you mean --config.total_steps?")
    assert_nothing_written(workdir)
    out, _ = train(tmp_path, "--config.dta.image_size=5")
    assert_one_line(out, "--config.dta.image_size: the config has no field config.dta; did you mean --config.data?")
    out, _ = train(tmp_path, "--config.total_steps=abc")
    assert_one_line(out, "flag --config.total_steps=abc: invalid literal for int() with base 10: 'abc'")


def test_bad_arch_and_config_arguments(tmp_path):
    out = run_main("--config=configs/fungalzsl.py:arch=b33", workdir=tmp_path / "run")
    assert_one_line(out, f"--config=configs/fungalzsl.py:arch=b33: config argument 'arch' must be one of "
                         f"{ARCHS}, got 'b33'")
    out = run_main("--config=configs/fungalzsl.py:arc=b32", workdir=tmp_path / "run")
    assert_one_line(out, "--config=configs/fungalzsl.py:arc=b32: unknown config argument 'arc'; known: "
                         "['arch', 'captions', 'data_dir', 'init', 'preset', 'runlocal', 'val_shifts']")
    out = run_main("--config=configs/evaluate.py:openset=two", workdir=tmp_path / "run")
    assert_one_line(out, "--config=configs/evaluate.py:openset=two: config argument 'openset': invalid literal "
                         "for int() with base 10: 'two'")
    out = run_main("--config=configs/nosuch.py", workdir=tmp_path / "run")
    assert_one_line(out, "--config=configs/nosuch.py: no such config file configs/nosuch.py; configs are files "
                         "such as configs/fungalzsl.py")
    assert_nothing_written(tmp_path / "run")


def test_missing_or_wrong_model_folder(tmp_path):
    images = tmp_path / "images"
    (images / "spore").mkdir(parents=True)
    out = run_main(f"--config=configs/evaluate.py:model=/no/such/dir,images={images}", workdir=tmp_path / "eval")
    assert_one_line(out, f"model /no/such/dir: no such folder; model= (config.models) names {load.MODEL_KINDS}")
    out = run_main(f"--config=configs/evaluate.py:model={images},images={images}", workdir=tmp_path / "eval")
    assert_one_line(out, f"model {images} is not a model folder: model= (config.models) names {load.MODEL_KINDS}")
    assert_nothing_written(tmp_path / "eval")

    out, workdir = train(tmp_path, "--config.model.init=/no/such/dir")
    assert_one_line(out, f"config.model.init=/no/such/dir: no such folder; init= is {model_lib.INIT_KINDS}")
    out, workdir = train(tmp_path, f"--config.model.init={images}")
    assert_one_line(out, f"config.model.init={images} is not a model folder; init= is {model_lib.INIT_KINDS}")
    assert_nothing_written(workdir)  # no tokenizer/, no fungizsl_config.json


def test_workdir_that_cannot_be_created(tmp_path):
    # Run as root, a permission bit stops nothing: a regular file where a folder must go stops
    # everyone (root included) from creating the workdir.
    (tmp_path / "afile").write_text("a file, not a folder")
    workdir = tmp_path / "afile" / "run"
    out = run_main(*trainer_runs.TINY_FLAGS, workdir=workdir)
    assert_one_line(out, f"--workdir={workdir} cannot be created or written (NotADirectoryError: [Errno 20] "
                         f"Not a directory: '{workdir}'); choose a folder every process can create and write")
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_read_only_workdir(tmp_path):
    # Root ignores permission bits through CAP_DAC_OVERRIDE (and CAP_DAC_READ_SEARCH); without them
    # in its bounding set, a root process (CI runs as root) meets the read-only folder as a user does.
    prefix = ("setpriv", "--bounding-set=-dac_override,-dac_read_search") if os.geteuid() == 0 else ()
    parent = tmp_path / "readonly"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        out = run_main(*trainer_runs.TINY_FLAGS, workdir=parent / "run", prefix=prefix)
    finally:
        parent.chmod(0o755)
    assert out.returncode == 2 and len(out.stderr.splitlines()) == 1, out.stderr[-3000:]
    assert out.stderr.startswith(f"fungizsl: --workdir={parent / 'run'} cannot be created or written (PermissionError")
    assert os.listdir(parent) == []


def test_warmup_not_below_total_steps(tmp_path):
    out, workdir = train(tmp_path, "--config.total_steps=20", "--config.warmup_steps=20")
    assert_one_line(out, "config.warmup_steps=20 must be at least 0 and below config.total_steps=20; lower "
                         "--config.warmup_steps or raise --config.total_steps")
    assert_nothing_written(workdir)
    out = run_main("--config=configs/fungiclef.py:runlocal", "--config.stage2.warmup_steps=400",
                   workdir=tmp_path / "clef")
    assert_one_line(out, "config.stage2.warmup_steps=400 must be at least 0 and below config.stage2.total_steps="
                         "300; lower --config.stage2.warmup_steps or raise --config.stage2.total_steps")
    assert_nothing_written(tmp_path / "clef")


@pytest.fixture
def tiny_hf_folder(tmp_path):
    """A random tiny CLIP exported as a Hugging Face folder with a small trained BPE tokenizer."""
    texts = [f"a microscopy image of {s} number {i}" for s in ("spore", "hyphae", "mycelium") for i in range(20)]
    module, params, _ = random_tiny_clip(texts, tmp_path / "tok")
    return weights.export_pretrained(module, params, str(tmp_path / "hf"), tokenizer_from=str(tmp_path / "tok"))


def test_corrupt_image_is_skipped_and_counted(tmp_path, tiny_hf_folder):
    images = tmp_path / "images"
    for k, stage in enumerate(("spore", "hyphae", "mycelium")):
        (images / stage).mkdir(parents=True)
        for i in range(2):
            array = synthetic.render_image(stage, i, seed=k, config=synthetic.RenderConfig(image_size=32))
            Image.fromarray(array).save(images / stage / f"{i}.png")
    bad = images / "hyphae" / "bad.jpg"
    bad.write_bytes(b"not a jpeg at all")
    out = run_main(f"--config=configs/evaluate.py:model={tiny_hf_folder},images={images}", workdir=tmp_path / "eval")
    assert out.returncode == 0, out.stderr[-3000:]
    # tqdm draws its bar on stderr with carriage returns; the warning is one whole line among them
    lines = [part for line in out.stderr.split("\n") for part in line.split("\r")]
    assert (f"fungizsl: skipped 1 of 7 images that do not decode ({bad}); summary.json lists them under "
            f"skipped_images") in lines, out.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_images"] == 6 and summary["num_skipped_images"] == 1
    assert [s["file"] for s in summary["skipped_images"]] == [str(bad)]
    assert summary["skipped_images"][0]["reason"].startswith(f"cannot decode the image of {bad}")
