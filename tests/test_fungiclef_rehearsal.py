"""The FungiCLEF rehearsal (`fungizsl/fungiclef/rehearsal.py`) scaled down: small CSVs in the
Kaggle column format (written here; a species only in val, one inside and one beyond the
training label range; an unlabelled test CSV) -> a random-feature cache -> `full.train_and_evaluate`
-> the submission check, through the same code as the full-size command."""

import csv
import json

import numpy as np
import pytest

from fungizsl.fungiclef import features as feat_lib
from fungizsl.fungiclef import rehearsal

# the headers of FungiTastic-FewShot-Train.csv / -Val-dev.csv and of -Test.csv (no labels, no taxonomy)
_LABELLED = ("eventDate,year,month,day,habitat,countryCode,scientificName,kingdom,phylum,class,order,family,genus,"
             "specificEpithet,hasCoordinate,species,iucnRedListCategory,substrate,latitude,longitude,coorUncert,"
             "observationID,region,district,filename,category_id,metaSubstrate,poisonous,elevation,landcover,"
             "biogeographicalRegion")
_TEST = ("eventDate,year,month,day,habitat,countryCode,hasCoordinate,substrate,latitude,longitude,coorUncert,"
         "observationID,region,district,filename,metaSubstrate,elevation,landcover,biogeographicalRegion")
LABELLED, TEST = _LABELLED.split(","), _TEST.split(",")
HABITATS = ("Deciduous woodland", "park/churchyard", "Mixed woodland (with coniferous and deciduous trees)")
SUBSTRATES = ("dead wood (including bark)", "soil", "leaf or needle litter")
TRAIN_SPECIES = (0, 1, 2, 4, 5, 6, 7, 8)  # 3 is missing: a val-only species inside the label range


def _rows(n_obs, first_id, species, year, rng):
    rows = []
    for o in range(n_obs):
        obs_id, c = first_id + o, species[o % len(species)]
        month, day = int(rng.integers(1, 13)), int(rng.integers(1, 29))
        for i in range(2):  # 2 images per observation: 20 observations -> 40 rows
            row = {"eventDate": f"{year}-{month:02d}-{day:02d}", "year": f"{year}.0", "month": f"{month}.0",
                   "day": f"{day}.0", "habitat": HABITATS[o % 3], "countryCode": "DK",
                   "scientificName": f"Genus{c // 3} species{c} (Author)", "kingdom": "Fungi",
                   "phylum": "Basidiomycota", "class": "Agaricomycetes", "order": "Agaricales", "family": "Fam",
                   "genus": f"Genus{c // 3}", "specificEpithet": f"species{c}", "hasCoordinate": "True",
                   "species": f"Genus{c // 3} species{c}", "iucnRedListCategory": "NE",
                   "substrate": SUBSTRATES[o % 3], "latitude": f"{55 + rng.uniform():.6f}",
                   "longitude": f"{10 + rng.uniform():.6f}", "coorUncert": "25.0", "observationID": str(obs_id),
                   "region": "Hovedstaden", "district": "København", "filename": f"{i}-{obs_id}.JPG",
                   "category_id": str(c), "metaSubstrate": "wood", "poisonous": str(c % 2),
                   "elevation": "" if o == 1 else "71.0", "landcover": "Croplands", "biogeographicalRegion": "continental"}
            rows.append(row)
    return rows


def _write(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


@pytest.fixture(scope="module")
def small_csvs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fungiclef_csvs")
    rng = np.random.default_rng(0)
    rows = {"train": _rows(20, 1000, TRAIN_SPECIES, 2020, rng),
            "val": _rows(5, 2000, (3, 11, 0, 4, 5), 2022, rng),  # 3 and 11: never in training
            "test": _rows(5, 3000, (1, 2), 2023, rng)}
    _write(folder / "FungiTastic-FewShot-Train.csv", LABELLED, rows["train"])
    _write(folder / "FungiTastic-FewShot-Val-dev.csv", LABELLED, rows["val"])
    _write(folder / "FungiTastic-FewShot-Test.csv", TEST, rows["test"])
    return folder, rows


def test_scaled_down_rehearsal(small_csvs, tmp_path):
    folder, rows = small_csvs
    report = rehearsal.rehearse(folder, tmp_path / "run", steps=2, width=16, tokens=9, dim=32, shard_size=8,
                                batch_size=8)
    cache = tmp_path / "run" / "features"
    assert feat_lib.is_complete(cache)
    for split, csv_rows in rows.items():
        loaded = feat_lib.load_split(cache, split)
        assert len(loaded["observation_id"]) == len(csv_rows)  # one cache row per CSV row, in order
        assert loaded["tokens"].shape == (len(csv_rows), 2, 9, 32) and loaded["tokens"].dtype == np.float16
        assert [m["filename"] for m in loaded["metadata"]] == [r["filename"] for r in csv_rows]
        groups = {}
        for o, m in zip(loaded["observation_id"], loaded["metadata"]):
            groups.setdefault(int(o), []).append(m["filename"])
        want = {}
        for r in csv_rows:
            want.setdefault(int(r["observationID"]), []).append(r["filename"])
        assert groups == want
        labels = [int(r["category_id"]) for r in csv_rows] if split != "test" else [-1] * len(csv_rows)
        assert loaded["category_id"].tolist() == labels
    meta = feat_lib.load_split(cache, "train")["metadata"][2]
    assert meta["habitat"] == rows["train"][2]["habitat"] and meta["year"] == 2020 and meta["poisonous"] in (0, 1)
    assert feat_lib.load_split(cache, "train")["metadata"][2]["elevation"] is None  # a blank stays blank

    test_ids = {int(r["observationID"]) for r in rows["test"]}
    for name in ("submission_test.csv", "submission_test_ensemble.csv"):
        lines = (tmp_path / "run" / "stage2" / name).read_text().splitlines()
        assert lines[0] == "observationId,predictions" and len(lines) == 1 + len(test_ids)
        assert {int(line.split(",")[0]) for line in lines[1:]} == test_ids
        # the label space is the training split's (classes 0..8): 9 ids per row, none of the
        # val-only species 3 (no training image) or 11 (beyond the training labels)
        predictions = [[int(c) for c in line.split(",")[1].split()] for line in lines[1:]]
        assert all(len(p) == len(set(p)) == min(10, max(TRAIN_SPECIES) + 1) for p in predictions)
        assert all(0 <= c <= max(TRAIN_SPECIES) for p in predictions for c in p)
    written = json.loads((tmp_path / "run" / "rehearsal.json").read_text())
    assert written == json.loads(json.dumps(report))
    required = [p for p in rehearsal.PHASES if p not in rehearsal.OPTIONAL_PHASES]
    assert [p for p in written["phases"] if p in required] == required
    assert [p for p in rehearsal.PHASES if p in written["phases"]] == list(written["phases"])  # in order
    assert all(p["seconds"] >= 0 and p["peak_rss_gb"] > 0 for p in written["phases"].values())
    assert written["images"] == {"train": 40, "val": 10, "test": 10}
    assert written["observations"] == {"train": 20, "val": 5, "test": 5}
    assert written["submissions"] == {"submission_test.csv": 5, "submission_test_ensemble.csv": 5}
    assert {"stage1_s", "stage2_s", "ensemble_s"} <= set(written["full_timings"])


def test_rows_keeps_the_first_observations_and_pooled_has_one_token(small_csvs, tmp_path):
    folder, _ = small_csvs
    info = rehearsal.build_cache(folder, tmp_path / "c", keep="pooled", rows=3, dim=16, shard_size=4)
    assert {s: v["num_images"] for s, v in info["splits"].items()} == {"train": 6, "val": 6, "test": 6}
    loaded = feat_lib.load_split(tmp_path / "c", "val")
    assert loaded["tokens"].shape == (6, 2, 1, 16) and len(set(loaded["observation_id"].tolist())) == 3
    assert "not DINOv2" in info["tower"] and not info["is_dinov2"]


def test_user_errors_are_one_line(small_csvs, tmp_path, capsys):
    folder, rows = small_csvs
    assert rehearsal.main([f"--csv_dir={tmp_path / 'nowhere'}", f"--workdir={tmp_path / 'w'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "nowhere" in err
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "FungiTastic-FewShot-Train.csv").write_bytes((folder / "FungiTastic-FewShot-Train.csv").read_bytes())
    assert rehearsal.main([f"--csv_dir={partial}", f"--workdir={tmp_path / 'w'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "FungiTastic-FewShot-Val" in err

    sub = tmp_path / "sub.csv"
    ids = sorted({int(r["observationID"]) for r in rows["test"]})
    sub.write_text("observationId,predictions\n" + "".join(f"{o},1 2 3\n" for o in ids))
    assert rehearsal.check_submission(sub, ids) == len(ids)
    sub.write_text("observationId,predictions\n" + "".join(f"{o},1 2 3\n" for o in ids[:-1]))
    with pytest.raises(rehearsal.SubmissionError, match="1 test observations missing"):
        rehearsal.check_submission(sub, ids)
    sub.write_text("id,predictions\n")
    with pytest.raises(rehearsal.SubmissionError, match="header"):
        rehearsal.check_submission(sub, ids)
