"""The FungalZSL trainer end to end: config errors, training, and exact resume after SIGKILL."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from fungizsl import cpu_devices
from trainer_runs import ROOT, TINY_FLAGS, assert_same_params, finish, start_training

RUN = ("--config.batch_size=16", "--config.total_steps=12", "--config.warmup_steps=2",
       "--config.log_every=2", "--config.checkpoint_every=3")


def _train(workdir, *extra, **popen):
    return start_training(workdir, *RUN, *extra, **popen)


def test_unknown_config_override_names_the_field(tmp_path):
    out, _ = _train(tmp_path, "--config.data.per_clas.train=3").communicate(timeout=120)
    assert "per_clas" in out
    bad_arch = subprocess.run([sys.executable, "-m", "fungizsl.main", "--config=configs/fungalzsl.py:arch=b64",
                               f"--workdir={tmp_path}"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
                              capture_output=True, text=True)
    assert bad_arch.returncode != 0 and "'arch' must be one of" in bad_arch.stderr


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """One uninterrupted run of the tiny config."""
    workdir = tmp_path_factory.mktemp("straight")
    out = finish(_train(workdir))
    assert "zeroshot_accuracy" in out
    return workdir


def test_a_run_writes_summary_plots_metrics_and_a_pytorch_export(straight):
    summary = json.loads((straight / "summary.json").read_text())
    assert summary["step"] == 12
    for key in ("zeroshot_accuracy", "recall@1_image_to_text", "recall@1_text_to_image",
                "recall@5_image_to_text", "per_class_accuracy"):
        assert key in summary, key
    assert set(summary["per_class_accuracy"]) == {"spore", "hyphae", "mycelium"}
    assert set(summary["zeroshot_accuracy_by_caption_source"]) == {"templates"}
    assert (straight / "confusion_matrix.png").stat().st_size > 1000
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(straight / "tb"))
    import transformers

    torch_model = transformers.CLIPModel.from_pretrained(straight / "hf_export")
    assert torch_model.config.vision_config.image_size == 32


def test_init_from_a_hugging_face_folder_or_an_earlier_run(straight, tmp_path):
    for name, init in (("from_hf", straight / "hf_export"), ("from_run", straight)):
        # one step at a vanishing learning rate: the result must be the initialisation itself
        finish(_train(tmp_path / name, f"--config.model.init={init}", "--config.total_steps=1",
                       "--config.warmup_steps=0", "--config.lr=1e-12", "--config.export_hf=False"))
        assert_same_params(straight, tmp_path / name, atol=1e-6, err_msg=name)


def test_sigkill_then_resume_gives_the_same_parameters(straight, tmp_path):
    interrupted = tmp_path / "interrupted"
    process = _train(interrupted, start_new_session=True)
    deadline = time.time() + 240
    while time.time() < deadline:
        folder = interrupted / "checkpoints"
        steps = [int(d) for d in os.listdir(folder) if d.isdigit()] if folder.is_dir() else []
        if steps and max(steps) >= 6:
            break
        if process.poll() is not None:
            pytest.fail("the run ended before it could be killed:\n" + process.stdout.read()[-3000:])
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not (interrupted / "summary.json").exists(), "the run was killed after it had finished"

    out = finish(_train(interrupted))
    resumed_at = int(out.split("resumed from step ")[1].split()[0])
    assert 6 <= resumed_at < 12
    assert '"step": 12' in (interrupted / "summary.json").read_text()
    assert_same_params(straight, interrupted, rtol=1e-6, atol=1e-7)


def test_the_default_captions_need_nothing_outside_the_clone(tmp_path):
    """captions=scene (the default): per-image captions from the renders, zero-shot on held-out prompts."""
    env = dict(cpu_devices.simulated_env(os.environ, 2), PYTHONPATH=ROOT)
    tiny = [flag for flag in TINY_FLAGS if not flag.startswith("--config=")]
    cmd = [sys.executable, "-m", "fungizsl.main", "--config=configs/fungalzsl.py:arch=tiny,runlocal", *tiny,
           "--config.batch_size=8", "--config.total_steps=4", "--config.warmup_steps=1",
           "--config.export_hf=False", f"--workdir={tmp_path}"]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["captions"] == "scene"
    assert set(summary["zeroshot_accuracy_by_caption_source"]) == {"scene_heldout", "templates"}
    assert summary["instance_recall@1_image_to_text"] is not None


def test_resnet_tower_trains_carries_batch_stats_and_exports_open_clip(tmp_path):
    """rn_tiny end to end: BatchNorm statistics move during training, are checkpointed with the
    state, the run exports an open_clip folder, and a new run initialised from it (open_clip
    init) starts from the same parameters and statistics."""
    import numpy as np

    from fungizsl.train import checkpoint
    from fungizsl.weights import open_clip

    run = tmp_path / "rn"
    finish(_train(run, "--config.model.arch=rn_tiny", "--config.audit_writes=True"))
    writes = json.loads((run / "audit" / "writes_process_0.json").read_text())
    for name in ("open_clip_model.safetensors", "open_clip_config.json", "tokenizer.json"):
        assert writes.count(str(run / "open_clip_export" / name)) == 1, (name, writes)
    variables = checkpoint.load_variables(str(run))
    means = [np.asarray(v) for v in jax_leaves(variables["batch_stats"])]
    assert means and any(np.abs(m).max() > 0 for m in means), "running statistics never moved"
    export = run / "open_clip_export"
    model, loaded = open_clip.load_open_clip(str(export))
    assert_same_structure(variables, loaded)
    for a, b in zip(jax_leaves(variables), jax_leaves(loaded)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=0)
    again = tmp_path / "from_open_clip"
    finish(_train(again, "--config.model.arch=rn_tiny",
                  f"--config.model.init={export}", "--config.total_steps=1", "--config.warmup_steps=0",
                  "--config.lr=1e-12", "--config.model.freeze_bn_stats=True", "--config.export_hf=False"))
    restarted = checkpoint.load_variables(str(again))
    assert_same_structure(variables, restarted)
    for a, b in zip(jax_leaves(variables), jax_leaves(restarted)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6)


def jax_leaves(tree):
    import jax
    return jax.tree.leaves(tree)


def assert_same_structure(a, b):
    import jax
    assert jax.tree.structure(a) == jax.tree.structure(b), "the two variable trees differ in structure"


def _tiny_config(init):
    """The config of the tiny runs above, in process, starting from ``init``."""
    from configs import fungalzsl as fungalzsl_config

    config = fungalzsl_config.get_config("arch=tiny,runlocal,captions=templates")
    config.unlock()
    config.update(batch_size=16, total_steps=12, warmup_steps=2, eval_every=1000)
    config.data.update(image_size=32, per_class=dict(train=16, val=4, test=8), robustness_per_class=2)
    config.model.update(vocab_size=300, text_context=24, init=str(init))
    return config


def test_init_from_a_run_starts_from_the_step_selected_on_val(straight, tmp_path):
    """A run whose summary.json selected an older step than its newest: init=<run> must load that
    step's weights, not the newest."""
    import shutil

    import numpy as np

    from fungizsl import runs, tokenizers
    from fungizsl.fungalzsl import model as model_lib
    from fungizsl.train import checkpoint

    run = tmp_path / "run"
    shutil.copytree(straight, run)
    kept = runs.steps(run)
    assert len(kept) >= 2 and kept[-1] == 12, kept
    summary = json.loads((run / "summary.json").read_text())
    summary["selection"]["step"] = kept[0]  # as if val had preferred the oldest kept checkpoint
    (run / "summary.json").write_text(json.dumps(summary))

    tokenizer = tokenizers.load_tokenizer(str(run / "tokenizer"), length=24)
    _, variables = model_lib.build_model(_tiny_config(run), tokenizer)
    chosen = checkpoint.load_variables(str(run / "checkpoints" / str(kept[0])))
    newest = checkpoint.load_variables(str(run / "checkpoints" / "12"))
    for got, want in zip(jax_leaves(variables), jax_leaves(chosen)):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    assert any(not np.array_equal(a, b) for a, b in zip(jax_leaves(chosen), jax_leaves(newest)))


def test_an_init_that_brings_its_tokenizer_builds_no_tokenizer_corpus(straight, tmp_path, monkeypatch):
    """The corpus (for captions=scene, the captions of every training render) is built only to train
    a from-scratch BPE: never with a Hugging Face folder or an earlier run as init."""
    from fungizsl.fungalzsl import inputs
    from fungizsl.fungalzsl import trainer as fungalzsl
    from fungizsl.train import core

    corpus, calls = inputs.FungalZSLData.tokenizer_corpus, []
    monkeypatch.setattr(inputs.FungalZSLData, "tokenizer_corpus",
                        lambda self: calls.append(1) or corpus(self))
    for name, init in (("from_hf", straight / "hf_export"), ("from_run", straight), ("scratch", "scratch")):
        config = _tiny_config(init)
        fungalzsl.make_task(config, tmp_path / name, core.make_mesh(config))
        assert len(calls) == (name == "scratch"), (name, calls)
        assert (tmp_path / name / "tokenizer").exists() == (name == "scratch"), name



def test_val_shifts_add_validation_renders_and_the_loss_has_an_instance_weight():
    """Issue 21: shifted validation splits to choose on (never the unseen generator), and the
    instance term's weight in the loss config (its numbers: tests/test_loss_instance.py)."""
    from configs import fungalzsl as fungalzsl_config
    from fungizsl.train import core

    config = fungalzsl_config.get_config("arch=cnn_tiny,runlocal,val_shifts=True")
    shifted = {name: cfg.split for name, cfg in config.evals.items() if cfg.split.startswith("val_")}
    assert set(shifted.values()) == {"val_paper", "val_zoom_out", "val_size64"}
    assert all(config.evals[name].every > 0 for name in shifted)
    core.check_evals(config)  # a validation split may run during training
    plain = fungalzsl_config.get_config("arch=cnn_tiny,runlocal")
    assert not any(cfg.split.startswith("val_") for cfg in plain.evals.values())
    assert plain.loss.instance_weight >= 0 and plain.loss.class_aware
