"""Evaluators on hand-built embeddings whose answers are worked out by hand in the comments."""

import json

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image

from fungizsl.evaluate import registry
from fungizsl.evaluate import plots, retrieval, zeroshot
from fungizsl import metrics_io

CLASSES = ["spore", "hyphae", "mycelium"]

# Class embeddings are the axes e0, e1, e2, so an image's logits are its own coordinates.
IMAGES = np.array([
    [1.0, 0.1, 0.0],  # spore    -> spore     ok
    [0.0, 1.0, 0.2],  # hyphae   -> hyphae    ok
    [0.0, 0.2, 1.0],  # mycelium -> mycelium  ok
    [0.0, 1.0, 0.5],  # mycelium -> hyphae    wrong; true class second -> top-2 hit
    [0.3, 0.0, 1.0],  # mycelium -> mycelium  ok
    [0.9, 0.0, 0.1],  # hyphae   -> spore     wrong; true class last -> top-2 miss
], np.float32)
LABELS = np.array([0, 1, 2, 2, 2, 1])


# ------------------------------------------------------------------------------ zero-shot


def test_zero_shot_metrics_on_hand_built_embeddings():
    logits = zeroshot.zero_shot_predict(IMAGES, np.eye(3))
    m = zeroshot.zero_shot_metrics(logits, LABELS, CLASSES, ks=(1, 2, 5))
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["per_class_accuracy"] == pytest.approx({"spore": 1.0, "hyphae": 0.5, "mycelium": 2 / 3})
    assert m["mean_per_class_accuracy"] == pytest.approx((1 + 0.5 + 2 / 3) / 3)
    np.testing.assert_array_equal(m["confusion"], [[1, 0, 0],   # rows: true class
                                                   [1, 1, 0],   # columns: predicted class
                                                   [0, 1, 2]])
    assert m["top_k"]["top1"] == pytest.approx(4 / 6)
    assert m["top_k"]["top2"] == pytest.approx(5 / 6)
    assert m["top_k"]["top5"] == 1.0  # k clipped to the 3 classes
    assert m["num_images"] == 6


def test_zero_shot_ties_go_to_the_lowest_class_index_and_empty_classes_are_nan():
    logits = np.array([[0.5, 0.5, 0.1], [0.2, 0.7, 0.7]])
    m = zeroshot.zero_shot_metrics(logits, [1, 2], CLASSES, ks=(1,))
    np.testing.assert_array_equal(np.argmax(m["confusion"], axis=1)[1:], [0, 1])
    assert m["accuracy"] == 0.0
    assert np.isnan(m["per_class_accuracy"]["spore"])  # no spore images
    np.testing.assert_array_equal(zeroshot.top_k_indices(logits, 2), [[0, 1], [1, 2]])
    with pytest.raises(ValueError, match="pred_logits"):
        zeroshot.zero_shot_metrics(logits[:, :2], [1, 2], CLASSES)
    with pytest.raises(ValueError, match="labels"):
        zeroshot.zero_shot_metrics(logits, [1, 3], CLASSES)


def test_prompt_ensemble_normalises_each_caption_then_the_mean():
    # Class 0's captions: e0 and 3*e1. Normalised first, their mean is (0.5, 0.5), renormalised
    # (0.707, 0.707). Averaging the raw vectors would give a vector leaning to e1 instead.
    ragged = [np.array([[1.0, 0.0], [0.0, 3.0]]), np.array([[0.0, -2.0]])]
    emb = zeroshot.class_embeddings(ragged)
    np.testing.assert_allclose(emb, [[np.sqrt(0.5), np.sqrt(0.5)], [0.0, -1.0]], atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-6)
    dense = zeroshot.class_embeddings(np.array([[[1.0, 0.0], [0.0, 3.0]], [[0.0, -2.0], [0.0, -1.0]]]))
    np.testing.assert_allclose(dense, emb, atol=1e-6)
    np.testing.assert_allclose(zeroshot.class_embeddings(np.array([[3.0, 4.0]])), [[0.6, 0.8]], atol=1e-6)
    with pytest.raises(ValueError, match="caption"):
        zeroshot.class_embeddings([np.zeros((0, 2))])


def test_zero_shot_evaluate_through_callables_in_batches():
    vectors = {"a spore": [1, 0, 0], "a round spore": [1, 0.2, 0], "hyphal threads": [0, 1, 0],
               "dense mycelium": [0, 0, 1]}
    calls = {"images": [], "texts": []}

    def encode_texts(texts):
        calls["texts"].append(len(texts))
        assert isinstance(texts, list) and all(isinstance(t, str) for t in texts)
        return np.array([vectors[t] for t in texts], np.float32)

    def encode_images(batch):
        calls["images"].append(len(batch))
        return batch * 7.0  # unnormalised on purpose

    prompts = {"spore": ["a spore", "a round spore"], "hyphae": ["hyphal threads"],
               "mycelium": ["dense mycelium"]}
    m = zeroshot.zero_shot_evaluate(encode_images, encode_texts, IMAGES, LABELS, prompts,
                                    batch_size=4, ks=(1, 2), progress=False)
    assert calls == {"images": [4, 2], "texts": [4]}
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert m["logits"].shape == (6, 3)
    np.testing.assert_array_equal(m["confusion"], [[1, 0, 0], [1, 1, 0], [0, 1, 2]])
    # An iterable of ready-made batches (a loader) works too.
    loader = iter([IMAGES[:3], IMAGES[3:]])
    m2 = zeroshot.zero_shot_evaluate(encode_images, encode_texts, loader, LABELS, prompts, progress=False)
    assert m2["accuracy"] == pytest.approx(4 / 6)


# ------------------------------------------------------------------------------ retrieval
#
# Unit text vectors whose first three coordinates are the columns of S, so with image i = e_i
# the similarity matrix is exactly S (rows images, columns texts):
#          t0   t1   t2
#    i0 [ 0.2  0.9  0.1 ]
#    i1 [ 0.5  0.3  0.6 ]
#    i2 [ 0.1  0.3  0.7 ]
S = np.array([[0.2, 0.9, 0.1], [0.5, 0.3, 0.6], [0.1, 0.3, 0.7]])
RET_IMAGES = np.eye(3, 4, dtype=np.float32)
RET_TEXTS = np.concatenate([S.T, np.sqrt(1 - (S.T ** 2).sum(1, keepdims=True))], axis=1).astype(np.float32)


def test_retrieval_similarities_are_the_table():
    np.testing.assert_allclose(RET_IMAGES @ RET_TEXTS.T, S, atol=1e-6)


def test_instance_level_recall_by_hand():
    # Pairs i <-> i.
    # image->text: i0 order t1,t0,t2 -> t0 at rank 2; i1 order t2,t0,t1 -> rank 3; i2 rank 1.
    # text->image: t0 order i1,i0,i2 -> rank 2; t1 order i0, then i1 and i2 tied at 0.3 -> the
    # lower index i1 first -> rank 2; t2 order i2,i1,i0 -> rank 1.
    m = retrieval.recall_at_k(RET_IMAGES, RET_TEXTS, ks=(1, 2, 10))
    assert not any(k.startswith("class/") for k in m)  # no labels given
    assert m["instance/image_to_text/recall@1"] == pytest.approx(1 / 3)
    assert m["instance/image_to_text/recall@2"] == pytest.approx(2 / 3)
    assert m["instance/image_to_text/recall@10"] == 1.0  # K clipped to the 3 candidates
    assert m["instance/image_to_text/median_rank"] == 2.0
    assert m["instance/text_to_image/recall@1"] == pytest.approx(1 / 3)
    assert m["instance/text_to_image/recall@2"] == 1.0
    assert m["instance/image_to_text/num_queries"] == 3


def test_ties_are_broken_by_lower_candidate_index():
    # Pair t1 with i2 instead (pairs = image -> text): t1 ranks i0 (0.9), then i1 and i2 tied;
    # i1 comes first, so i2 is at rank 3 (with ties in i2's favour it would be 2).
    m = retrieval.recall_at_k(RET_IMAGES, RET_TEXTS, pairs=np.array([0, 2, 1]), ks=(2,))
    ranks = retrieval.first_relevant_rank(RET_TEXTS, RET_IMAGES, lambda r: r[:, None] == np.array([0, 2, 1])[None, :])
    np.testing.assert_array_equal(ranks, [2, 3, 2])  # t2's paired image i1 is second after i2
    assert m["instance/text_to_image/recall@2"] == pytest.approx(2 / 3)


def test_class_level_recall_by_hand():
    # image labels [0, 1, 1], text labels [1, 1, 0].
    # image->text: i0 wants t2 (order t1,t0,t2) -> rank 3; i1 wants t0|t1 (order t2,t0,t1) ->
    # rank 2; i2 wants t0|t1 (order t2,t1,t0) -> rank 2.
    # text->image: t0 wants i1|i2 (order i1,i0,i2) -> rank 1; t1 wants i1|i2 (order i0,i1,i2)
    # -> rank 2; t2 wants i0 (order i2,i1,i0) -> rank 3.
    m = retrieval.recall_at_k(RET_IMAGES, RET_TEXTS, [0, 1, 1], [1, 1, 0], ks=(1, 2, 3, 5))
    assert m["class/image_to_text/recall@1"] == 0.0
    assert m["class/image_to_text/recall@2"] == pytest.approx(2 / 3)
    assert m["class/image_to_text/recall@3"] == 1.0
    assert m["class/image_to_text/recall@5"] == 1.0
    assert m["class/image_to_text/median_rank"] == 2.0
    assert m["class/text_to_image/recall@1"] == pytest.approx(1 / 3)
    assert m["class/text_to_image/recall@2"] == pytest.approx(2 / 3)
    # Instance-level metrics come side by side with the class-level ones.
    assert m["instance/image_to_text/recall@1"] == pytest.approx(1 / 3)
    table = retrieval.recall_table(m, ks=(1, 2))
    assert "| image to text | class | 0.000 | 0.667 |" in table
    assert "| image to text | instance | 0.333 | 0.667 |" in table


def test_rank_matches_a_stable_argsort_reference_with_many_ties():
    rng = np.random.RandomState(0)
    zimg = rng.randint(-2, 3, (40, 3)).astype(np.float32)  # coarse grid -> many exact ties
    ztxt = rng.randint(-2, 3, (25, 3)).astype(np.float32)
    zimg[(zimg == 0).all(1)] = 1
    ztxt[(ztxt == 0).all(1)] = 1
    image_labels, text_labels = rng.randint(0, 4, 40), rng.randint(0, 4, 25)
    relevant = image_labels[:, None] == text_labels[None, :]
    ranks = retrieval.first_relevant_rank(zimg, ztxt, lambda r: relevant[r], chunk=7)
    sim = retrieval._normalize(zimg) @ retrieval._normalize(ztxt).T
    for i in range(40):
        order = np.argsort(-sim[i], kind="stable")
        hits = np.flatnonzero(relevant[i][order])
        assert ranks[i] == (hits[0] + 1 if len(hits) else 0)
    tied = sum(len(row) - len(np.unique(row)) for row in np.round(sim, 6))
    assert tied > 100  # the reference really exercises tie-breaking


def test_unequal_sizes_need_pairs_and_unpaired_queries_are_left_out():
    zimg, ztxt = RET_IMAGES[:2], RET_TEXTS  # 2 images, 3 texts
    assert retrieval.recall_at_k(zimg, ztxt) == {}
    # Image 0 pairs with t2, image 1 with t0; t1 has no image and is not a query.
    m = retrieval.recall_at_k(zimg, ztxt, pairs=[2, 0], ks=(1, 2))
    # i0 order t1,t0,t2 -> t2 rank 3; i1 order t2,t0,t1 -> t0 rank 2.
    assert m["instance/image_to_text/recall@2"] == 0.5
    # t0 (wants i1): order i1,i0 -> rank 1; t2 (wants i0): order i1,i0 -> rank 2.
    assert m["instance/text_to_image/num_queries"] == 2
    assert m["instance/text_to_image/recall@1"] == 0.5
    assert m["instance/text_to_image/recall@2"] == 1.0
    with pytest.raises(ValueError, match="pairs"):
        retrieval.recall_at_k(zimg, ztxt, pairs=[0, 3])
    with pytest.raises(ValueError, match="both"):
        retrieval.recall_at_k(zimg, ztxt, image_labels=[0, 1])


# ------------------------------------------------------------------------------ plots


def _png(path):
    with Image.open(path) as image:
        return image.size, np.asarray(image.convert("L"))


def test_confusion_matrix_png(tmp_path):
    cm = np.array([[8, 1, 1], [0, 6, 4], [0, 5, 5]])
    path = plots.plot_confusion_matrix(cm, CLASSES, tmp_path / "sub" / "cm.png", title="FungalZSL",
                                       figsize=(6, 5), dpi=100)
    size, pixels = _png(path)
    assert size == (600, 500)
    assert (pixels < 128).mean() > 0.01  # something dark was drawn (text, dark cells)
    assert len(np.unique(pixels)) > 10
    default_size, _ = _png(plots.plot_confusion_matrix(cm, CLASSES, tmp_path / "cm2.png", dpi=50))
    assert default_size == (290, 290)  # 5.8 inch square for 3 classes
    with pytest.raises(ValueError, match="confusion"):
        plots.plot_confusion_matrix(cm[:2], CLASSES, tmp_path / "bad.png")


def test_per_class_bar_plot_png(tmp_path):
    path = plots.plot_per_class_accuracy({"spore": 1.0, "hyphae": 0.5, "mycelium": float("nan")},
                                         tmp_path / "bars.png", figsize=(4, 3), dpi=80)
    size, pixels = _png(path)
    assert size == (320, 240)
    assert (pixels < 200).mean() > 0.01


def test_caption_source_cross_table(tmp_path):
    results = {("gpt4o", "gpt4o"): 0.91, ("gpt4o", "llama"): 0.84, ("llama", "gpt4o"): 0.80}
    md = plots.caption_source_cross_table(results, png_path=tmp_path / "sources.png",
                                          figsize=(5, 4), dpi=60)
    assert md.splitlines() == [
        "| train \\ eval | gpt4o | llama |",
        "|---|---|---|",
        "| gpt4o | **0.910** | 0.840 |",
        "| llama | 0.800 | – |",
    ]
    size, pixels = _png(tmp_path / "sources.png")
    assert size == (300, 240)
    assert len(np.unique(pixels)) > 10


# ------------------------------------------------------------------------------ metrics I/O


def test_json_round_trip(tmp_path):
    metrics = {"accuracy": np.float32(2 / 3), "num_images": np.int64(6), "flag": np.bool_(True),
               "per_class": {"spore": 1.0, "hyphae": float("nan")}, "confusion": np.eye(2, dtype=np.int64),
               ("gpt4o", "llama"): 0.84, "name": "zeroshot", "ks": (1, 5),
               "jax": {"bf16": jnp.bfloat16(0.5), "vec": jnp.arange(2)}}
    path = metrics_io.write_json(tmp_path / "out" / "summary.json", metrics, digits=4)
    back = metrics_io.read_json(path)
    assert back == {"accuracy": 0.6667, "num_images": 6, "flag": True,
                    "per_class": {"spore": 1.0, "hyphae": None}, "confusion": [[1, 0], [0, 1]],
                    "gpt4o/llama": 0.84, "name": "zeroshot", "ks": [1, 5],
                    "jax": {"bf16": 0.5, "vec": [0, 1]}}
    assert isinstance(back["num_images"], int)
    assert "NaN" not in (tmp_path / "out" / "summary.json").read_text()
    assert list((tmp_path / "out").iterdir()) == [tmp_path / "out" / "summary.json"]  # no temp left
    with pytest.raises(TypeError):
        metrics_io.to_jsonable({"x": object()})


def test_tensorboard_scalars_written_and_read_back(tmp_path):
    from tensorboardX import SummaryWriter

    metrics = {"zeroshot": {"accuracy": np.float32(0.75), "per_class": {"spore": 1.0}},
               "confusion": np.eye(3), "name": "skip me", "steps": np.int64(3)}
    assert metrics_io.scalars(metrics) == {"zeroshot/accuracy": 0.75, "zeroshot/per_class/spore": 1.0,
                                           "steps": 3.0}
    assert metrics_io.write_scalars(tmp_path, metrics, step=10, prefix="eval") == 3
    writer = SummaryWriter(str(tmp_path / "run2"))
    metrics_io.write_scalars(writer, {"loss": 2.0}, step=1)
    metrics_io.write_scalars(writer, {"loss": 1.5}, step=2)
    writer.close()
    events = list(tmp_path.glob("events.out.tfevents.*"))
    assert len(events) == 1 and events[0].stat().st_size > 0
    back = metrics_io.read_scalars(tmp_path)
    assert back["eval/zeroshot/accuracy"] == [(10, 0.75)]
    assert back["eval/zeroshot/per_class/spore"] == [(10, 1.0)]
    assert back["eval/steps"] == [(10, 3.0)]
    assert back["loss"] == [(1, 2.0), (2, 1.5)]
    assert not any("confusion" in tag or "name" in tag for tag in back)


def test_tensorboard_on_gs_uploads_at_most_every_n_seconds_and_at_close(tmp_path, monkeypatch):
    """tensorboardX writes locally; each upload re-sends the whole events file, so a gs:// logdir
    gets one at the first log, then only once `upload_every` seconds have passed, and at close."""
    import shutil

    from fungizsl import workdir

    uploads = []  # (time of the upload, the scalars the uploaded copy holds)

    def upload_dir(local, dest):
        assert str(dest) == "gs://bucket/run/tb"
        copy = tmp_path / f"upload_{len(list(tmp_path.glob('upload_*')))}"
        shutil.copytree(local, copy)
        uploads.append((now[0], metrics_io.read_scalars(copy).get("train/loss", [])))

    monkeypatch.setattr(workdir, "upload_dir", upload_dir)
    now = [0.0]
    default = metrics_io.TensorBoard("gs://bucket/run/tb")
    assert default.upload_every == 60
    default.close()
    uploads.clear()
    tb = metrics_io.TensorBoard("gs://bucket/run/tb", upload_every=60, clock=lambda: now[0])
    for step, t in enumerate((0, 10, 59, 60, 61, 119, 130, 131), start=1):
        now[0] = float(t)
        tb.scalars({"loss": float(step)}, step, prefix="train")
    # t=0 (first), t=60 (60 s after 0), t=130 (70 s after 60); not 10, 59, 61, 119 or 131. (What an
    # upload holds may lag by the event tensorboardX's writer thread has not written yet.)
    assert [t for t, _ in uploads] == [0.0, 60.0, 130.0]
    now[0] = 140.0
    tb.close()  # drains the writer: the last upload holds every step
    assert [t for t, _ in uploads] == [0.0, 60.0, 130.0, 140.0]
    assert uploads[-1][1] == [(k, float(k)) for k in range(1, 9)]


def test_console_table():
    text = metrics_io.format_table({"zeroshot": {"accuracy": 0.666666, "n": 6}, "cm": np.eye(3)},
                                   title="eval @ step 10")
    lines = text.splitlines()
    assert lines[0] == "eval @ step 10"
    assert any(line.startswith("zeroshot/accuracy") and line.endswith("0.6667") for line in lines)
    assert any(line.startswith("zeroshot/n") and line.endswith(" 6") for line in lines)
    assert any(line.startswith("cm") and line.endswith("<array (3, 3)>") for line in lines)
    widths = {len(line) for line in lines[2:]}
    assert len(widths) == 1  # aligned columns


# ------------------------------------------------------------------------------ registry


def _embedding_inputs():
    # Images as above; one caption per class on the axes plus a second "spore" caption.
    ztxt = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 0.1, 0]], np.float32)
    return dict(zimg=IMAGES, image_labels=LABELS, ztxt=ztxt, text_labels=np.array([0, 1, 2, 0]))


def test_registry_runs_configured_evaluators(tmp_path):
    config = ml_collections.ConfigDict()
    config.evals = ml_collections.ConfigDict()
    config.evals.zeroshot = dict(class_names=CLASSES, ks=(1, 2), plot_dir=str(tmp_path))
    config.evals.retrieval_class = dict(type="retrieval", ks=(1, 10), levels=("class",))
    results = dict(registry.run_evaluators(config.evals, **_embedding_inputs()))
    assert results["zeroshot/accuracy"] == pytest.approx(4 / 6)
    assert results["zeroshot/top2"] == pytest.approx(5 / 6)
    assert results["zeroshot/per_class/hyphae"] == 0.5
    np.testing.assert_array_equal(results["zeroshot/confusion"], [[1, 0, 0], [1, 1, 0], [0, 1, 2]])
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    assert (tmp_path / "per_class_accuracy.png").stat().st_size > 0
    assert "retrieval_class/class/image_to_text/recall@1" in results
    assert results["retrieval_class/class/image_to_text/recall@10"] == 1.0
    assert not any(k.startswith("retrieval_class/instance/") for k in results)
    # A result set writes straight through metrics_io.
    metrics_io.write_json(tmp_path / "summary.json", results)
    assert json.loads((tmp_path / "summary.json").read_text())["zeroshot/confusion"][2] == [0, 1, 2]


def test_registry_lookup_errors_and_registration():
    assert registry.get_evaluator("zeroshot") is zeroshot.ZeroShotEvaluator
    assert registry.get_evaluator("retrieval") is retrieval.RetrievalEvaluator
    with pytest.raises(KeyError, match="unknown evaluator"):
        registry.get_evaluator("nope")
    # Class names from run() or, failing that, numbered; config keys meant for the trainer are ignored.
    named = dict(registry.make_evaluator("zeroshot", {"split": "test"}).run(
        **_embedding_inputs(), class_names=CLASSES))
    assert named["per_class/hyphae"] == 0.5
    numbered = dict(registry.make_evaluator("zeroshot", {}).run(**_embedding_inputs()))
    assert numbered["per_class/1"] == 0.5 and "per_class/3" not in numbered
    with pytest.raises(ValueError, match="no caption"):  # 4 classes named, class 3 has no caption
        dict(registry.make_evaluator("zeroshot", {"class_names": CLASSES + ["x"]}).run(**_embedding_inputs()))

    @registry.register("count_test")
    class Count:
        def __init__(self, config):
            self.config = config

        def run(self, *, zimg, **unused):
            yield "num_images", len(zimg)

    try:
        assert dict(registry.run_evaluators({"c": {"type": "count_test"}}, **_embedding_inputs())) == {
            "c/num_images": 6}
        with pytest.raises(ValueError, match="already registered"):
            registry.register("count_test")(type("Other", (), {}))
    finally:
        registry.EVALUATORS.pop("count_test")
    pairs = dict(registry.make_evaluator("retrieval", {}).run(
        zimg=RET_IMAGES, ztxt=RET_TEXTS, image_labels=[0, 1, 1], text_labels=[1, 1, 0]))
    assert pairs["instance/image_to_text/recall@1"] == pytest.approx(1 / 3)
    assert pairs["class/text_to_image/recall@1"] == pytest.approx(1 / 3)


def test_crosstable_collects_runs_into_one_table(tmp_path):
    import json

    from fungizsl import cli

    for source, accs in (("fungalzsl_split", {"fungalzsl_split": 0.8, "templates": 0.7}),
                         ("templates", {"fungalzsl_split": 0.6, "templates": 0.9})):
        run = tmp_path / source
        run.mkdir()
        (run / "summary.json").write_text(json.dumps({"captions": source,
                                                      "zeroshot_accuracy_by_caption_source": accs}))
    from fungizsl.evaluate import crosstable

    table = crosstable.collect([tmp_path / "fungalzsl_split", tmp_path / "templates"])
    assert table == {("fungalzsl_split", "fungalzsl_split"): 0.8, ("fungalzsl_split", "templates"): 0.7,
                     ("templates", "fungalzsl_split"): 0.6, ("templates", "templates"): 0.9}
    out = tmp_path / "table.png"
    assert cli.main(["crosstable", str(tmp_path / "fungalzsl_split"), str(tmp_path / "templates"),
                     "--out", str(out)]) == 0
    assert out.stat().st_size > 1000
    with pytest.raises(FileNotFoundError, match="summary.json is missing"):
        crosstable.collect([tmp_path / "nowhere"])
