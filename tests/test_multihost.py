"""Two CPU processes joined by jax.distributed.initialize on 127.0.0.1 train like one.

They must read disjoint records whose union, step by step, is what a single process with the
same number of devices reads, and end with the parameters that single process ends with.
"""

import os
import socket
import subprocess
import sys

import jax
import numpy as np

from fungizsl.train import checkpoint

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = [
    "--config=configs/fungalzsl.py:arch=tiny,runlocal,captions=templates",
    "--config.data.image_size=32", "--config.data.per_class.train=16", "--config.data.per_class.val=4",
    "--config.data.per_class.test=8", "--config.batch_size=8", "--config.total_steps=6",
    "--config.warmup_steps=1", "--config.log_every=3", "--config.checkpoint_every=6",
    "--config.eval_every=1000", "--config.model.vocab_size=300", "--config.model.text_context=24",
    "--config.data.audit_indices=True",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(workdir, devices_per_process: int, extra_env=None, multihost=False):
    env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu",
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}", **(extra_env or {}))
    cmd = [sys.executable, "-m", "fungizsl.main", *FLAGS, f"--workdir={workdir}"]
    if multihost:
        cmd.append("--multihost")
    return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _wait(process, timeout=300):
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out[-4000:]
    return out


def test_two_processes_train_on_disjoint_data_with_identical_parameters(tmp_path):
    single = tmp_path / "single"
    _wait(_run(single, devices_per_process=2))

    shared = tmp_path / "two_processes"
    port = _free_port()
    processes = [_run(shared, 1, {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": "2",
                                  "JAX_PROCESS_ID": str(i)}, multihost=True) for i in range(2)]
    outputs = [_wait(p) for p in processes]
    assert "process 0 of 2" in outputs[0] or os.path.exists(shared / "summary.json")

    seen = [np.load(shared / "audit" / f"process_{i}.npy") for i in range(2)]
    reference = np.load(single / "audit" / "process_0.npy")
    assert seen[0].shape == seen[1].shape == (6, 4) and reference.shape == (6, 8)
    for step in range(6):
        assert not set(seen[0][step]) & set(seen[1][step]), f"step {step}: both processes read the same record"
        assert sorted(np.concatenate([seen[0][step], seen[1][step]])) == sorted(reference[step])

    want = checkpoint.load_params(str(single))
    got = checkpoint.load_params(str(shared))
    for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
