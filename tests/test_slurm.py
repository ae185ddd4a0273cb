"""launch/gpu_slurm.sbatch on a real SLURM cluster: two nodes on this machine (launch/slurm_local.sh).

`sbatch --nodes=2 launch/gpu_slurm.sbatch` in CPU mode (FUNGIZSL_SETUP=test: the CPU .venv, one
CPU device per process) runs one JAX process per node. They find each other through JAX's own
SLURM detection (no JAX_* settings are passed: coordinator node1, a port from the job id), run
their collectives over the CPU (Gloo), split the parameters with FSDP across the two processes,
start from a Hugging Face CLIP folder (random weights, `save_pretrained`) and end with the
parameters of one process with two devices at the same global batch.

The same job interrupted twice, once through the script's USR1 trap (`scancel --batch
--signal=USR1`: the time-limit warning, after which the script runs `scontrol requeue`) and once
by `scontrol requeue` itself, saves at the step both processes agree on, comes back
(SLURM_RESTART_COUNT 1, then 2), resumes from that very step and ends with the parameters of the
uninterrupted job. The local cluster starts requeued jobs about 7 s after they end (its
AuthInfo=cred_expire=5; SLURM's default holds them for 121 s).

Skips when no cluster is up (`sinfo`); under CI=true that fails instead (./launch/test.sh starts
the cluster first).
"""

import json
import os
import pathlib
import re
import shutil
import subprocess
import time
import uuid

import numpy as np
import pytest
import torch
import transformers

from fungizsl import cpu_devices, tokenizers
from trainer_runs import ROOT, TINY_FLAGS, assert_same_params, finish, start_training

CI = os.environ.get("CI", "").lower() == "true"
STEPS = 100  # JAX tells the processes about a SIGTERM within about 1-3 s: enough steps to see it mid-run
RUN = (f"--config.total_steps={STEPS}", "--config.batch_size=32", "--config.data.per_class.train=32",
       "--config.warmup_steps=1", "--config.log_every=1", "--config.checkpoint_every=50",
       "--config.lr=1e-4",  # small steps: what float rounding leaves over 100 steps stays below 1e-6
       "--config.data.robustness_per_class=1",
       # FSDP over the two processes: every parameter array of at least 1024 elements is split in two.
       "--config.mesh.fsdp=2", "--config.sharding_rules=(('.*', 'fsdp'),)", "--config.sharding_min_size=1024")
ENDED = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE")


def _cluster_down() -> str | None:
    """Why no local SLURM cluster can run the job (None when two nodes are up)."""
    if shutil.which("sbatch") is None or shutil.which("sinfo") is None:
        return "SLURM is not installed (bash launch/slurm_local.sh start installs and starts it, as root)"
    result = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %t"], capture_output=True, text=True, check=False,
                            timeout=60)
    up = [line for line in result.stdout.split("\n") if re.fullmatch(r"\S+ (idle|mix|alloc|comp)\S*", line)]
    if result.returncode or len(up) < 2:
        return f"no SLURM cluster with two nodes is up (bash launch/slurm_local.sh start): {result.stdout}{result.stderr}"
    return None


@pytest.fixture(scope="module")
def cluster():
    reason = _cluster_down()
    if reason and CI:
        pytest.fail(f"{reason}; CI=true: ./launch/test.sh starts the local cluster", pytrace=False)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def hf_clip(tmp_path_factory):
    """A random tiny CLIP saved by transformers (save_pretrained), with a BPE the project reads;
    its attention key biases are zero (trainer_runs.ZERO_GRADIENT_LEAVES)."""
    folder = tmp_path_factory.mktemp("hf_clip")
    texts = ["a microscope image of round fungal spores", "thin hyphae branching across the plate",
             "a dense white mycelium mat", "spores scattered on agar", "long hyphae and a few spores"] * 4
    tokenizer = tokenizers.train_bpe_tokenizer(texts, 300, folder, context_length=16)
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config=dict(vocab_size=tokenizer.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, max_position_embeddings=16, eos_token_id=tokenizer.eot_id,
                         bos_token_id=2, pad_token_id=0),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=32, patch_size=8),
        projection_dim=24)
    model = transformers.CLIPModel(config)
    with torch.no_grad():  # key biases get no gradient: zero, they stay at noise level (trainer_runs)
        for layer in (*model.text_model.encoder.layers, *model.vision_model.encoder.layers):
            layer.self_attn.k_proj.bias.zero_()
    model.save_pretrained(folder)
    return folder


class Job:
    """One `sbatch --nodes=2 launch/gpu_slurm.sbatch` submission and its logs."""

    def __init__(self, workdir, init, out_dir, *flags):
        name = f"fzt-{uuid.uuid4().hex[:8]}"  # its own log folder, logs/<name>-<job>
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
        env = cpu_devices.simulated_env(env, 1)
        env.update(FUNGIZSL_SETUP="test", PYTHONPATH=ROOT)
        cmd = ["sbatch", "--parsable", f"--job-name={name}", f"--output={out_dir}/slurm-%j.out", "--nodes=2",
               "launch/gpu_slurm.sbatch", *TINY_FLAGS, *RUN, *flags, f"--config.model.init={init}",
               f"--workdir={workdir}"]
        self.id = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True).stdout.strip()
        self.logs = pathlib.Path(ROOT, "logs", f"{name}-{self.id}")
        self.batch_log = pathlib.Path(out_dir, f"slurm-{self.id}.out")

    def show(self) -> dict:
        out = subprocess.run(["scontrol", "show", "job", "-o", self.id], capture_output=True, text=True,
                             check=False).stdout
        return dict(re.findall(r"(\w+)=(\S+)", out))

    def task_log(self, task: int) -> str:
        path = self.logs / f"task-{task}.log"
        return path.read_text() if path.exists() else ""

    def batch(self) -> str:
        return self.batch_log.read_text() if self.batch_log.exists() else ""

    def describe(self) -> str:
        batch = self.batch()
        return f"job {self.id} {self.show().get('JobState')}:\n{batch[-3000:]}\n--- task 0:\n{self.task_log(0)[-3000:]}"

    def wait_for(self, pattern: str, start: int = 0, timeout: float = 120) -> re.Match:
        """The first match of `pattern` in task 0's log after offset `start`."""
        regex, deadline = re.compile(pattern, re.MULTILINE), time.time() + timeout
        while time.time() < deadline:
            match = regex.search(self.task_log(0), start)
            if match:
                return match
            if self.show().get("JobState") in ENDED:
                break
            time.sleep(0.1)
        pytest.fail(f"no {pattern!r} in task 0's log; {self.describe()}")

    def wait(self, timeout: float = 240) -> dict:
        deadline = time.time() + timeout
        while time.time() < deadline:
            info = self.show()
            if info.get("JobState") in ENDED:
                return info
            time.sleep(0.5)
        subprocess.run(["scancel", self.id], check=False)
        pytest.fail(f"still running after {timeout} s; {self.describe()}")

    def remove_logs(self):
        subprocess.run(["scancel", self.id], check=False, capture_output=True)
        shutil.rmtree(self.logs, ignore_errors=True)


@pytest.fixture(scope="module")
def jobs():
    submitted = []
    yield submitted
    for job in submitted:
        job.remove_logs()
    logs = pathlib.Path(ROOT, "logs")
    if logs.is_dir() and not any(logs.iterdir()):
        logs.rmdir()


@pytest.fixture(scope="module")
def uninterrupted(cluster, hf_clip, jobs, tmp_path_factory):
    """(one-process workdir and output, the SLURM job's workdir and Job), run side by side."""
    root = tmp_path_factory.mktemp("slurm")
    flags = ("--config.data.audit_indices=True", "--config.audit_writes=True")
    one = start_training(root / "one_process", *RUN, *flags, f"--config.model.init={hf_clip}",
                         devices=2)
    job = Job(root / "two_nodes", hf_clip, root, *flags)
    jobs.append(job)
    info = job.wait()
    out_one = finish(one)
    assert info["JobState"] == "COMPLETED" and info["ExitCode"] == "0:0", job.describe()
    return root / "one_process", out_one, root / "two_nodes", job


def test_two_nodes_split_parameters_with_fsdp_and_end_like_one_process(uninterrupted):
    """Tolerance: rtol 1e-5, atol 1e-6 (float32 reductions in another order over 100 steps; the key
    biases stay at noise level, see trainer_runs)."""
    one, out_one, two, job = uninterrupted
    logs = [job.task_log(0), job.task_log(1)]
    for task, log in enumerate(logs):  # one process per node, joined over Gloo, the CPU collectives
        assert f"[Gloo] Rank {task} is connected to 1 peer ranks" in log, job.describe()
    batch = job.batch()
    assert f"job {job.id} (restart 0) on node[1-2]" in batch and "training step ended with status 0" in batch

    split = [re.findall(r"fsdp: (\d+) of (\d+) parameter arrays split over the 2 devices", out)
             for out in (out_one, logs[0])]
    assert split[0] == split[1] and len(split[0]) == 1, split
    assert 0 < int(split[0][0][0]) < int(split[0][0][1]), split  # some split, the small ones replicated
    assert "fsdp:" not in logs[1]  # process 0 prints

    # Each process read its half of every global batch; together the one process's records.
    seen = [np.load(two / "audit" / f"process_{i}.npy") for i in range(2)]
    reference = np.load(one / "audit" / "process_0.npy")
    assert seen[0].shape == seen[1].shape == (STEPS, 16) and reference.shape == (STEPS, 32)
    for step in range(STEPS):
        assert not set(seen[0][step]) & set(seen[1][step]), f"step {step}: both processes read the same record"
        assert sorted(np.concatenate([seen[0][step], seen[1][step]])) == sorted(reference[step])
    # The Hugging Face folder brings the tokenizer; process 0 writes the shared files, process 1 none.
    writes = [json.loads((two / "audit" / f"writes_process_{i}.json").read_text()) for i in range(2)]
    assert sum(w.endswith("hf_export/model.safetensors") for w in writes[0]) == 1, writes[0]
    assert [w for w in writes[1] if not w.endswith("audit/process_1.npy")] == [], writes[1]
    assert not (two / "tokenizer").exists()
    assert json.loads((two / "summary.json").read_text())["step"] == STEPS
    assert_same_params(one, two, rtol=1e-5, atol=1e-6)


def _preempted_at(job: Job, attempt: int, after: int) -> tuple[int, int]:
    """(step, offset) of the 'preempted at step N' line after offset `after` of task 0's log, in
    the attempt that starts at offset `attempt`. N must be the last step that attempt logged (no
    finished step lost), before the end."""
    line = job.wait_for(r"^fungizsl: preempted at step (\d+): checkpoint saved in \S+; "
                        r"run the same command again to resume$", after)
    step = int(line.group(1))
    logged = [int(s) for s in re.findall(r"^step (\d+)/", job.task_log(0)[attempt:line.start()], re.MULTILINE)]
    assert logged and step == logged[-1] and step < STEPS, (step, logged[-3:], job.describe())
    return step, line.end()


def _resumed_from(job: Job, step: int, after: int) -> re.Match:
    """The attempt's 'resumed from step N' line; its first step is N + 1 (none done twice or skipped)."""
    resumed = job.wait_for(rf"^resumed from step {step} of {STEPS} ", after)
    job.wait_for(r"^step (\d+)/", resumed.end())
    assert re.search(r"^step (\d+)/", job.task_log(0)[resumed.end():], re.MULTILINE).group(1) == str(step + 1)
    return resumed


def test_requeue_by_usr1_and_by_scontrol_resumes_from_the_step_reached(uninterrupted, hf_clip, jobs, tmp_path):
    """Tolerance: none; the resumed job's parameters equal the uninterrupted job's bit for bit."""
    _, _, whole, _ = uninterrupted
    job = Job(tmp_path / "two_nodes", hf_clip, tmp_path)
    jobs.append(job)

    # 1. The time-limit warning: USR1 to the batch script, whose trap requeues the job.
    mark = job.wait_for(r"^step 5/")
    subprocess.run(["scancel", "--batch", "--signal=USR1", job.id], check=True)
    first, offset = _preempted_at(job, 0, mark.end())
    resumed = _resumed_from(job, first, offset)

    # 2. A requeue from outside (what preemption with PreemptMode=REQUEUE does).
    mark = job.wait_for(rf"^step {first + 2}/", resumed.end())
    subprocess.run(["scontrol", "requeue", job.id], check=True)
    second, offset = _preempted_at(job, resumed.end(), mark.end())
    assert first < second
    _resumed_from(job, second, offset)
    info = job.wait()

    assert info["JobState"] == "COMPLETED" and info["Restarts"] == "2", job.describe()
    batch = job.batch()
    assert [int(n) for n in re.findall(rf"job {job.id} \(restart (\d+)\)", batch)] == [0, 1, 2], batch
    assert batch.count(f"time limit near: requeueing job {job.id}") == 1, batch
    assert batch.count("SIGTERM: waiting for the training step to save its checkpoint") == 2, batch
    assert re.findall(r"training step ended with status (\d+)", batch) == ["143", "143", "0"], batch
    for task in range(2):  # both processes saved those steps
        assert re.findall(r"^fungizsl: preempted at step (\d+)", job.task_log(task), re.MULTILINE) == [str(first), str(second)]
    print(f"\nrequeued at steps {first} and {second} of {STEPS}")
    assert_same_params(whole, tmp_path / "two_nodes", rtol=0, atol=0)
