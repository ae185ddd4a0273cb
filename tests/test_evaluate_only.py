"""Evaluation-only runs (`configs/evaluate.py`): the command as docs/evaluation.md writes it, on a tiny
trained run, its Hugging Face export and a class folder of rendered images of several sizes."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import trainer_runs
from configs import evaluate as evaluate_config
from fungizsl.data import augment, synthetic
from fungizsl.evaluate import zeroshot
from fungizsl import cpu_devices, runs
from fungizsl.errors import ConfigError
from fungizsl.data import image_sets
from fungizsl.fungalzsl import evaluate as evaluate_only, load

STAGES = ("spore", "hyphae", "mycelium")


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A tiny FungalZSL run of 4 steps: checkpoints, tokenizer, config and hf_export/."""
    workdir = tmp_path_factory.mktemp("run") / "tiny"
    trainer_runs.finish(trainer_runs.start_training(
        workdir, "--config.total_steps=4", "--config.warmup_steps=1", "--config.checkpoint_every=4",
        devices=1))
    return workdir


@pytest.fixture(scope="module")
def class_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    for stage in STAGES:
        (root / stage).mkdir()
        for i in range(3):
            size = (40, 64, 97)[i]
            image = synthetic.render_image(stage, i, seed=5, config=synthetic.RenderConfig(image_size=size))
            Image.fromarray(image).resize((size, size + 11 * i)).save(root / stage / f"{i}.png")
    (root / ".hidden").mkdir()
    return root


def run_main(config_arg, workdir, *flags):
    env = dict(cpu_devices.simulated_env(os.environ, 1), PYTHONPATH=trainer_runs.ROOT)
    out = subprocess.run([sys.executable, "-m", "fungizsl.main", f"--config=configs/evaluate.py:{config_arg}",
                          f"--workdir={workdir}", *flags], cwd=trainer_runs.ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    return out


def test_command_as_written_on_exported_model(tiny_run, class_folder, tmp_path):
    out = run_main(f"model={tiny_run}/hf_export,images={class_folder}", tmp_path / "eval")
    assert out.returncode == 0, out.stderr[-3000:]
    assert sorted(os.listdir(tmp_path / "eval")) == ["confusion_matrix.png", "summary.json"]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert summary["num_images"] == 9 and summary["data"]["class_names"] == sorted(STAGES)
    assert summary["model"]["kind"] == "hf_clip" and summary["prompts"] == ["templates"]
    confusion = np.asarray(summary["confusion_matrix"])
    assert confusion.sum() == 9 and confusion.sum(axis=1).tolist() == [3, 3, 3]
    assert summary["zeroshot_accuracy"] == pytest.approx(np.trace(confusion) / 9, abs=1e-6)
    assert summary["per_class_accuracy"]["hyphae"] == pytest.approx(confusion[0, 0] / 3, abs=1e-6)

    # The same numbers computed here from the model's own encoders.
    model = load.load_model(f"{tiny_run}/hf_export")
    images = image_sets.folder_images(str(class_folder))
    norm = augment.get_normalization("clip")
    pixels = np.stack([augment.eval_image(images.load(i), model.image_size, norm) for i in range(len(images))])
    prompts = evaluate_only.prompts_for("templates", images.class_names, evaluate_config.get_config().data)
    direct = zeroshot.zero_shot_evaluate(model.encode_images, model.encode_texts, pixels, images.labels,
                                         prompts, progress=False)
    assert summary["zeroshot_accuracy"] == pytest.approx(direct["accuracy"], abs=1e-6)
    assert Image.open(tmp_path / "eval" / "confusion_matrix.png").size[0] > 100


def test_several_models_give_one_comparison_and_checkpoint_equals_export(tiny_run, class_folder, tmp_path):
    step = tiny_run / "checkpoints" / "4"
    out = run_main(f"model={tiny_run}/hf_export;{tiny_run};{step},images={class_folder},chils=phrases,"
                   f"openset=1,poisonous=spore", tmp_path / "cmp")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| model | zeroshot_accuracy |" in out.stdout
    files = sorted(os.listdir(tmp_path / "cmp"))
    assert files == ["comparison.json", "comparison.png", "confusion_matrix_0_tiny-hf.png",
                     "confusion_matrix_1_tiny.png", "confusion_matrix_2_tiny@4.png", "summary.json"]
    summary = json.loads((tmp_path / "cmp" / "summary.json").read_text())
    export, run, step_model = summary["models"]
    assert [m["model"]["kind"] for m in summary["models"]] == ["hf_clip", "fungizsl_run", "fungizsl_run"]
    # The exported folder and the checkpoint hold the same weights: the same predictions.
    assert export["confusion_matrix"] == run["confusion_matrix"] == step_model["confusion_matrix"]
    evals = run["evals"]
    assert set(evals) == {"chils", "openset", "decisions"}
    assert 0.0 <= evals["chils"]["reweighted/accuracy"] <= 1.0
    assert evals["openset"]["num_known"] == 6 and evals["openset"]["num_unknown"] == 3
    assert evals["decisions"]["num_images"] == 9
    assert evals["decisions"]["expected_cost/poison_cost"] <= evals["decisions"]["argmax/poison_cost"] + 1e-9
    assert len(json.loads((tmp_path / "cmp" / "comparison.json").read_text())) == 3


def test_corrupt_image_is_skipped_and_counted(tiny_run, class_folder, tmp_path):
    broken = tmp_path / "broken"
    for stage in STAGES:
        (broken / stage).mkdir(parents=True)
        Image.open(class_folder / stage / "0.png").save(broken / stage / "0.png")
    (broken / "hyphae" / "bad.jpg").write_bytes(b"not a jpeg at all")
    config = evaluate_config.get_config(f"model={tiny_run}/hf_export,images={broken}")
    evaluate_only.train_and_evaluate(config, str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["num_images"] == 3 and summary["num_skipped_images"] == 1
    assert summary["skipped_images"][0]["file"] == str(broken / "hyphae" / "bad.jpg")
    # without a list to count them in, embed_images still stops on the file, naming it
    images = image_sets.folder_images(str(broken))
    with pytest.raises(augment.CorruptImageError, match="bad.jpg"):
        evaluate_only.embed_images(load.load_model(f"{tiny_run}/hf_export"), images, 4)


def test_bad_model_and_folder_errors(tmp_path, class_folder):
    with pytest.raises(ConfigError, match="is not a model folder"):
        load.load_model(str(tmp_path))
    with pytest.raises(ConfigError, match="no such folder"):
        load.load_model(str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="no images for classes"):
        image_sets.folder_images(str(class_folder), ["spore", "conidia"])
    with pytest.raises(ValueError, match="config.models is empty"):
        evaluate_only.model_specs(evaluate_config.get_config(f"images={class_folder}"))
    with pytest.raises(ValueError, match="builder:config:split"):
        evaluate_config.get_config("tfds=image_folder")


def test_trainer_flag_still_wins_over_config_field(tmp_path, class_folder):
    out = run_main(f"images={class_folder}", tmp_path / "x", "--trainer=nope")
    assert out.returncode != 0 and "trainer 'nope'" in out.stderr


def test_resnet_run_its_open_clip_export_and_checkpoint_agree(class_folder, tmp_path):
    """The main job trains rn_tiny and exports open_clip format: both the export and the run
    (its checkpoint, with BatchNorm statistics) evaluate, to the same confusion matrix."""
    run = tmp_path / "rn"
    trainer_runs.finish(trainer_runs.start_training(
        run, "--config.model.arch=rn_tiny", "--config.total_steps=3", "--config.warmup_steps=1",
        "--config.checkpoint_every=3", devices=1))
    assert (run / "open_clip_export" / "open_clip_config.json").is_file()
    out = run_main(f"model={run}/open_clip_export;{run},images={class_folder}", tmp_path / "eval")
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads((tmp_path / "eval" / "comparison.json").read_text())
    assert sorted(r["model"] for r in rows) == ["rn", "rn-open_clip"]
    assert rows[0]["zeroshot_accuracy"] == pytest.approx(rows[1]["zeroshot_accuracy"], abs=1e-6)
    export, checkpoint = (load.load_model(p) for p in (f"{run}/open_clip_export", str(run)))
    images = image_sets.folder_images(str(class_folder))
    norm = augment.get_normalization("clip")
    pixels = np.stack([augment.eval_image(images.load(i), export.image_size, norm) for i in range(len(images))])
    np.testing.assert_allclose(export.encode_images(pixels), checkpoint.encode_images(pixels), atol=1e-5)
    texts = ["round spores", "branching hyphae"]
    np.testing.assert_allclose(export.encode_texts(texts), checkpoint.encode_texts(texts), atol=1e-5)


def test_cnn_tiny_run_trains_batch_stats_and_evaluates_from_its_folder(class_folder, tmp_path):
    """The 2-core default tower has no export format: the run folder itself is the model. Its
    BatchNorm statistics are checkpointed, and evaluation-only rebuilds it from the run config."""
    from fungizsl.train import checkpoint

    run = tmp_path / "cnn"
    trainer_runs.finish(trainer_runs.start_training(
        run, "--config.model.arch=cnn_tiny", "--config.total_steps=3", "--config.warmup_steps=1",
        "--config.checkpoint_every=3", devices=1))
    assert not (run / "open_clip_export").exists() and not (run / "hf_export").exists()
    stats = checkpoint.load_variables(str(run))["batch_stats"]["vision_model"]
    assert sorted(stats) == [f"bn{i}" for i in range(5)]
    assert np.abs(np.asarray(stats["bn0"]["mean"])).max() > 0, "running statistics never moved"
    loaded = load.load_model(str(run))
    assert loaded.step == 3 and loaded.image_size == 32  # the test run renders 32 px
    out = run_main(f"model={run},images={class_folder}", tmp_path / "eval")
    assert out.returncode == 0, out.stderr[-3000:]
    summary = json.loads((tmp_path / "eval" / "summary.json").read_text())
    assert 0.0 <= summary["zeroshot_accuracy"] <= 1.0


def test_run_folder_evaluates_the_checkpoint_its_summary_selected(tiny_run, tmp_path):
    """A workdir means the model the run reported (chosen on val), not merely its newest step."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    shutil.copytree(run / "checkpoints" / "4", run / "checkpoints" / "8")  # a newer step on disk
    summary = json.loads((run / "summary.json").read_text())
    summary["selection"] = dict(summary.get("selection") or {}, step=4)
    (run / "summary.json").write_text(json.dumps(summary))
    assert runs.selected_step_folder(run) == run / "checkpoints" / "4"
    assert load.load_model(str(run)).step == 4
    (run / "summary.json").unlink()  # no summary: the newest step
    assert runs.selected_step_folder(run) == run / "checkpoints" / "8"
    assert load.load_model(str(run)).step == 8
