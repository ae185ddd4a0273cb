"""Helpers for tests that run the trainer as a subprocess (`python -m fungizsl.main`)."""

import os
import subprocess
import sys

import jax
import numpy as np

from fungizsl import cpu_devices
from fungizsl.train import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# The tiny CLIP on 32 px renders: a run of a dozen steps takes seconds.
TINY_FLAGS = (
    "--config=configs/fungalzsl.py:arch=tiny,runlocal,captions=templates",
    "--config.data.image_size=32", "--config.data.per_class.train=16", "--config.data.per_class.val=4",
    "--config.data.per_class.test=8", "--config.eval_every=1000", "--config.model.vocab_size=300",
    "--config.model.text_context=24", "--config.data.robustness_per_class=2",
)


def start_training(workdir, *flags, devices: int = 2, env=None, **popen) -> subprocess.Popen:
    """Starts a tiny training run in `workdir` on `devices` simulated CPU devices."""
    env = dict(cpu_devices.simulated_env(os.environ, devices), PYTHONPATH=ROOT, **(env or {}))
    cmd = [sys.executable, "-m", "fungizsl.main", *TINY_FLAGS, *flags, f"--workdir={workdir}"]
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, **popen)


def finish(process: subprocess.Popen, timeout: int = 300) -> str:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    return out


def assert_same_params(want_run, got_run, err_msg="", **tolerance):
    """The newest checkpoints of two runs hold the same parameters."""
    want = checkpoint.load_params(str(want_run))
    got = checkpoint.load_params(str(got_run))
    assert_same_tree(want, got, err_msg=err_msg, **tolerance)


# Attention key biases: adding one vector to every key shifts each query's scores by a constant,
# which the softmax removes, so their gradient is zero in exact arithmetic. What float rounding
# leaves of it differs with the device count and the reduction order, and Adam scales that noise
# up to updates of about 1e-6. Two runs agree on these leaves only in that both stay at the noise
# level, three orders of magnitude below the learning-rate-sized (~1e-3) updates of the others.
ZERO_GRADIENT_LEAVES = "['key']['bias']"
NOISE_LEVEL = 1e-5


def assert_same_tree(want, got, err_msg="", **tolerance):
    """Same tree structure (every key path), then every leaf close; leaves whose gradient is zero
    in exact arithmetic (`ZERO_GRADIENT_LEAVES`) must both stay below `NOISE_LEVEL` instead."""
    want_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(want)]
    got_paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(got)]
    assert want_paths == got_paths, (f"{err_msg}: trees differ: only in want {sorted(set(want_paths) - set(got_paths))[:5]}, "
                                     f"only in got {sorted(set(got_paths) - set(want_paths))[:5]}")
    assert jax.tree.structure(want) == jax.tree.structure(got)
    for path, a, b in zip(want_paths, jax.tree.leaves(want), jax.tree.leaves(got)):
        if path.endswith(ZERO_GRADIENT_LEAVES):
            assert max(np.abs(np.asarray(a)).max(), np.abs(np.asarray(b)).max()) < NOISE_LEVEL, f"{err_msg} {path}"
            continue
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), err_msg=f"{err_msg} {path}", **tolerance)
