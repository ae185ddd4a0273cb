"""Tests of the TFDS builders (fungizsl.data.builders): build tiny fixtures, read them back.

Every dataset is built into tmp_path and read back through ``as_data_source`` (array_record random
access, the path Grain uses), without TensorFlow. Fixtures are written here, in the formats of
the real data; the real FungiCLEF metadata is used only by the test that skips without it.
"""

import argparse
import collections
import csv
import io
import json
import logging
import math
import pickle
import re
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from fungizsl.data import builders
from fungizsl.data.builders import fungiclef2025 as fc
from fungizsl.data.builders import image_folder as imf
from fungizsl.data.builders._common import BadImage, read_image_file
from fungizsl.data.builders.fungal_growth_stages import FungalGrowthStages, GrowthStagesConfig
from fungizsl.data.synthetic import STAGES, RenderConfig, render_image

tfds.disable_progress_bar()


def _records(builder, split):
    source = builder.as_data_source(split)
    return [source[i] for i in range(len(source))]


def _jpeg(size=(20, 16), colour=(120, 80, 40), mode="RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour if mode == "RGB" else colour[0]).save(buf, format="JPEG")
    return buf.getvalue()


def _skipped_names(caplog) -> str:
    """Warnings logged so far by this test, its fixtures included."""
    records = caplog.get_records("setup") + caplog.get_records("call")
    return "\n".join(r.getMessage() for r in records if r.levelno >= logging.WARNING)


# ----------------------------------------------------------------------------------------------
# fungal_growth_stages
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_builds(tmp_path_factory):
    """The tiny config built twice, into two data dirs."""
    out = []
    for name in ("a", "b"):
        builder = FungalGrowthStages(config="tiny", data_dir=tmp_path_factory.mktemp(name))
        builder.download_and_prepare()
        out.append(builder)
    return out


def test_growth_stages_counts_and_balance(tiny_builds):
    builder = tiny_builds[0]
    cfg = builder.builder_config
    expected = {"train": cfg.train_per_class, "val": cfg.val_per_class, "test": cfg.test_per_class}
    assert expected == {"train": 4, "val": 2, "test": 2}
    indices = {}
    for split, per_class in expected.items():
        records = _records(builder, split)
        assert len(records) == per_class * len(STAGES)
        labels = collections.Counter(int(r["label"]) for r in records)
        assert labels == {c: per_class for c in range(len(STAGES))}
        for r in records:
            assert r["class_name"].decode() == STAGES[int(r["label"])]
            assert r["image"].shape == (32, 32, 3) and r["image"].dtype == np.uint8
        indices[split] = {(r["class_name"], int(r["index"])) for r in records}
    assert not indices["train"] & indices["val"] and not indices["train"] & indices["test"]
    assert not indices["val"] & indices["test"]
    assert builder.info.features["label"].names == list(STAGES)
    assert "caption" not in builder.info.features


def test_growth_stages_pixels_are_the_renderer_and_deterministic(tiny_builds):
    first, second = ({(r["class_name"].decode(), int(r["index"])): r["image"] for r in _records(b, "val")}
                     for b in tiny_builds)
    assert first.keys() == second.keys()
    render_config = RenderConfig(image_size=32, preset="realistic", hyphae_mycelium_overlap=0.3)
    for key, image in first.items():
        np.testing.assert_array_equal(image, second[key])
        np.testing.assert_array_equal(image, render_image(key[0], key[1], 0, render_config))  # PNG: lossless


def test_growth_stages_records_carry_the_scene_of_their_image(tiny_builds):
    from fungizsl.data.scene_params import SceneParams
    from fungizsl.data.synthetic import render_scene

    render_config = RenderConfig(image_size=32, preset="realistic", hyphae_mycelium_overlap=0.3)
    records = _records(tiny_builds[0], "train")
    for r in records:
        stage, index = r["class_name"].decode(), int(r["index"])
        assert SceneParams.from_json(r["scene"]) == render_scene(stage, index, 0, render_config)[1]
    assert len({r["scene"] for r in records}) == len(records)


def test_growth_stages_scene_caption_config(tmp_path):
    config = GrowthStagesConfig(name="tiny_scene", image_size=32, train_per_class=3, val_per_class=0,
                                test_per_class=0, encoding="png", caption_source="scene")
    builder = FungalGrowthStages(config=config, data_dir=tmp_path)
    builder.download_and_prepare()
    records = _records(builder, "train")
    captions = [r["caption"].decode() for r in records]
    assert len(set(captions)) == len(records)
    for r, text in zip(records, captions):
        if r["class_name"] == b"spore":
            assert re.search(r"spore|conidi|cell", text), text
        else:
            assert re.search(r"hypha|filament", text), text


def test_growth_stages_caption_config(tmp_path):
    config = GrowthStagesConfig(name="tiny_templates", image_size=32, train_per_class=2, val_per_class=0,
                                test_per_class=1, encoding="jpeg", caption_source="templates")
    builder = FungalGrowthStages(config=config, data_dir=tmp_path)
    builder.download_and_prepare()
    assert set(builder.info.splits) == {"train", "test"}  # an empty split is left out
    from fungizsl.data.captions import get_caption_source

    texts = get_caption_source("templates").by_class()
    for r in _records(builder, "train"):
        assert r["caption"].decode() in texts[r["class_name"].decode()]
        assert r["image"].shape == (32, 32, 3)


def test_growth_stages_config_validation():
    with pytest.raises(ValueError, match="unknown stage"):
        GrowthStagesConfig(name="x", stages=("spore", "fruiting_body"))
    with pytest.raises(ValueError, match="encoding"):
        GrowthStagesConfig(name="x", encoding="webp")
    with pytest.raises(ValueError, match="magnification"):
        GrowthStagesConfig(name="x", magnification=(2.0, 1.0))


def test_growth_stages_cli_options_reach_the_renderer():
    """--magnification and --field-fraction change the render config (and so the derived name)."""
    parser = argparse.ArgumentParser(prog="fungizsl")
    builders.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["build", "fungal_growth_stages", "--config", "realistic_224_randomised",
                              "--magnification", "0.3,3.2", "--field-fraction", "0.5"])
    config = builders._cli_config(args)
    render = config.render_config()
    assert render.magnification == (0.3, 3.2) and render.field_fraction == 0.5 and render.white_background
    assert config.name.startswith("realistic_224_randomised_") and config.name != "realistic_224_randomised"
    with pytest.raises(SystemExit):
        parser.parse_args(["build", "fungal_growth_stages", "--magnification", "0.3"])


# ----------------------------------------------------------------------------------------------
# fungiclef2025
# ----------------------------------------------------------------------------------------------

TRAIN_COLUMNS = ("eventDate,year,month,day,habitat,countryCode,scientificName,kingdom,phylum,class,order,family,"
                 "genus,specificEpithet,hasCoordinate,species,iucnRedListCategory,substrate,latitude,longitude,"
                 "coorUncert,observationID,region,district,filename,category_id,metaSubstrate,poisonous,elevation,"
                 "landcover,biogeographicalRegion").split(",")
TEST_COLUMNS = ("eventDate,year,month,day,habitat,countryCode,hasCoordinate,substrate,latitude,longitude,coorUncert,"
                "observationID,region,district,filename,metaSubstrate,elevation,landcover,biogeographicalRegion"
                ).split(",")


def _row(**kw):
    base = dict(eventDate="2021-01-09", year="2021", month="1.0", day="9.0", habitat="Deciduous woodland",
                countryCode="DK", scientificName="Amanita muscaria (L.) Lam.", kingdom="Fungi",
                phylum="Basidiomycota", **{"class": "Agaricomycetes", "order": "Agaricales"},
                family="Amanitaceae", genus="Amanita", specificEpithet="muscaria", hasCoordinate="True",
                species="Amanita muscaria", iucnRedListCategory="LC", substrate="soil", latitude="55.984315",
                longitude="10.014755", coorUncert="75.0", observationID="1001", region="Midtjylland",
                district="Skanderborg", filename="0-1001.JPG", category_id="5", metaSubstrate="jord",
                poisonous="1", elevation="30.0", landcover="Mixed Forests", biogeographicalRegion="continental")
    base.update(kw)
    return base


TRAIN_ROWS = [
    _row(),
    _row(filename="1-1001.JPG"),
    _row(observationID="1002", filename="0-1002.JPG", kingdom="Protozoa", phylum="Mycetozoa", category_id="7",
         **{"class": "", "order": ""}, family="", substrate="", coorUncert="", elevation="", region="",
         poisonous="0", scientificName="Fuligo septica (L.) F.H.Wigg.", species="Fuligo septica"),
    _row(observationID="1003", filename="0-1003.JPG", category_id="9"),  # corrupt image
    _row(observationID="1004", filename="0-1004.JPG", category_id="9"),  # missing image
]
VAL_ROWS = [
    _row(eventDate="2022-03-02", year="2022.0", month="3.0", day="2.0", observationID="2001", filename="0-2001.JPG",
         category_id="7"),
    _row(eventDate="2022-03-04", year="2022.0", month="3.0", day="4.0", observationID="2002", filename="0-2002.JPG",
         category_id="5", biogeographicalRegion=""),
]
TEST_ROWS = [
    {**{c: _row()[c] for c in TEST_COLUMNS}, "year": "2023.0", "eventDate": "2023-05-01", "observationID": "3001",
     "filename": "0-3001.JPG"},
    {**{c: _row()[c] for c in TEST_COLUMNS}, "year": "2023.0", "observationID": "3001", "filename": "1-3001.JPG"},
    {**{c: _row()[c] for c in TEST_COLUMNS}, "year": "2023.0", "observationID": "3002", "filename": "0-3002.JPG",
     "hasCoordinate": "False", "latitude": "", "longitude": ""},
]


def _write_csv(path, columns, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def kaggle_dir(tmp_path_factory):
    """A Kaggle-layout FungiCLEF 2025 download in miniature, with its real-world faults."""
    root = tmp_path_factory.mktemp("fungiclef")
    meta = root / "metadata" / "FungiTastic-FewShot"
    _write_csv(meta / "FungiTastic-FewShot-Train.csv", TRAIN_COLUMNS, TRAIN_ROWS)
    _write_csv(meta / "FungiTastic-FewShot-Val-dev.csv", TRAIN_COLUMNS, VAL_ROWS)
    _write_csv(meta / "FungiTastic-FewShot-Test.csv", TEST_COLUMNS, TEST_ROWS)
    for split, rows in (("train", TRAIN_ROWS), ("val", VAL_ROWS), ("test", TEST_ROWS)):
        folder = root / "images" / "FungiTastic-FewShot" / split / "300p"
        folder.mkdir(parents=True)
        for i, row in enumerate(rows):
            name = row["filename"]
            if name == "0-1004.JPG":
                continue  # missing
            if name == "0-1003.JPG":
                (folder / name).write_bytes(_jpeg()[:200])  # truncated: the header reads, the pixels do not
            elif name == "0-3002.JPG":
                (folder / name).write_bytes(_jpeg(size=(12, 10), mode="L"))  # greyscale: stored as RGB
            else:
                (folder / name).write_bytes(_jpeg(size=(20 + i, 16), colour=(10 * i, 80, 40)))
    captions = root / "captions"
    (captions / "train").mkdir(parents=True)
    (captions / "val").mkdir(parents=True)
    (captions / "train" / "0-1001.JPG.json").write_text(json.dumps("A red cap with white warts."))
    (captions / "train" / "0-1002.json").write_text(json.dumps("A yellow foam on bark."))  # stem-only name
    (captions / "train" / "1-1001.JPG.json").write_text("{not json")
    (captions / "val" / "0-2002.JPG.json").write_text(json.dumps("Small brown cap, ære."))
    return root


@pytest.fixture
def kaggle_build(kaggle_dir, tmp_path, caplog):
    """The 300p config built from kaggle_dir; caplog holds the build's log."""
    caplog.set_level(logging.INFO, logger="fungizsl")
    builder = fc.FungiClef2025(config="300p", data_dir=tmp_path, manual_dir=kaggle_dir)
    builder.download_and_prepare()
    return builder, caplog


def test_fungiclef_counts_and_skips(kaggle_build):
    builder, caplog = kaggle_build
    assert {s: builder.info.splits[s].num_examples for s in ("train", "val", "test")} == {
        "train": 3, "val": 2, "test": 3}
    warnings = _skipped_names(caplog)
    assert "0-1003.JPG: corrupt image" in warnings
    assert "0-1004.JPG: missing file" in warnings
    assert "wrote 3 examples, skipped 2 (corrupt image: 1, missing file: 1)" in warnings
    assert "1-1001.JPG" in warnings and "unreadable caption" in warnings
    skipped = builder.info.metadata["skipped"]
    assert sorted(s["file"] for s in skipped["train"]["skipped"]) == ["0-1003.JPG", "0-1004.JPG"]
    assert skipped["val"]["skipped"] == [] and skipped["test"]["skipped"] == []


def test_fungiclef_typed_fields(kaggle_build):
    builder, _ = kaggle_build
    train = {r["filename"].decode(): r for r in _records(builder, "train")}
    assert list(train) == ["0-1001.JPG", "1-1001.JPG", "0-1002.JPG"]  # CSV order kept
    full, blank = train["0-1001.JPG"], train["0-1002.JPG"]
    assert (int(full["year"]), int(full["month"]), int(full["day"])) == (2021, 1, 9)
    assert int(full["observationID"]) == 1001 and int(full["category_id"]) == 5 and int(full["poisonous"]) == 1
    assert full["latitude"] == pytest.approx(55.984315, abs=1e-5) and float(full["coorUncert"]) == 75.0
    assert bool(full["hasCoordinate"]) is True
    assert full["class"] == b"Agaricomycetes" and full["caption"] == b"A red cap with white warts."
    assert full["image"].shape == (16, 20, 3)
    assert blank["kingdom"] == b"Protozoa" and blank["class"] == b"" and blank["substrate"] == b""
    assert math.isnan(blank["coorUncert"]) and math.isnan(blank["elevation"])
    assert int(blank["poisonous"]) == 0 and blank["caption"] == b"A yellow foam on bark."
    assert train["1-1001.JPG"]["caption"] == b""  # malformed caption file: none

    val = {r["filename"].decode(): r for r in _records(builder, "val")}
    assert {int(r["year"]) for r in val.values()} == {2022}  # "2022.0"
    assert val["0-2002.JPG"]["caption"].decode() == "Small brown cap, ære."
    assert val["0-2002.JPG"]["biogeographicalRegion"] == b""

    test = {r["filename"].decode(): r for r in _records(builder, "test")}
    assert {int(r["category_id"]) for r in test.values()} == {-1}
    assert {int(r["poisonous"]) for r in test.values()} == {-1}
    assert {r["species"] for r in test.values()} == {b""}
    assert {int(r["year"]) for r in test.values()} == {2023}
    nocoord = test["0-3002.JPG"]
    assert bool(nocoord["hasCoordinate"]) is False and math.isnan(nocoord["latitude"])
    assert nocoord["image"].shape == (10, 12, 3)  # greyscale JPEG re-encoded as RGB
    assert [int(r["observationID"]) for r in test.values()] == [3001, 3001, 3002]


def test_fungiclef_metadata_only_and_flat_layout(kaggle_dir, tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    meta = kaggle_dir / "metadata" / "FungiTastic-FewShot"
    (flat / "FungiTastic-FewShot-Train.csv").write_bytes((meta / "FungiTastic-FewShot-Train.csv").read_bytes())
    (flat / "FungiTastic-FewShot-Val.csv").write_bytes((meta / "FungiTastic-FewShot-Val-dev.csv").read_bytes())
    (flat / "FungiTastic-FewShot-Test.csv").write_bytes((meta / "FungiTastic-FewShot-Test.csv").read_bytes())
    builder = fc.FungiClef2025(config="metadata_only", data_dir=tmp_path / "data")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=str(flat)))
    assert "image" not in builder.info.features
    train = _records(builder, "train")
    assert len(train) == 5  # no image check: the rows with a bad or missing image are kept
    assert [int(r["observationID"]) for r in train] == [1001, 1001, 1002, 1003, 1004]
    assert builder.info.metadata["source_csv"]["val"].endswith("FungiTastic-FewShot-Val.csv")
    first_two = fc.FungiClefConfig(name="meta_first2", resolution=None, max_rows_per_split=2)
    small = fc.FungiClef2025(config=first_two, data_dir=tmp_path / "data", manual_dir=flat)
    small.download_and_prepare()
    assert {s: small.info.splits[s].num_examples for s in ("train", "val", "test")} == {
        "train": 2, "val": 2, "test": 2}


def test_fungiclef_images_absent_is_a_clear_error(tmp_path):
    _write_csv(tmp_path / "m" / "FungiTastic-FewShot-Train.csv", TRAIN_COLUMNS, TRAIN_ROWS[:1])
    builder = fc.FungiClef2025(config="300p", data_dir=tmp_path / "data", manual_dir=tmp_path / "m")
    with pytest.raises(FileNotFoundError, match="metadata_only"):
        builder.download_and_prepare()


def test_fungiclef_field_parsers():
    assert fc.parse_int("2021") == 2021 and fc.parse_int("2022.0") == 2022 and fc.parse_int("1.0") == 1
    assert fc.parse_int("") == -1 and fc.parse_int(" nan ") == -1 and fc.parse_int(None) == -1
    assert fc.parse_int("4100090298") == 4100090298
    with pytest.raises(ValueError):
        fc.parse_int("1.5")
    with pytest.raises(ValueError):
        fc.parse_int("May")
    assert math.isnan(fc.parse_float("")) and fc.parse_float("71.0") == 71.0
    assert fc.parse_bool("True") is True and fc.parse_bool("false") is False and fc.parse_bool("") is None
    with pytest.raises(ValueError, match="line 7.*'year'"):
        fc.typed_row(_row(year="MMXXI"), "x.csv:line 7")


def test_builder_pickles_with_manual_dir(kaggle_dir, tmp_path):
    builder = fc.FungiClef2025(config="metadata_only", data_dir=tmp_path, manual_dir=kaggle_dir)
    clone = pickle.loads(pickle.dumps(builder))
    assert clone.manual_dir == builder.manual_dir and clone.builder_config.name == "metadata_only"


def test_fungiclef_real_metadata_only(shared_data, tmp_path):
    """The real FungiCLEF 2025 CSVs (no images): about 4 s to build, 1 s to read back."""
    folder = shared_data / "fungiclef2025"
    if not (folder / "FungiTastic-FewShot-Train.csv").is_file():
        pytest.skip(f"{folder} has no FungiCLEF 2025 CSVs")
    builder = builders.build("fungiclef2025", "metadata_only", data_dir=tmp_path, manual_dir=folder)
    rows, observations = {}, {}
    for split in ("train", "val", "test"):
        source = builder.as_data_source(split)
        records = source.__getitems__(range(len(source)))
        rows[split] = len(records)
        observations[split] = len({int(r["observationID"]) for r in records})
        categories = {int(r["category_id"]) for r in records}
        if split == "test":
            assert categories == {-1}
        else:
            assert min(categories) >= 0
    assert rows == {"train": 7819, "val": 1185, "test": 1911}
    assert observations == {"train": 4293, "val": 550, "test": 999}
    reread = tfds.data_source("fungiclef2025/metadata_only", split="val", data_dir=tmp_path)
    assert {int(reread[i]["year"]) for i in range(0, len(reread), 50)} == {2022}


# ----------------------------------------------------------------------------------------------
# image_folder
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def defungi_like(tmp_path_factory):
    """Two classes of DeFungi-named patches: slides H<k>_<n>, letters a/b, patches 1..2."""
    root = tmp_path_factory.mktemp("defungi")
    files = {}
    for cls, k, slides in (("AAA", 1, range(100, 108)), ("BBB", 2, range(200, 206))):
        (root / cls).mkdir()
        for n in slides:
            for letter in "ab":
                for patch in (1, 2):
                    name = f"H{k}_{n}{letter}_{patch}.jpg"
                    (root / cls / name).write_bytes(_jpeg(size=(8, 8), colour=(n % 256, patch * 50, 9)))
                    files[f"{cls}/{name}"] = f"H{k}_{n}"
    (root / "AAA" / "H1_100a_9.jpg").write_bytes(b"\xff\xd8 this is not a jpeg")
    (root / "AAA" / "notes.txt").write_text("not an image")
    return root, files


def test_image_folder_groups_never_straddle_splits(defungi_like, tmp_path, caplog):
    root, files = defungi_like
    caplog.set_level(logging.INFO, logger="fungizsl")
    builder = imf.ImageFolder(config="defungi", data_dir=tmp_path, manual_dir=root)
    builder.download_and_prepare()
    assert builder.info.features["label"].names == ["AAA", "BBB"]
    groups_by_split, seen = {}, collections.Counter()
    for split in ("train", "val", "test"):
        records = _records(builder, split)
        assert records, f"split {split} is empty"
        for r in records:
            name = r["filename"].decode()
            seen[name] += 1
            assert r["group"].decode() == files[name]
            assert r["class_name"].decode() == ["AAA", "BBB"][int(r["label"])] == name.split("/")[0]
            assert r["image"].shape == (8, 8, 3)
        groups_by_split[split] = {r["group"] for r in records}
    assert not groups_by_split["train"] & groups_by_split["val"]
    assert not groups_by_split["train"] & groups_by_split["test"]
    assert not groups_by_split["val"] & groups_by_split["test"]
    assert set(seen) == set(files) and set(seen.values()) == {1}  # each good file once; corrupt one out
    assert "AAA/H1_100a_9.jpg: corrupt image" in _skipped_names(caplog)
    skipped = [s["file"] for split in builder.info.metadata["skipped"].values() for s in split["skipped"]]
    assert skipped == ["AAA/H1_100a_9.jpg"]
    # reading back needs no manual_dir: label names come from the prepared dataset
    reopened = imf.ImageFolder(config="defungi", data_dir=tmp_path)
    assert reopened.info.features["label"].names == ["AAA", "BBB"]


def test_assign_splits_deterministic_fractions_and_hash():
    items = [imf.Item(f"C{c}/G{c}_{g}_{p}.jpg", c, f"G{c}_{g}") for c in range(2) for g in range(60)
             for p in range(3)]
    classes = ["C0", "C1"]
    cfg = imf.ImageFolderConfig(name="t", group_regex=r"^(G\d+_\d+)")
    first = imf.assign_splits(items, cfg, classes)
    assert first == imf.assign_splits(list(reversed(items)), cfg, classes)
    sizes = {name: len(members) for name, members in first.items()}
    assert sum(sizes.values()) == len(items)
    assert abs(sizes["train"] / len(items) - 0.7) < 0.03 and abs(sizes["test"] / len(items) - 0.15) < 0.03
    other_seed = imf.assign_splits(items, imf.ImageFolderConfig(name="t", seed=1), classes)
    assert other_seed != first
    hashed = imf.assign_splits(items, imf.ImageFolderConfig(name="t", split_method="hash"), classes)
    for assignment in (first, hashed):
        owner = {}
        for name, members in assignment.items():
            for m in members:
                assert owner.setdefault(m.group, name) == name
    assert cfg.group_of("G1_12_3.jpg") == "G1_12" and cfg.group_of("other.jpg") is None
    assert imf.ImageFolderConfig(name="t").group_of("H2_102a_1.jpg") == "H2_102"


def test_read_image_file_rejects_bad_data(tmp_path):
    with pytest.raises(BadImage, match="missing file"):
        read_image_file(tmp_path / "absent.jpg")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(BadImage, match="empty file"):
        read_image_file(tmp_path / "empty.jpg")
    good = _jpeg()
    (tmp_path / "good.jpg").write_bytes(good)
    assert read_image_file(tmp_path / "good.jpg") == (good, (16, 20))  # RGB JPEG kept byte for byte


# ----------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------


def _cli(argv):
    parser = argparse.ArgumentParser(prog="fungizsl")
    builders.register_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


def test_cli_builds_each_builder(defungi_like, kaggle_dir, tmp_path, capsys):
    root, _ = defungi_like
    data = str(tmp_path)
    assert _cli(["build", "fungal_growth_stages", "--config", "tiny", "--data-dir", data, "--no-progress",
                 "--train-per-class", "1", "--val-per-class", "1", "--test-per-class", "1"]) == 0
    out = capsys.readouterr().out
    assert "fungal_growth_stages/tiny_" in out and "train: 3 examples" in out
    assert _cli(["build", "fungiclef2025", "--metadata-only", "--manual-dir", str(kaggle_dir), "--data-dir", data,
                 "--no-progress"]) == 0
    assert "fungiclef2025/metadata_only/1.0.0" in capsys.readouterr().out
    assert _cli(["build", "image_folder", "--manual-dir", str(root), "--data-dir", data, "--no-progress",
                 "--no-groups", "--name", "files"]) == 0
    out = capsys.readouterr().out
    assert "image_folder/files/1.0.0" in out
    source = builders.data_source("image_folder", "train", "files", data_dir=data)
    assert len(source) > 0
    assert _cli(["build", "fungiclef2025", "--metadata-only", "--config", "720p", "--manual-dir", str(kaggle_dir),
                 "--data-dir", data]) == 2


def test_no_tensorflow_imported():
    """Everything above built and read datasets without importing TensorFlow."""
    assert "tensorflow" not in sys.modules
