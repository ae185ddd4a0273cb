"""FungiCLEF inputs at their real cost: the feature cache loads with one peak, and the raw CLS
features per observation are sliced before the gather by observation (issue 19, part 2).
Expected values are written out by hand."""

import json
import tracemalloc
import types

import numpy as np
import pytest

from fungizsl.errors import ConfigError
from fungizsl.fungiclef import features as feat_lib
from fungizsl.fungiclef import splits


def _write_cache(folder, split: str, tokens: np.ndarray, shard_size: int, num_images=None) -> None:
    """A feature cache in the extractor's own format: `tokens` [N, V, T, D] in shards."""
    folder.mkdir(parents=True, exist_ok=True)
    n = len(tokens)
    num_shards = -(-n // shard_size)
    for s in range(num_shards):
        records = [feat_lib.encode_record(tokens[i], 1000 + i // 2, 7 * i, i, json.dumps({"i": i}).encode())
                   for i in range(s * shard_size, min(n, (s + 1) * shard_size))]
        feat_lib._write_shard(folder / feat_lib.shard_name(split, s, num_shards), records)
    info = {"tower": "hand", "is_dinov2": False, "num_registers": 0, "settings": {},
            "splits": {split: {"num_images": n if num_images is None else num_images, "num_shards": num_shards}}}
    (folder / feat_lib.INFO_FILE).write_text(json.dumps(info))


def test_the_cache_loads_in_record_order_with_a_peak_of_one_copy_plus_one_shard(tmp_path):
    # 64 images of 2 views x 33 tokens x 128 float16 = 16,896 bytes each: 1,081,344 bytes in all.
    n, shard_size = 64, 8
    tokens = (np.arange(n * 2 * 33 * 128) % 251).astype(np.float16).reshape(n, 2, 33, 128)
    _write_cache(tmp_path, "train", tokens, shard_size)

    tracemalloc.start()
    loaded = feat_lib.load_split(tmp_path, "train")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    np.testing.assert_array_equal(loaded["tokens"], tokens)
    assert loaded["tokens"].dtype == np.float16
    assert loaded["observation_id"].tolist() == [1000 + i // 2 for i in range(n)]
    assert loaded["category_id"].tolist() == [7 * i for i in range(n)]
    assert [m["i"] for m in loaded["metadata"]] == list(range(n))
    split_bytes, shard_bytes = n * 16_896, shard_size * 16_896  # 1,081,344 and 135,168
    # The split once, plus one chunk of raw records and its decoded copy (here the whole 8-image
    # shard: chunks are 64 records) and 64 KiB for the Python objects. Stacking a list of every
    # record would need twice the split.
    assert peak < split_bytes + 3 * shard_bytes + 65_536, peak
    assert peak < 2 * split_bytes


def test_a_large_shard_is_read_a_chunk_at_a_time(tmp_path):
    # One shard of 512 images (16,896 bytes each): the loader reads 64 records at a time, so what it
    # holds beside the split does not grow with the shard (reading it whole held raw bytes and
    # decoded records of all 512, 3 x 8.65 MB).
    n = 512
    tokens = (np.arange(n * 2 * 33 * 128) % 251).astype(np.float16).reshape(n, 2, 33, 128)
    _write_cache(tmp_path, "train", tokens, shard_size=n)
    tracemalloc.start()
    loaded = feat_lib.load_split(tmp_path, "train")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    np.testing.assert_array_equal(loaded["tokens"], tokens)
    assert peak < n * 16_896 + 3 * 64 * 16_896 + 65_536, peak


def test_a_cache_whose_shards_disagree_with_its_info_stops_with_one_line(tmp_path):
    tokens = np.zeros((5, 1, 2, 4), np.float16)
    _write_cache(tmp_path, "val", tokens, shard_size=2, num_images=6)
    with pytest.raises(ConfigError, match=r"split 'val': features_info.json says 6 images, its shards hold 5$"
                       .replace("features_info.json", feat_lib.INFO_FILE)):
        feat_lib.load_split(tmp_path, "val")


def test_raw_observation_features_are_the_cls_token_averaged_over_views():
    # 3 images, 2 views, 3 tokens, width 2; token 0 is the CLS. Observation 0 = images 0 and 2,
    # observation 1 = image 1 and a padding slot (-1).
    tokens = np.zeros((3, 2, 3, 2), np.float16)
    tokens[0, :, 0] = [[1, 2], [3, 4]]    # image 0 CLS, views 0 and 1: mean (2, 3)
    tokens[1, :, 0] = [[10, 0], [20, 0]]  # image 1: mean (15, 0)
    tokens[2, :, 0] = [[-4, 8], [0, 0]]   # image 2: mean (-2, 4)
    tokens[:, :, 1:] = 99                 # patch tokens: must not enter
    groups = np.array([[0, 2], [1, -1]])
    train = types.SimpleNamespace(tokens=tokens[:2], labels=np.array([0, 1]))
    val = types.SimpleNamespace(tokens=tokens, groups=groups, obs_labels=np.array([1, 0]), obs_ids=np.array([5, 6]),
                                inputs={"prior": np.zeros((2, 2), np.float32)})
    data = types.SimpleNamespace(splits={"train": train, "val": val}, poisonous=np.array([0, 1]))

    got = splits.obs_inputs(data, "val")
    # Padding slots repeat image 0; the evaluator masks them (image_mask False).
    np.testing.assert_array_equal(got["raw_features"], np.array([[[2, 3], [-2, 4]], [[15, 0], [2, 3]]], np.float32))
    np.testing.assert_array_equal(got["image_mask"], [[True, True], [True, False]])
    np.testing.assert_array_equal(got["train_raw_features"], np.array([[2, 3], [15, 0]], np.float32))


def test_raw_observation_features_never_copy_the_patch_tokens():
    # 40 images x 2 views x 257 tokens x 64 float16 (2.6 MB); 20 observations of 2 images. A gather
    # before the CLS slice copies all of it ([20, 2, 2, 257, 64]: 2.6 MB); after, 20 KB of CLS.
    rng = np.random.default_rng(0)
    tokens = rng.standard_normal((40, 2, 257, 64)).astype(np.float16)
    groups = np.arange(40).reshape(20, 2)
    split = types.SimpleNamespace(tokens=tokens, groups=groups, obs_labels=np.zeros(20, int), obs_ids=np.arange(20),
                                  labels=np.zeros(40, int), inputs={"prior": np.zeros((20, 3), np.float32)})
    data = types.SimpleNamespace(splits={"train": split, "test": split}, poisonous=np.zeros(3, int))
    tracemalloc.start()
    got = splits.obs_inputs(data, "test")
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert peak < 400_000, peak  # the CLS copies (float16 and float32) and the outputs: ~60 KB
    np.testing.assert_array_equal(got["raw_features"][3, 1], tokens[7, :, 0].astype(np.float32).mean(0))
