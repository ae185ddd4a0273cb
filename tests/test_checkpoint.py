"""Run checkpoints keep the newest N steps and the best one, with the data iterator beside them."""

import os

import numpy as np

from fungizsl.data import pipeline
from fungizsl.train import checkpoint


def _iterator():
    source = pipeline.InMemorySource([{"image": np.zeros((8, 8, 3), np.uint8), "label": i % 2} for i in range(8)])
    return pipeline.make_train_iterator(source, global_batch_size=2, seed=0, image_size=8, augment="none",
                                        process_index=0, process_count=1)


def test_keeps_latest_and_best_and_restores_state_and_iterator(tmp_path):
    ckpt = checkpoint.RunCheckpoints(str(tmp_path), keep=2, best_metric="zeroshot/accuracy")
    iterator = _iterator()
    accuracy = {1: 0.2, 2: 0.9, 3: 0.5, 4: 0.4, 5: 0.3}
    for step in range(1, 6):
        next(iterator)
        state = {"step": np.asarray(step, np.int32), "params": {"w": np.full((3,), step, np.float32)}}
        ckpt.save(step, state, iterator, metrics={"zeroshot/accuracy": accuracy[step]}, force=True)
    ckpt.close()
    kept = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert kept == [2, 4, 5]  # the best (step 2) and the newest two

    want_next = next(iterator)["index"]
    fresh = _iterator()
    restored = checkpoint.RunCheckpoints(str(tmp_path), keep=2).restore(
        {"step": np.asarray(0, np.int32), "params": {"w": np.zeros((3,), np.float32)}}, fresh)
    assert int(restored["step"]) == 5 and float(restored["params"]["w"][0]) == 5.0
    np.testing.assert_array_equal(next(fresh)["index"], want_next)
    np.testing.assert_array_equal(checkpoint.load_params(str(tmp_path))["w"], np.full((3,), 5.0))
