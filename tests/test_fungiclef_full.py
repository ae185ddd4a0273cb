"""The FungiCLEF 2025 system end to end on a tiny synthetic species set: the synthetic set read
through the real fungiclef2025 builder, the feature cache's resumption, a few steps of stage 1
and stage 2 writing the summary, and the Kaggle submission of the test split."""

import dataclasses
import json

import numpy as np
import pytest

from fungiclef_runs import TINY_SPECIES as TINY
from fungiclef_runs import tiny_full_config
from fungizsl.fungiclef import features as feat_lib
from fungizsl.fungiclef import synthetic_species as syn
FEATURES = feat_lib.FeatureConfig(image_size=32, small_patch=8, small_width=32, small_depth=1, small_heads=2,
                                  small_steps=3, small_batch=8, shard_size=8, batch_size=16,
                                  views=("identity", "hflip"))


@pytest.fixture(scope="module")
def tiny_tfds(tmp_path_factory):
    from fungizsl.data import builders

    root = tmp_path_factory.mktemp("fungiclef_tiny")
    counts = syn.write_species_set(root / "download", TINY, show_progress=False)
    builders.build("fungiclef2025", "300p", data_dir=root / "tfds", manual_dir=root / "download")
    return root, counts


def _sources(root):
    return feat_lib.sources_from_tfds(root / "tfds", "300p", ("train", "val", "test"))


def test_synthetic_set_is_shaped_like_the_real_one(tiny_tfds):
    root, counts = tiny_tfds
    sources = _sources(root)
    train = [sources["train"][i] for i in range(len(sources["train"]))]
    assert len(train) == counts["train"]["images"]
    per_species = {}
    for r in train:
        per_species.setdefault(r["category_id"], set()).add(r["observationID"])
    assert set(per_species) == set(range(TINY.num_species))
    assert all(1 <= len(v) <= 4 for v in per_species.values())
    seen = set(per_species)
    for split in ("val", "test"):
        recs = [sources[split][i] for i in range(len(sources[split]))]
        assert recs and {r["category_id"] for r in recs} <= seen  # test species were seen in training
        assert not {r["observationID"] for r in recs} & {r["observationID"] for r in train}
    years = {r["year"] for r in train}
    assert max(years) <= 2021 and {r["poisonous"] for r in train} <= {0, 1}
    assert train[0]["image"].shape == (32, 32, 3) and train[0]["habitat"] is not None


def test_feature_cache_resumes_after_an_interruption(tiny_tfds, tmp_path):
    root, _ = tiny_tfds
    sources = _sources(root)
    out = tmp_path / "features"
    feat_lib.extract(sources, out, FEATURES, show_progress=False, stop_after_shards=2)  # "killed" after 2 shards
    first = sorted(p.name for p in out.glob("*.array_record"))
    assert len(first) == 2 and not feat_lib.is_complete(out)
    mtimes = {p: (out / p).stat().st_mtime_ns for p in first}
    n = json.loads((out / feat_lib.INFO_FILE).read_text())["splits"]["train"]["num_shards"]
    assert n > 3
    partial = out / (feat_lib.shard_name("train", 2, n) + ".partial")
    partial.write_bytes(b"half a shard")  # a write cut short by the kill
    info = feat_lib.extract(sources, out, FEATURES, show_progress=False)
    assert feat_lib.is_complete(out)
    assert {p: (out / p).stat().st_mtime_ns for p in first} == mtimes  # finished shards were skipped
    assert not partial.exists()  # the cut-short shard was written again and renamed
    assert "not DINOv2" in info["tower"] and not info["is_dinov2"]

    # the resumed cache equals an uninterrupted run with the same tower
    again = tmp_path / "again"
    again.mkdir()
    (again / "small_tower.msgpack").write_bytes((out / "small_tower.msgpack").read_bytes())
    (again / "small_tower.json").write_bytes((out / "small_tower.json").read_bytes())
    feat_lib.extract(sources, again, FEATURES, show_progress=False)
    for split in ("train", "val", "test"):
        a, b = feat_lib.load_split(out, split), feat_lib.load_split(again, split)
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["observation_id"], b["observation_id"])
        assert a["tokens"].dtype == np.float16 and a["tokens"].shape[1:3] == (2, 1 + 16)
        assert a["metadata"][0]["observationID"] == a["observation_id"][0]

    with pytest.raises(Exception, match="other settings"):
        feat_lib.extract(sources, out, dataclasses.replace(FEATURES, keep="pooled"),
                         show_progress=False)


def test_tiny_pipeline_writes_summary_and_submission(tiny_tfds, tmp_path):
    from fungizsl.evaluate import observations
    from fungizsl.fungiclef import full as fungiclef_full

    root, counts = tiny_tfds
    config = tiny_full_config(root / "tfds")
    workdir = tmp_path / "run"
    summary = fungiclef_full.train_and_evaluate(config, workdir)

    written = json.loads((workdir / "summary.json").read_text())
    for key in ("top1", "top5", "macro_f1", "poison_cost", "num_observations"):
        assert written[key] is not None and summary[key] == pytest.approx(written[key], abs=1e-5)
    for base in ("nearest_neighbour", "prototype", "metadata"):
        assert 0.0 <= written["baselines"][f"{base}/top5"] <= 1.0
    assert 0.0 <= written["stage1"]["top5"] <= 1.0
    assert written["selection"]["selection_split"] == "val" and written["split"] == "test"
    assert written["selection"]["stage1"]["selection_split"] == "val"
    assert "not DINOv2" in written["tower"] and written["is_dinov2"] is False
    assert written["num_observations"] == counts["test"]["observations"]
    assert len(written["ensemble"]["members"]) >= 2 and "test" in written["ensemble"]

    # the Kaggle submission of the test split: one row per test observation, 10 class ids each
    test = feat_lib.load_split(workdir / "features", "test")
    for name in ("submission_test.csv", "submission_test_ensemble.csv"):
        path = workdir / "stage2" / name
        lines = path.read_text().splitlines()
        assert lines[0] == "observationId,predictions"
        sub = observations.read_submission(path)
        assert set(sub) == set(int(o) for o in test["observation_id"])
        assert all(len(v) == min(10, TINY.num_species) and len(set(v)) == len(v) for v in sub.values())
        assert all(0 <= c < TINY.num_species for v in sub.values() for c in v)


def test_dinov2_folder_features_equal_the_tower_applied_directly(tiny_tfds, tmp_path):
    """The DINOv2 branch: a (random) dinov2-with-registers folder exported in Hugging Face format
    is loaded by `weights.load_pretrained`; cached tokens (CLS, 4 registers, patches) equal the
    tower applied to the same view, and the cache calls the tower DINOv2."""
    import jax

    from fungizsl import weights
    from fungizsl.models import vit

    root, _ = tiny_tfds
    module = vit.VisionTransformer(vit.vit_config("dinov2_tiny_reg"))
    params = module.init(jax.random.key(0), np.zeros((1, 28, 28, 3), np.float32))["params"]
    folder = tmp_path / "dinov2-tiny-reg"
    weights.export_pretrained(module, jax.device_get(params), folder)
    sources = {"val": _sources(root)["val"], "test": _sources(root)["test"]}
    cfg = dataclasses.replace(FEATURES, tower=str(folder), image_size=28, views=("identity", "rot90"))
    info = feat_lib.extract(sources, tmp_path / "features", cfg, show_progress=False)
    assert info["is_dinov2"] and info["tower"].startswith("DINOv2 from") and info["num_registers"] == 4
    got = feat_lib.load_split(tmp_path / "features", "val")
    assert got["tokens"].shape[1:] == (2, 1 + 4 + 4, 64)
    record = sources["val"][3]
    for v, view in enumerate(cfg.views):
        image = feat_lib.normalise(feat_lib.view_image(record["image"], view, 28)[None])
        want = np.asarray(module.apply({"params": params}, image)["last_hidden_state"][0])
        np.testing.assert_allclose(got["tokens"][3, v].astype(np.float32), want, atol=2e-2, rtol=2e-2)
