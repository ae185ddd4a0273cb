"""Tests for the Grain input pipeline (fungizsl.data.pipeline) and its augmentations."""

import numpy as np
import pytest
from PIL import Image

from fungizsl import tokenizers as tk
from fungizsl.data import augment as aug
from fungizsl.data import pipeline as pl
from fungizsl.data.captions import get_caption_source
from fungizsl.data.synthetic import RenderConfig, render_image

SIZE = 32  # output side: small keeps the suite fast


@pytest.fixture(scope="module")
def captions():
    return get_caption_source("templates").by_class()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, captions):
    folder = tmp_path_factory.mktemp("bpe")
    tk.train_bpe_tokenizer([t for texts in captions.values() for t in texts], 400, folder, context_length=24)
    return folder


@pytest.fixture(scope="module")
def rendered():
    """24 records (8 per stage), rendered on access."""
    return pl.RenderedSource(n_per_stage=8, seed=0, render_config=RenderConfig(image_size=40))


@pytest.fixture(scope="module")
def encoded(rendered):
    """The same 24 images as PNG/JPEG bytes, some cut to non-square shapes, with filenames."""
    records = []
    for i in range(len(rendered)):
        record = rendered[i]
        image = record["image"][: 40 - 2 * (i % 5)] if i % 2 else record["image"][:, : 28 + i % 7]
        fmt = "jpeg" if i % 3 == 0 else "png"
        records.append({"image": pl.encode_image(image, fmt), "label": record["label"],
                        "filename": f"img_{i:03d}.{fmt}"})
    return pl.InMemorySource(records, class_names=rendered.class_names)


def take(iterator, n):
    out = [next(iterator) for _ in range(n)]
    # Copies: batches from worker processes live in shared memory owned by the iterator.
    return [{k: np.array(v) for k, v in batch.items()} for batch in out]


def assert_same_batches(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key], err_msg=key)


def train_iterator(source, **kw):
    args = dict(global_batch_size=8, seed=0, image_size=SIZE, augment="microscopy")
    args.update(kw)
    return pl.make_train_iterator(source, **args)


# ----------------------------------------------------------------------------------------------
# Sources


def test_rendered_source_is_deterministic_and_balanced(rendered):
    assert len(rendered) == 24 and rendered.class_names == ("spore", "hyphae", "mycelium")
    record = rendered[7]
    assert record["label"] == 7 % 3 and record["stage"] == "hyphae" and record["render_index"] == 2
    np.testing.assert_array_equal(record["image"], render_image("hyphae", 2, 0, rendered.render_config))
    np.testing.assert_array_equal(rendered[7]["image"], record["image"])
    png = pl.RenderedSource(n_per_stage=8, render_config=rendered.render_config, encoding="png")
    np.testing.assert_array_equal(np.asarray(aug.load_image(png[7]["image"])), record["image"])
    with pytest.raises(IndexError, match="24"):
        rendered[24]


# ----------------------------------------------------------------------------------------------
# Training batches


def test_train_batches_have_the_promised_fields(encoded, captions, tokenizer_dir):
    it = train_iterator(encoded, global_batch_size=8, process_index=0, process_count=2,
                        captions_by_class=captions, tokenizer=tokenizer_dir)
    batch = next(it)
    assert batch["image"].shape == (4, SIZE, SIZE, 3) and batch["image"].dtype == np.float32
    assert batch["label"].shape == (4,) and batch["label"].dtype == np.int32
    assert batch["input_ids"].shape == (4, 24) and batch["input_ids"].dtype == np.int32
    assert batch["caption_id"].dtype == np.int32 and batch["index"].dtype == np.int32
    assert np.isfinite(batch["image"]).all()
    low, high = aug.NORMALIZATIONS["clip"].limits
    assert (batch["image"] >= low - 1e-5).all() and (batch["image"] <= high + 1e-5).all()


def test_same_seed_same_batches_other_seed_other_batches(encoded, captions, tokenizer_dir):
    kw = dict(captions_by_class=captions, tokenizer=tokenizer_dir)
    first = take(train_iterator(encoded, seed=7, **kw), 4)
    again = take(train_iterator(encoded, seed=7, **kw), 4)
    other = take(train_iterator(encoded, seed=8, **kw), 4)
    assert_same_batches(first, again)
    assert not all(np.array_equal(a["index"], b["index"]) for a, b in zip(first, other))
    assert not np.array_equal(first[0]["image"], other[0]["image"])


def test_captions_belong_to_the_label_class(encoded, captions, tokenizer_dir):
    tokenizer = tk.load_tokenizer(tokenizer_dir)
    table = pl.build_caption_table(captions, encoded.class_names, tokenizer)
    seen = set()
    for batch in take(train_iterator(encoded, captions_by_class=captions, tokenizer=tokenizer), 6):
        for label, caption_id, ids, index in zip(batch["label"], batch["caption_id"], batch["input_ids"],
                                                 batch["index"]):
            assert label == encoded[int(index)]["label"]
            text = table.texts[caption_id]
            assert text in captions[encoded.class_names[label]]
            np.testing.assert_array_equal(ids, tokenizer([text])["input_ids"][0])
            seen.add(int(caption_id))
    assert len(seen) > 20  # captions are drawn per example, not fixed per class


def test_each_epoch_is_a_fresh_permutation(encoded):
    batches = take(train_iterator(encoded, num_epochs=2), 6)
    epochs = [np.concatenate([b["index"] for b in batches[e * 3:(e + 1) * 3]]) for e in range(2)]
    for order in epochs:
        assert sorted(order.tolist()) == list(range(24))
    assert not np.array_equal(epochs[0], epochs[1])
    assert_same_batches(take(train_iterator(encoded), 6), batches)  # finite epochs = prefix of forever
    one_epoch = train_iterator(encoded, num_epochs=1, global_batch_size=16)  # 24 records: one whole batch
    assert len(take(one_epoch, 1)[0]["index"]) == 16
    with pytest.raises(StopIteration):
        next(one_epoch)


def test_augmentations_vary_and_keep_shape(rendered):
    batches = take(train_iterator(rendered, num_epochs=2, global_batch_size=24), 2)
    first, second = (dict(zip(b["index"].tolist(), b["image"])) for b in batches)
    for index in range(24):
        assert first[index].shape == (SIZE, SIZE, 3) and first[index].dtype == np.float32
        assert not np.allclose(first[index], second[index])  # same record, another epoch
    assert len({first[i].tobytes() for i in first}) == 24
    plain = take(train_iterator(rendered, num_epochs=2, global_batch_size=24, augment="none"), 2)
    first, second = (dict(zip(b["index"].tolist(), b["image"])) for b in plain)
    for index in range(24):  # augment="none": the deterministic evaluation transform
        np.testing.assert_array_equal(first[index], second[index])


def test_two_processes_get_disjoint_covering_shards_of_the_global_batches(encoded):
    kw = dict(num_epochs=1, global_batch_size=8)
    single = take(train_iterator(encoded, process_index=0, process_count=1, **kw), 3)
    shards = [take(train_iterator(encoded, process_index=p, process_count=2, **kw), 3) for p in range(2)]
    seen = [np.concatenate([b["index"] for b in shard]) for shard in shards]
    assert not set(seen[0].tolist()) & set(seen[1].tolist())
    assert sorted(np.concatenate(seen).tolist()) == list(range(24))
    for step in range(3):  # the two local batches of a step together are the global batch
        parts = [shards[p][step] for p in range(2)]
        assert sorted(np.concatenate([b["index"] for b in parts]).tolist()) == sorted(single[step]["index"].tolist())
        merged = {i: img for b in parts for i, img in zip(b["index"].tolist(), b["image"])}
        for i, img in zip(single[step]["index"].tolist(), single[step]["image"]):
            np.testing.assert_array_equal(merged[i], img)  # same augmentation in whichever process


# ----------------------------------------------------------------------------------------------
# Iterator state


def test_resume_from_iterator_state(encoded, captions, tokenizer_dir):
    kw = dict(captions_by_class=captions, tokenizer=tokenizer_dir)
    it = train_iterator(encoded, **kw)
    take(it, 2)
    state = it.get_state()
    expected = take(it, 4)  # crosses into the second epoch
    resumed = train_iterator(encoded, **kw)
    resumed.set_state(state)
    assert_same_batches(take(resumed, 4), expected)


def test_resume_through_an_orbax_checkpoint_manager(tmp_path, encoded):
    import orbax.checkpoint as ocp

    it = train_iterator(encoded, seed=3)
    take(it, 3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        manager.save(3, args=pl.checkpoint_save_args(it, state=ocp.args.StandardSave({"step": np.array(3, np.int32)})))
        manager.wait_until_finished()
    expected = take(it, 3)

    fresh = train_iterator(encoded, seed=3)
    with ocp.CheckpointManager(tmp_path / "ckpt") as manager:
        assert manager.latest_step() == 3
        restored = manager.restore(3, args=pl.checkpoint_restore_args(
            fresh, state=ocp.args.StandardRestore({"step": np.array(0, np.int32)})))
    assert int(restored["state"]["step"]) == 3
    assert_same_batches(take(fresh, 3), expected)


def test_two_workers_give_the_same_batches_in_the_same_order(encoded):
    """Grain's mp_prefetch hands worker w the batches w, w + W, ... of our batched MapDataset and
    interleaves the workers round robin, so the stream equals the in-process one exactly; its state
    resumes in a new worker pool."""
    kw = dict(num_epochs=2, global_batch_size=4)
    in_process = take(train_iterator(encoded, **kw), 12)
    it = train_iterator(encoded, worker_count=2, **kw)
    try:
        head = take(it, 5)
        state = it.get_state()
        tail = take(it, 7)
        with pytest.raises(StopIteration):
            next(it)
    finally:
        it.close()
    assert_same_batches(head + tail, in_process)
    resumed = train_iterator(encoded, worker_count=2, **kw)
    try:
        resumed.set_state(state)
        assert_same_batches(take(resumed, 7), in_process[5:])
    finally:
        resumed.close()


# ----------------------------------------------------------------------------------------------
# Evaluation


def test_eval_iterator_pads_the_last_batch_and_masks_it(encoded):
    source = pl.InMemorySource([encoded[i] for i in range(10)], class_names=encoded.class_names)
    shards = [list(pl.make_eval_iterator(source, global_batch_size=8, image_size=SIZE, process_index=p,
                                         process_count=2)) for p in range(2)]
    assert [len(s) for s in shards] == [2, 2]  # ceil(10 / 8) global batches in every process
    batches = shards[0] + shards[1]
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])
    assert valid.dtype == bool and valid.sum() == 10
    assert sorted(index[valid].tolist()) == list(range(10))
    assert (index[~valid] == -1).all()
    for batch in batches:
        for i, ok, image, label in zip(batch["index"], batch["valid"], batch["image"], batch["label"]):
            if ok:
                expected = aug.eval_image(aug.load_image(source[i]["image"]), SIZE, aug.NORMALIZATIONS["clip"])
                np.testing.assert_allclose(image, expected, atol=1e-6)
                assert label == source[i]["label"]
            else:
                assert label == -1 and not image.any()
    again = list(pl.make_eval_iterator(source, global_batch_size=8, image_size=SIZE, process_index=0,
                                       process_count=2))
    assert_same_batches(again, shards[0])


def test_eval_captions_pad_with_the_empty_text(encoded, captions, tokenizer_dir):
    source = pl.InMemorySource([encoded[i] for i in range(5)], class_names=encoded.class_names)
    (batch,) = list(pl.make_eval_iterator(source, global_batch_size=8, image_size=SIZE, process_count=1,
                                          process_index=0, captions_by_class=captions, tokenizer=tokenizer_dir))
    empty = tk.load_tokenizer(tokenizer_dir)([""])["input_ids"][0]
    assert (batch["caption_id"][5:] == -1).all() and (batch["caption_id"][:5] >= 0).all()
    for row in batch["input_ids"][5:]:
        np.testing.assert_array_equal(row, empty)


# ----------------------------------------------------------------------------------------------
# FungiCLEF observations


@pytest.fixture(scope="module")
def observations(encoded):
    """13 records of 5 observations (sizes 3, 1, 5, 2, 2), their records interleaved."""
    owners = [10, 11, 12, 10, 12, 13, 12, 14, 10, 12, 13, 14, 12]
    labels = {10: 4, 11: 0, 12: 2, 13: 7, 14: -1}
    records = [{"image": encoded[i]["image"], "category_id": labels[obs], "observation_id": obs,
                "filename": f"obs{obs}_{i}.jpg"} for i, obs in enumerate(owners)]
    return pl.InMemorySource(records)


def test_observation_index_groups_records(observations):
    index = pl.build_observation_index(observations)
    assert index.observation_ids.tolist() == [10, 11, 12, 13, 14]
    assert index.labels.tolist() == [4, 0, 2, 7, -1]
    assert [r.tolist() for r in index.record_indices] == [[0, 3, 8], [1], [2, 4, 6, 9, 12], [5, 10], [7, 11]]
    assert index.max_images == 5


def test_observation_iterator_keeps_observations_together(observations):
    index = pl.build_observation_index(observations)
    shards = [list(pl.make_observation_iterator(observations, global_batch_size=4, image_size=SIZE,
                                                observation_index=index, process_index=p, process_count=2))
              for p in range(2)]
    assert [len(s) for s in shards] == [2, 2]  # ceil(5 / 4) batches of 2 observations per process
    seen = []
    for batch in shards[0] + shards[1]:
        assert batch["image"].shape == (2, 5, SIZE, SIZE, 3) and batch["image_mask"].shape == (2, 5)
        for k in range(2):
            if not batch["valid"][k]:
                assert not batch["image_mask"][k].any() and batch["observation_id"][k] == -1
                continue
            obs = int(batch["observation_id"][k])
            members = index.record_indices[index.observation_ids.tolist().index(obs)]
            n = len(members)
            assert batch["image_mask"][k].tolist() == [True] * n + [False] * (5 - n)
            assert batch["index"][k].tolist() == members.tolist() + [-1] * (5 - n)
            assert batch["label"][k] == observations[int(members[0])]["category_id"]
            for slot, record_index in enumerate(members):
                assert observations[int(record_index)]["observation_id"] == obs
                expected = aug.eval_image(aug.load_image(observations[int(record_index)]["image"]), SIZE,
                                          aug.NORMALIZATIONS["clip"])
                np.testing.assert_allclose(batch["image"][k, slot], expected, atol=1e-6)
            assert not batch["image"][k, n:].any()
            seen.append(obs)
    assert sorted(seen) == [10, 11, 12, 13, 14]


def test_observation_errors_name_the_observation(observations):
    with pytest.raises(ValueError, match="observation 12 has 5 images, more than max_images=4"):
        pl.make_observation_dataset(observations, max_images=4, image_size=SIZE, process_index=0, process_count=1)
    mixed = pl.InMemorySource([{**observations[i], "category_id": i} for i in range(3)] + [observations[3]])
    with pytest.raises(ValueError, match="observation 10 mixes labels"):
        pl.build_observation_index(mixed)


# ----------------------------------------------------------------------------------------------
# Errors


def test_corrupt_image_error_names_the_record(encoded):
    records = [encoded[i] for i in range(8)]
    records[5] = {**records[5], "image": b"\x89PNG\r\n\x1a\n this is not a png", "filename": b"broken.png"}
    records[6] = {**records[6], "image": records[6]["image"][:60]}  # truncated file
    source = pl.InMemorySource(records)
    with pytest.raises(aug.CorruptImageError, match=r"record 5 \(filename 'broken.png'\)"):
        list(pl.make_eval_iterator(source, global_batch_size=8, image_size=SIZE, process_index=0, process_count=1))
    with pytest.raises(aug.CorruptImageError, match=r"record 0 \(filename 'img_006.jpeg'\).*Truncated"):
        list(pl.make_eval_iterator(pl.InMemorySource(records[6:]), global_batch_size=2, image_size=SIZE,
                                   process_index=0, process_count=1))


def test_missing_fields_are_named(encoded):
    with pytest.raises(ValueError, match=r"record \d+ \(filename 'img_\d+\.\w+'\) .* has no image field 'photo'"):
        next(train_iterator(encoded, image_key="photo"))
    with pytest.raises(ValueError, match="has no label field 'species'"):
        next(train_iterator(encoded, label_key="species"))


def test_corrupt_image_error_crosses_worker_processes():
    records = [{"image": np.full((8, 8, 3), i, np.uint8), "label": 0} for i in range(8)]
    records[5] = {"image": b"junk", "label": 0, "filename": "bad.jpg"}
    it = pl.make_train_iterator(pl.InMemorySource(records), global_batch_size=2, seed=0, image_size=8,
                                worker_count=2, process_index=0, process_count=1)
    try:
        with pytest.raises(aug.CorruptImageError, match=r"record 5 \(filename 'bad.jpg'\)"):
            take(it, 4)
    finally:
        it.close()


@pytest.mark.parametrize("kwargs, message", [
    (dict(global_batch_size=10, process_count=4, process_index=0),
     "global_batch_size=10 is not divisible by process_count=4"),
    (dict(global_batch_size=0), "global_batch_size must be at least 1"),
    (dict(process_index=2, process_count=2), "process_index=2 must be smaller than process_count=2"),
    (dict(image_size=0), "image_size must be at least 1"),
    (dict(seed=-1), "seed must be at least 0"),
    (dict(num_epochs=0), "num_epochs must be at least 1"),
    (dict(augment="blurry"), "unknown augment preset 'blurry'"),
    (dict(augment={"preset": "natural", "hflip": 1.5}), r"AugmentConfig.hflip is a probability"),
    (dict(augment={"flip": 0.5}), "unknown augment field"),
    (dict(normalization="imagenet21k"), "unknown normalization 'imagenet21k'"),
    (dict(normalization=((0.5, 0.5, 0.5), (0.1, 0.0, 0.1))), "std must be positive"),
    (dict(captions_by_class={"spore": ["a"]}), "captions_by_class needs a tokenizer"),
    (dict(worker_count=-1), "worker_count must be at least 0"),
])
def test_bad_config_values_name_the_parameter(rendered, kwargs, message):
    args = dict(global_batch_size=8, seed=0, image_size=SIZE, process_index=0, process_count=1)
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        pl.make_train_iterator(rendered, **args)


def test_caption_errors_name_the_class(rendered, captions, tokenizer_dir):
    partial = {k: v for k, v in captions.items() if k != "hyphae"}
    with pytest.raises(ValueError, match="no captions for class.*hyphae"):
        pl.make_train_dataset(rendered, global_batch_size=8, seed=0, captions_by_class=partial,
                              tokenizer=tokenizer_dir, process_index=0, process_count=1)
    unnamed = pl.InMemorySource([{"image": np.zeros((8, 8, 3), np.uint8), "label": 0}])
    with pytest.raises(ValueError, match="class_names"):
        pl.make_train_dataset(unnamed, global_batch_size=1, seed=0, captions_by_class=captions,
                              tokenizer=tokenizer_dir, process_index=0, process_count=1)
    bad_label = pl.InMemorySource([{"image": np.zeros((8, 8, 3), np.uint8), "label": 5}], class_names=["spore"])
    it = train_iterator(bad_label, global_batch_size=1, captions_by_class=captions, tokenizer=tokenizer_dir,
                        process_index=0, process_count=1)
    with pytest.raises(ValueError, match="record 0 has label 5, outside the 1 classes"):
        next(it)


# ----------------------------------------------------------------------------------------------
# Augmentation functions


def test_flip_and_rotate_are_exact_permutations():
    image = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(4, 4, 3)
    pil = Image.fromarray(image)
    always = aug.AugmentConfig(hflip=1.0, vflip=1.0, rot90=False)
    np.testing.assert_array_equal(np.asarray(aug.flip_and_rotate(pil, np.random.default_rng(0), always)),
                                  image[::-1, ::-1])
    turns = aug.AugmentConfig(hflip=0.0, rot90=True)
    outputs = {np.asarray(aug.flip_and_rotate(pil, np.random.default_rng(s), turns)).tobytes() for s in range(40)}
    assert outputs == {np.rot90(image, k).tobytes() for k in range(4)}


def test_colour_affine_matches_direct_formulas():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (6, 5, 3)).astype(np.uint8)
    unit = aug.NORMALIZATIONS["unit"]

    def jittered(config, seed):
        affine = aug.colour_jitter_affine(np.random.default_rng(seed), config, image.reshape(-1, 3).mean(0))
        return aug.normalize(np.asarray(aug.apply_colour_affine(Image.fromarray(image), affine)), unit)

    gray = jittered(aug.AugmentConfig(jitter_prob=0.0, grayscale_prob=1.0), 0)
    expected = (image.astype(np.float64) @ [0.299, 0.587, 0.114]) / 255.0
    np.testing.assert_allclose(gray, np.repeat(expected[..., None], 3, -1), atol=0.51 / 255)

    contrast = aug.AugmentConfig(brightness=0.0, saturation=0.0, contrast=0.5, jitter_prob=1.0)
    draws = np.random.default_rng(1)
    draws.random(), draws.permutation(4)  # the draws before the contrast factor
    factor = draws.uniform(0.5, 1.5)
    grey_mean = image.reshape(-1, 3).mean(0) @ [0.299, 0.587, 0.114]
    direct = np.clip(factor * image + (1 - factor) * grey_mean, 0, 255) / 255.0
    np.testing.assert_allclose(jittered(contrast, 1), direct, atol=0.51 / 255)

    saturation = aug.AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.5, jitter_prob=1.0)
    draws = np.random.default_rng(2)
    draws.random(), draws.permutation(4)
    factor = draws.uniform(0.5, 1.5)
    grey = (image.astype(np.float64) @ [0.299, 0.587, 0.114])[..., None]
    direct = np.clip(factor * image + (1 - factor) * grey, 0, 255) / 255.0
    np.testing.assert_allclose(jittered(saturation, 2), direct, atol=0.51 / 255)


def test_normalize_matches_the_formula():
    image = np.random.default_rng(0).integers(0, 256, (2, 5, 7, 3)).astype(np.uint8)
    mean, std = np.asarray(aug.CLIP_MEAN), np.asarray(aug.CLIP_STD)
    np.testing.assert_allclose(aug.normalize(image, "clip"), (image / 255.0 - mean) / std, rtol=1e-5, atol=1e-5)


def test_random_resized_crop_box_stays_inside():
    rng = np.random.default_rng(0)
    for width, height in [(40, 30), (7, 200), (224, 224)]:
        for _ in range(50):
            left, top, right, bottom = aug.random_resized_crop_box(rng, width, height, (0.08, 1.0), (0.75, 4 / 3))
            assert 0 <= left < right <= width + 1e-9 and 0 <= top < bottom <= height + 1e-9


# ----------------------------------------------------------------------------------------------
# Devices


def test_to_global_batch_on_an_eight_device_mesh(encoded, captions, tokenizer_dir):
    import jax

    from fungizsl.placement import make_mesh

    mesh = make_mesh(data=4, fsdp=2)
    batch = next(train_iterator(encoded, global_batch_size=16, process_index=0, process_count=1,
                                captions_by_class=captions, tokenizer=tokenizer_dir))
    placed = pl.to_global_batch(batch, mesh)
    assert placed["image"].shape == (16, SIZE, SIZE, 3) and placed["input_ids"].shape == (16, 24)
    assert len(placed["image"].sharding.device_set) == jax.device_count() == 8
    assert placed["image"].sharding.shard_shape(placed["image"].shape) == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(np.asarray(placed["label"]), batch["label"])
    with pytest.raises(ValueError, match="same leading"):
        pl.to_global_batch({"image": batch["image"], "label": batch["label"][:3]}, mesh)


def test_augment_overrides_come_through_a_config_dict():
    """`config.data.augment = dict(preset=..., crop_scale=...)` becomes a ConfigDict, which is not
    a Mapping: get_augment must still read it as overrides of the preset."""
    import ml_collections

    from fungizsl.data import augment

    spec = ml_collections.ConfigDict(dict(preset="microscopy", crop_scale=(0.8, 1.0)))
    got = augment.get_augment(spec)
    assert got.crop_scale == (0.8, 1.0) and got.rot90 and got.vflip == 0.5


def test_whole_field_augmentation_only_flips_rotates_and_recolours():
    """`microscopy_whole_field` (scene captions): without colour jitter the result is exactly one of
    the eight flips/quarter turns of the whole image, never a crop or a resample of it."""
    import dataclasses

    from PIL import Image

    from fungizsl.data import augment

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    norm = augment.get_normalization("clip")
    config = dataclasses.replace(augment.get_augment("microscopy_whole_field"), jitter_prob=0.0)
    plain = augment.normalize(pixels, norm)
    views = [np.rot90(v, k) for v in (plain, plain[:, ::-1]) for k in range(4)]
    seen = set()
    for seed in range(40):
        out = augment.augment_image(Image.fromarray(pixels), np.random.default_rng(seed), config, 32, norm)
        matches = [i for i, v in enumerate(views) if np.allclose(out, v, atol=1e-6)]
        assert matches, f"seed {seed}: not a flip/rotation of the whole image"
        seen.add(matches[0])
    assert len(seen) >= 6  # the flips and turns do vary


def test_lower_resolution_loses_what_a_coarser_camera_would():
    """A one-pixel checkerboard sampled at half resolution is uniform grey (each 2x2 box averages
    0 and 255 to 127.5), and stays grey when resized back; a flat image stays itself. At
    `lowres_prob` 1 the randomised preset always does this at scale 0.5, at 0 it never runs."""
    import dataclasses

    checker = ((np.indices((16, 16)).sum(0) % 2) * 255).astype(np.uint8)
    image = Image.fromarray(np.repeat(checker[..., None], 3, axis=-1))
    out = np.asarray(aug.lower_resolution(image, np.random.default_rng(0), (0.5, 0.5)))
    assert out.shape == (16, 16, 3) and set(np.unique(out)) <= {127, 128}
    flat = Image.fromarray(np.full((16, 16, 3), 77, np.uint8))
    assert np.array_equal(np.asarray(aug.lower_resolution(flat, np.random.default_rng(0), (0.5, 0.7))), np.asarray(flat))
    norm = aug.get_normalization("clip")
    preset = aug.get_augment("microscopy_randomised")
    assert preset.lowres_prob > 0 and preset.crop_scale == (1.0, 1.0)
    always = dataclasses.replace(preset, jitter_prob=0.0, lowres_prob=1.0, lowres_scale=(0.5, 0.5), grayscale_prob=0.0)
    got = aug.augment_image(image, np.random.default_rng(3), always, 16, norm)
    assert np.allclose(got, aug.normalize(out, norm), atol=1e-6)  # a flip or turn of grey is grey
    never = dataclasses.replace(always, lowres_prob=0.0)
    kept = aug.augment_image(image, np.random.default_rng(3), never, 16, norm)
    assert set(np.round(kept[..., 0], 4).ravel().tolist()) == set(np.round(aug.normalize(checker[..., None].repeat(3, -1), norm)[..., 0], 4).ravel().tolist())
    with pytest.raises(ValueError, match="lowres_scale"):
        aug.AugmentConfig(lowres_scale=(0.5, 1.5))
