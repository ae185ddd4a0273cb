"""The supervised trainer of Planktonzilla's comparison and the configs of its rows."""

import csv
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

import trainer_runs
from configs import planktonzilla as pz_config
from fungizsl import cpu_devices, placement
from fungizsl.data import augment, image_sets
from fungizsl.errors import ConfigError
from fungizsl.fungiclef import synthetic_species
from fungizsl.models import two_towers
from fungizsl.planktonzilla import compare, species
from fungizsl.planktonzilla import trainer as pz

CLASSES = ("spore", "hyphae", "mycelium")
SIZE = 32


def _classifier():
    clip = two_towers.clip_config("cnn_tiny")
    return pz.Classifier(clip, len(CLASSES))


def _init(model, seed=0):
    return dict(model.init(jax.random.PRNGKey(seed), jnp.zeros((1, SIZE, SIZE, 3))))


def _tower_embedding(model, variables, images):
    """The tower's output as training sees it: BatchNorm on the batch's own statistics."""
    out, _ = model.apply(variables, images, method=lambda m, x: m.towers.encode_image(x, train=True),
                         mutable=["batch_stats"])
    return np.asarray(out)


def test_the_head_starts_at_zero_so_the_first_loss_is_log_of_the_class_count():
    model = _classifier()
    variables = _init(model)
    assert set(variables["params"]) == {"towers", "head"}
    assert "text_model" not in variables["params"]["towers"]  # the text tower is never built
    batch = {"image": jax.random.uniform(jax.random.PRNGKey(1), (4, SIZE, SIZE, 3)), "label": jnp.array([0, 1, 2, 1])}
    params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    loss, (metrics, _) = pz.make_loss_fn(model)(params, extra, batch, None)
    assert float(loss) == pytest.approx(math.log(3), abs=1e-6)
    assert float(metrics["train_accuracy"]) == pytest.approx(0.25)  # argmax of a tie is class 0: one of four


def test_cross_entropy_with_label_smoothing_by_hand():
    model = _classifier()
    variables = _init(model)
    rng = np.random.default_rng(0)
    width = variables["params"]["head"]["kernel"].shape[0]
    kernel, bias = rng.normal(size=(width, 3)).astype(np.float32), np.array([0.3, -0.2, 0.1], np.float32)
    variables["params"] = dict(variables["params"], head={"kernel": kernel, "bias": bias})
    images = jnp.asarray(rng.uniform(size=(5, SIZE, SIZE, 3)), jnp.float32)
    labels = np.array([0, 2, 1, 1, 0])
    params, extra = variables["params"], {k: v for k, v in variables.items() if k != "params"}
    loss, _ = pz.make_loss_fn(model, label_smoothing=0.1)(params, extra, {"image": images, "label": labels}, None)
    z = _tower_embedding(model, variables, images).astype(np.float64) @ kernel + bias
    log_p = z - np.log(np.exp(z - z.max(1, keepdims=True)).sum(1, keepdims=True)) - z.max(1, keepdims=True)
    targets = np.full((5, 3), 0.1 / 3) + 0.9 * np.eye(3)[labels]
    assert float(loss) == pytest.approx(float(-(targets * log_p).sum(1).mean()), rel=1e-5)


def test_a_loaded_tower_replaces_only_the_tower():
    model = _classifier()
    fresh = jax.tree.map(np.asarray, _init(model, seed=0))
    other = jax.tree.map(np.asarray, _init(model, seed=1))
    loaded = {collection: dict(tree["towers"], text_model={"unused": np.zeros(1)})
              for collection, tree in other.items()}
    merged = pz.with_loaded_tower(fresh, loaded)
    same = jax.tree.map(np.array_equal, merged["params"]["towers"], other["params"]["towers"])
    assert all(jax.tree.leaves(same))
    assert "text_model" not in merged["params"]["towers"]
    assert np.array_equal(merged["params"]["head"]["kernel"], fresh["params"]["head"]["kernel"])
    assert all(jax.tree.leaves(jax.tree.map(np.array_equal, merged["batch_stats"]["towers"],
                                            other["batch_stats"]["towers"])))
    without = dict(loaded, params={k: v for k, v in loaded["params"].items() if k != "vision_model"})
    with pytest.raises(ValueError, match=r"lacks image-tower params entries \['vision_model'\]"):
        pz.with_loaded_tower(fresh, without)
    with pytest.raises(ValueError, match="has no 'batch_stats' variables"):
        pz.with_loaded_tower(fresh, {"params": loaded["params"]})


class _Batches:
    """Two eval batches of 8: labels chosen here, the last three rows of the second are padding."""
    class_names = CLASSES

    def eval_iterator(self, split, batch_size, tokenizer):
        assert batch_size == 8
        labels = [np.array([0, 1, 2, 2, 2, 1, 0, 2]), np.array([1, 1, 0, 0, 0, 0, 0, 0])]
        valid = [np.ones(8, bool), np.array([1, 1, 1, 1, 1, 0, 0, 0], bool)]
        for k in range(2):
            yield {"image": np.full((8, SIZE, SIZE, 3), 0.1 * k, np.float32), "label": labels[k], "valid": valid[k]}


def test_evaluation_scores_the_heads_argmax_and_skips_padding(tmp_path):
    model = _classifier()
    variables = _init(model)
    head = variables["params"]["head"]
    # a zero kernel and this bias: every image is predicted "mycelium"
    variables["params"] = dict(variables["params"], head={"kernel": np.zeros_like(head["kernel"]),
                                                          "bias": np.array([0.0, 1.0, 2.0], np.float32)})
    config = ml_collections.ConfigDict(dict(batch_size=8))
    evaluate = pz.Evaluation(config, _Batches(), model, None, placement.make_mesh())
    results = evaluate(variables, "val", {"classify": {"type": "classify"}}, 7, str(tmp_path))
    # 13 valid images: 4 mycelium (all right), 4 hyphae, 5 spore (all wrong)
    assert results["classify/accuracy"] == pytest.approx(4 / 13)
    assert results["classify/per_class/mycelium"] == 1.0 and results["classify/per_class/spore"] == 0.0
    assert results["classify/mean_per_class_accuracy"] == pytest.approx(1 / 3)
    assert results["classify/top2"] == pytest.approx(8 / 13)  # mycelium, then hyphae
    assert np.asarray(results["classify/confusion"]).tolist() == [[0, 0, 5], [0, 0, 4], [0, 0, 4]]
    assert (tmp_path / "confusion_matrix.png").is_file()
    with pytest.raises(ValueError, match="only runs type='classify' evaluators"):
        evaluate(variables, "val", {"zeroshot": {"type": "zeroshot"}}, 7, None)


BUDGET = ("total_steps", "batch_size", "lr", "wd", "warmup_steps", "eval_every", "seed", "data_seed")


@pytest.mark.parametrize("data,texts", [("growth", ("names", "descriptions")), ("defungi", ("names", "descriptions")),
                                        ("species", ("names", "descriptions", "lineage"))])
def test_every_row_of_a_data_set_has_the_same_budget_tower_and_images(data, texts):
    rows = [pz_config.get_config(f"data={data},objective=supervised,runlocal")]
    rows += [pz_config.get_config(f"data={data},objective=clip,text={t},runlocal") for t in texts]
    for key in BUDGET:
        assert len({row[key] for row in rows}) == 1, key
    for key in ("arch", "init"):
        assert len({row.model[key] for row in rows}) == 1, key
    for key in ("augment", "image_size", "kind", "preset"):
        assert len({str(row.data.get(key)) for row in rows}) == 1, key
    supervised, names, descriptions = rows[:3]
    assert supervised.trainer == "fungizsl.planktonzilla.trainer" and names.trainer == "fungizsl.fungalzsl.trainer"
    assert {cfg.type for cfg in supervised.evals.values()} == {"classify"} and supervised.best_metric == "classify/accuracy"
    assert supervised.evals.classify.split == "val" and supervised.evals.classify.every == supervised.eval_every
    def text(row):
        return row.data.captions, str(row.data.get("class_descriptions"))
    assert text(names) != text(descriptions)
    if data == "defungi":
        assert dict(names.data.class_descriptions)["GMA"][0] == "a photo of GMA."
    if data == "species":
        assert [row.data.captions for row in rows[1:]] == [f"workdir/species/texts/{t}.jsonl" for t in texts]
        assert all(row.data.kind == "folders" and row.data.folders == "workdir/species" for row in rows)
    robust = sorted(n for n in names.evals if n.startswith("robust_"))
    assert sorted(n for n in supervised.evals if n.startswith("robust_")) == robust
    assert all(supervised.evals[n].split == names.evals[n].split and supervised.evals[n].every == 0 for n in robust)


def test_config_arguments_are_checked(tmp_path):
    with pytest.raises(ValueError, match="'text' must be one of"):
        pz_config.get_config("data=growth,objective=clip,text=lineage")
    with pytest.raises(ValueError, match="'objective' must be one of"):
        pz_config.get_config("objective=linear_probe")
    config = pz_config.get_config("data=growth,objective=supervised,runlocal")
    config.evals.zeroshot = ml_collections.ConfigDict(dict(type="zeroshot", split="val", every=0))
    with pytest.raises(ValueError, match="runs only type='classify' entries"):
        pz.check_config(config)
    missing = pz_config.get_config(f"data=species,objective=supervised,runlocal,species_dir={tmp_path}/nope")
    with pytest.raises(ConfigError, match=f"config.data.folders \\(train split\\): {tmp_path}/nope/train is not a folder"):
        pz.check_config(missing)


def test_a_supervised_run_through_the_command(tmp_path):
    env = dict(cpu_devices.simulated_env(os.environ, 2), PYTHONPATH=trainer_runs.ROOT)
    cmd = [sys.executable, "-m", "fungizsl.main", "--config=configs/planktonzilla.py:data=growth,objective=supervised,runlocal",
           f"--workdir={tmp_path}", "--config.data.image_size=32", "--config.data.per_class.train=16",
           "--config.data.per_class.val=4", "--config.data.per_class.test=8", "--config.total_steps=20",
           "--config.warmup_steps=2", "--config.eval_every=10", "--config.data.robustness_per_class=2",
           "--config.model.vocab_size=300", "--config.model.text_context=24"]
    done = subprocess.run(cmd, cwd=trainer_runs.ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    confusion = np.asarray(summary["confusion_matrix"])
    assert summary["objective"] == "supervised" and confusion.sum() == 24  # 8 test images per class
    assert summary["zeroshot_accuracy"] == pytest.approx(np.trace(confusion) / 24, abs=1e-6)
    for c, k in zip(CLASSES, range(3)):
        assert summary["per_class_accuracy"][c] == pytest.approx(confusion[k, k] / confusion[k].sum(), abs=1e-6)
    assert summary["selection"]["selection_metric"] == "classify/accuracy" and summary["selection"]["selection_split"] == "val"
    assert set(summary["robustness"]) >= {"paper", "unseen", "gray"}
    assert all(np.isfinite(r["zeroshot_accuracy"]) for r in summary["robustness"].values())
    assert (tmp_path / "confusion_matrix.png").is_file() and not (tmp_path / "hf_export").exists()


def _fake_run(folder, comparison, accuracy, val, paper=None):
    folder.mkdir()
    (folder / "fungizsl_config.json").write_text(json.dumps({"trainer": "x", "comparison": comparison}))
    summary = {"step": 1000, "selection": {"selection_value": val}, "zeroshot_accuracy": accuracy,
               "zeroshot_mean_per_class_accuracy": accuracy - 0.01,
               "per_class_accuracy": {"spore": 1.0, "hyphae": 0.5}, "robustness": {}}
    if paper is not None:
        summary["robustness"]["paper"] = {"zeroshot_accuracy": paper}
    (folder / "summary.json").write_text(json.dumps(summary))
    return folder


def test_the_comparison_table_reads_finished_runs(tmp_path):
    clip = _fake_run(tmp_path / "b", {"data": "growth", "objective": "clip", "text": "names"}, 0.9, 0.88, paper=0.4)
    sup = _fake_run(tmp_path / "a", {"data": "growth", "objective": "supervised", "text": "none"}, 0.95, 0.93)
    (clip / "new_classes").mkdir()
    (clip / "new_classes" / "summary.json").write_text(json.dumps({"zeroshot_accuracy": 0.25}))
    table = compare.markdown([compare.row(clip), compare.row(sup)]).splitlines()
    assert table[2] == ("| growth | supervised | none | 1000 (0.930) | 0.950 | 0.940 | spore 1.00 / hyphae 0.50 "
                        "| — | — | — |")
    assert table[3] == ("| growth | clip | names | 1000 (0.880) | 0.900 | 0.890 | spore 1.00 / hyphae 0.50 "
                        "| 0.400 | — | 0.250 |")
    drawn = compare.plot([compare.row(clip), compare.row(sup)], tmp_path / "bars.png")
    assert Image.open(drawn).size == (600, 450)  # 6 x 4.5 in at 100 dpi: two runs, up to four bars each
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "fungizsl_config.json").write_text("{}")
    (tmp_path / "plain" / "summary.json").write_text("{}")
    for folder, message in ((tmp_path / "missing", "not a finished run"), (tmp_path / "plain", "has no 'comparison'")):
        done = subprocess.run([sys.executable, "-m", "fungizsl.cli", "comparison", str(sup), str(folder)],
                              cwd=trainer_runs.ROOT, capture_output=True, text=True, timeout=120,
                              env=dict(os.environ, PYTHONPATH=trainer_runs.ROOT))
        assert done.returncode == 2 and done.stdout == ""
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr
        assert done.stderr.startswith(f"fungizsl comparison: {folder}: ") and message in done.stderr


def _png(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def test_class_folders_as_a_training_source(tmp_path):
    for split, cls, name, value in [("train", "b", "1.png", 10), ("train", "a", "2.png", 20), ("train", "a", "3.png", 30),
                                    ("val", "b", "4.png", 40)]:
        _png(tmp_path / split / cls / name, value)
    train = image_sets.FolderSource(tmp_path / "train")
    assert train.class_names == ("a", "b") and len(train) == 3
    assert [train[i]["label"] for i in range(3)] == [0, 0, 1]
    assert np.asarray(augment.load_image(train[2]["image"], where="x"))[0, 0, 0] == 10  # b/1.png
    val = image_sets.FolderSource(tmp_path / "val", class_names=train.class_names)  # no "a" images: fine
    assert len(val) == 1 and val[0]["label"] == 1 and val[0]["filename"].endswith("val/b/4.png")
    _png(tmp_path / "test" / "c" / "5.png", 50)
    with pytest.raises(ConfigError, match=r"test has class folders the training split does not: \['c'\]"):
        image_sets.FolderSource(tmp_path / "test", class_names=train.class_names)
    with pytest.raises(ConfigError, match=r"nothing is not a folder"):
        image_sets.FolderSource(tmp_path / "nothing")


def test_species_texts_say_what_the_drawing_parameters_draw():
    look = dict(shape=2, hue=0.62, sat=0.7, val=0.9, cap_w=0.7, cap_h=0.3, stem_w=0.1, stem_h=0.45, gills=7,
                spots=1.0, ring=0.0)
    assert species.describe(look) == ("a mushroom with a broad conical blue cap, spotted, with 7 gills, "
                                      "no ring on a tall slender stem")
    assert species.colour_words(0.02, 0.9, 0.5) == "dark red"
    assert species.colour_words(0.3, 0.3, 0.9) == "pale greyish green"
    assert species.colour_words(0.18, 0.9, 0.9) == "bright yellow"


def test_species_folders_keep_new_classes_out_of_every_training_split(tmp_path):
    record = species.write_species_folders(tmp_path, synthetic_species.SpeciesSetConfig(num_species=20, image_size=16),
                                           new_classes=0.25, show_progress=False)
    held = {species.folder_name(n) for n in record["new_classes"]}
    assert len(held) == 5
    on_disk = {split: {d.name: len(list(d.iterdir())) for d in (tmp_path / split).iterdir()}
               for split in ("train", "val", "test", "new_classes")}
    assert set(on_disk["new_classes"]) == held
    assert not any(held & set(on_disk[split]) for split in ("train", "val", "test"))
    assert set(on_disk["val"]) <= set(on_disk["train"]) and set(on_disk["test"]) <= set(on_disk["train"])
    csv_rows = sum(len(list(csv.DictReader((tmp_path / "kaggle" / synthetic_species.CSV_DIR / f).open())))
                   for f in synthetic_species.CSV_FILES.values())
    assert sum(sum(v.values()) for v in on_disk.values()) == csv_rows == sum(v["images"] for v in record["folders"].values())
    for text in species.TEXTS:
        lines = [json.loads(line) for line in (tmp_path / "texts" / f"{text}.jsonl").read_text().splitlines()]
        assert {line["class"] for line in lines} == set(on_disk["train"]) | held
    lineage = {json.loads(x)["class"]: json.loads(x)["text"] for x in (tmp_path / "texts" / "lineage.jsonl").open()}
    some = sorted(on_disk["train"])[0]
    assert lineage[some].startswith("Fungi Basidiomycota Agaricomycetes Agaricales ")
    assert lineage[some].endswith(" " + some.replace("_", " "))
