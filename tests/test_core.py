"""The trainer core (fungizsl.train.core) on a toy task (`gs://` workdirs: tests/test_gcs.py).

The toy task fits a linear map; its state also carries a non-param collection (a step counter,
standing in for BatchNorm statistics), so the final evaluation can tell which checkpoint it saw.
"""

import json
import os

import grain
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from fungizsl.errors import ConfigError
from fungizsl.train import core

VAL_SCORES = {3: 0.1, 6: 0.9, 9: 0.5, 12: 0.2}  # best at step 6, not the last


class ToyBatch(grain.transforms.Map):
    def __init__(self, nan_at_step):
        self.nan_at_step = nan_at_step

    def map(self, step):
        rng = np.random.default_rng(int(step))
        x = rng.normal(size=(8, 4)).astype(np.float32)
        poison = np.full((8,), int(step) + 1 == self.nan_at_step, bool)  # batch `step` feeds step+1
        return {"x": x, "y": x @ np.arange(4, dtype=np.float32), "poison": poison,
                "index": np.full((8,), int(step), np.int32)}


def toy_task(nan_at_step=0):
    def loss_fn(params, extra, batch, rng):
        err = batch["x"] @ params["w"] - batch["y"]
        loss = jnp.mean(err ** 2) + jnp.where(batch["poison"].any(), jnp.nan, 0.0)
        return loss, ({"mse": jnp.mean(err ** 2)}, {"counter": {"n": extra["counter"]["n"] + 1}})

    def evaluate(variables, split, evals, step, out_dir):
        n = int(jax.device_get(variables["counter"]["n"]))
        if split == "val":
            return {"fit/score": VAL_SCORES[step]}
        return {"fit/counter": n, "fit/w0": float(jax.device_get(variables["params"]["w"])[0])}

    iterator = iter(grain.MapDataset.range(10_000).map(ToyBatch(nan_at_step)).to_iter_dataset())
    return core.Task(name="toy",
                     init_variables=lambda rng: {"params": {"w": jnp.zeros((4,))},
                                                 "counter": {"n": jnp.zeros((), jnp.int32)}},
                     loss_fn=loss_fn, train_iterator=iterator, evaluate=evaluate)


def toy_config(**overrides):
    config = ml_collections.ConfigDict(dict(
        seed=0, batch_size=8, total_steps=12, log_every=2, checkpoint_every=4, keep_checkpoints=1,
        lr=0.05, wd=0.0, warmup_steps=0,
        optim=dict(b2=0.98, grad_clip_norm=None, frozen=(), layer_decay=None),
        mesh=dict(data=-1, fsdp=1), sharding_rules=(),
        evals=dict(fit=dict(type="toy", split="val", every=3)),
        best_metric="fit/score", best_mode="max", final_eval_split="test", final_eval_checkpoint="best"))
    config.update(overrides)
    return config


def test_selects_on_val_and_tests_the_best_checkpoint_once(tmp_path, capsys):
    summary = core.run(toy_config(), tmp_path, toy_task())
    selection = summary["selection"]
    assert (selection["step"], selection["last_step"], selection["checkpoint"]) == (6, 12, "best")
    assert (selection["split"], selection["selection_split"], selection["selection_value"]) == ("test", "val", 0.9)
    assert summary["fit/counter"] == 6  # the extra variables of step 6 were restored and tested
    assert json.loads((tmp_path / "summary.json").read_text())["selection"]["step"] == 6
    out = capsys.readouterr().out
    assert out.count("final [test") == 1 and "[val]" in out and "[test]" not in out
    # not a terminal: one line per log step, with the throughput of the training steps
    assert sum(line.startswith("step ") and "img/sec/core" in line for line in out.splitlines()) == 6

    last = core.run(toy_config(final_eval_checkpoint="last"), tmp_path / "last", toy_task())
    assert (last["selection"]["step"], last["fit/counter"]) == (12, 12)


def test_the_final_split_during_training_or_for_selection_is_refused_before_anything_is_written(tmp_path):
    for split in ("test", "test_gray"):  # the final split, and a variant of it (a shifted test set)
        config = toy_config(best_metric="", final_eval_checkpoint="last")
        config.evals.fit.split = split
        with pytest.raises(ConfigError) as refused:
            core.run(config, tmp_path / split, toy_task())
        assert str(refused.value) == (
            f"config.evals.fit.split='{split}' is the final split 'test' (or a variant of it) and "
            f"config.evals.fit.every=3 would run it during training: set config.evals.fit.every=0 or split='val'")
        assert not (tmp_path / split).exists()
    config = toy_config()  # a final-only entry on test_gray is fine, but not as the selection metric
    config.evals.gray = dict(type="toy", split="test_gray", every=0)
    config.best_metric = "gray/score"
    with pytest.raises(ConfigError) as refused:
        core.run(config, tmp_path / "select", toy_task())
    assert str(refused.value) == ("config.best_metric='gray/score' is measured on config.evals.gray.split="
                                  "'test_gray', the final split 'test' or a variant of it: select on 'val' instead")
    assert not (tmp_path / "select").exists()


def test_nan_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    with pytest.raises(core.NonFiniteLossError, match="at step 7 .*last good checkpoint is step 6"):
        core.run(toy_config(), tmp_path, toy_task(nan_at_step=7))
    steps = sorted(int(d) for d in os.listdir(tmp_path / "checkpoints") if d.isdigit())
    assert steps and max(steps) == 6  # the bad state (or anything after it) was never saved
    from fungizsl.train import checkpoint

    assert np.isfinite(checkpoint.load_params(str(tmp_path))["w"]).all()
