"""A TPU VM slice rehearsed on this machine: `launch/tpu_vm.sh` drives two local workers.

Only `gcloud` is a stand-in. It plays a slice of two workers, each with a home and a /tmp of its
own (`worker-<i>/`; the launcher's `/tmp/fungizsl-src-*` tarball path maps to that /tmp). It runs
what `gcloud ... scp|ssh --worker=all` would run on every worker, in that worker's folders, with a
bare environment: what the launcher hands over (its `--env` settings), plus what a TPU VM's
metadata gives JAX (here the coordinator address, process count and process id as JAX_*
variables), and one CPU device standing in for the worker's chips. Everything else is real: the
tarball of the checkout; `launch/tpu_worker.sh setup` (its stamp check: the environment is this
test's CPU venv, pre-stamped, because the `tpu` extra brings TPU wheels a CPU machine cannot
use); `start` (setsid, a log per worker); the two Python processes training as one JAX program
into one shared workdir; `stop` (SIGTERM to each worker's process group) saving the step reached;
and a second launch resuming from it to the end.
"""

import json
import os
import pathlib
import re
import socket
import subprocess
import sys
import time

import pytest

from trainer_runs import ROOT, TINY_FLAGS

GCLOUD = """#!/bin/bash
# Stand-in for `gcloud compute tpus tpu-vm scp|ssh ... --worker=all` on a slice of two workers.
echo "gcloud $*" >> "$SLICE/gcloud.log"
args=("$@")
for ((i = 0; i < $#; i++)); do [ "${args[$i]}" = --command ] && command=${args[$((i + 1))]}; done
for w in 0 1; do
  root=$SLICE/worker-$w
  case "$4" in
    scp) cp "$5" "$root${6#*:}" ;;
    ssh) (cd "$root/home" && env -i PATH="$BASE_PATH" HOME="$root/home" LANG=C.UTF-8 \\
            JAX_PLATFORMS=cpu XLA_FLAGS=--xla_force_host_platform_device_count=1 \\
            JAX_COORDINATOR_ADDRESS="127.0.0.1:$COORDINATOR_PORT" JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=$w \\
            bash -c "${command//\\/tmp\\/fungizsl-src-/$root/tmp/fungizsl-src-}") || exit ;;
    *) exit 3 ;;
  esac
done
"""

RUN = ("--config.batch_size=8", "--config.total_steps=60", "--config.warmup_steps=1", "--config.log_every=1",
       "--config.checkpoint_every=1000", "--config.audit_writes=True")
STEPS = 60


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fingerprint() -> str:
    """The stamp `launch/setup_env.sh tpu` leaves after a successful install of this checkout."""
    text = (pathlib.Path(ROOT) / "setup.py").read_bytes() + (pathlib.Path(ROOT) / "launch/requirements-no-deps.txt").read_bytes()
    cksum = subprocess.run(["cksum"], input=text, capture_output=True, check=True).stdout.split()[0].decode()
    return f"tpu {cksum}"


def _stamped_venv(home: pathlib.Path) -> pathlib.Path:
    """~/.fungizsl/venv-tpu on a worker: this test's Python environment under the name the worker
    script expects, stamped as installed (pyvenv.cfg, the interpreter and lib/ of the real venv)."""
    real = pathlib.Path(sys.prefix)
    venv = home / ".fungizsl" / "venv-tpu"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text((real / "pyvenv.cfg").read_text())
    (venv / "lib").symlink_to(real / "lib")
    (venv / "bin" / "python").symlink_to(pathlib.Path(sys.executable).resolve())
    (venv / "bin" / "activate").write_text(f"export VIRTUAL_ENV={venv}\nexport PATH={venv}/bin:$PATH\n")
    (venv / ".fungizsl-tpu").write_text(_fingerprint() + "\n")
    return venv


def _launch(env, name: str, flags) -> None:
    done = subprocess.run(["bash", "launch/tpu_vm.sh", "--name", name, "--env", "FUNGIZSL_REHEARSAL=1",
                           "local-slice", "here-a", "--", *flags],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr


def _on_all_workers(env, command: str) -> str:
    done = subprocess.run(["gcloud", "compute", "tpus", "tpu-vm", "ssh", "local-slice", "--zone", "here-a",
                           "--worker=all", "--command", command], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def _wait(pids, seconds: float, logs) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and any(_running(pid) for pid in pids):
        time.sleep(0.5)
    assert not any(_running(pid) for pid in pids), f"workers still running: {logs()[0][-2000:]}"


def test_two_local_workers_train_as_one_program_stop_and_resume_through_the_tpu_launcher(tmp_path):
    """Launch, `tpu_worker.sh stop` on every worker mid-run (SIGTERM to each process group, what a
    maintenance event or a spot preemption sends), launch again: it resumes at the saved step."""
    if sys.prefix == sys.base_prefix:  # the workers' environment is a view of this venv
        message = "the rehearsal needs the project's virtual environment (./launch/test.sh makes it)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}, and CI=true", pytrace=False)
        pytest.skip(message)
    slice_dir, fakes, workdir = tmp_path / "slice", tmp_path / "fakes", tmp_path / "shared_workdir"
    for w in (0, 1):
        for sub in ("home", "tmp"):
            (slice_dir / f"worker-{w}" / sub).mkdir(parents=True)
        _stamped_venv(slice_dir / f"worker-{w}" / "home")
    fakes.mkdir()
    (fakes / "gcloud").write_text(GCLOUD)
    (fakes / "gcloud").chmod(0o755)
    base_path = os.environ["PATH"]
    env = dict(os.environ, PATH=f"{fakes}:{base_path}", BASE_PATH=base_path, SLICE=str(slice_dir),
               COORDINATOR_PORT=str(_free_port()))
    flags = [*TINY_FLAGS, *RUN, f"--workdir={workdir}"]

    def runs(name):
        return [slice_dir / f"worker-{w}" / "home" / "fungizsl-runs" / name for w in (0, 1)]

    def logs(name):
        return [next((run / "logs").glob("*.log")).read_text() for run in runs(name)]

    # First launch: stopped on every worker once training is under way.
    _launch(env, "rehearsal", flags)
    pids = [int((run / "run.pid").read_text()) for run in runs("rehearsal")]
    deadline = time.time() + 300
    while time.time() < deadline and not re.search(r"^step 5/", logs("rehearsal")[0], re.M):
        assert all(_running(pid) for pid in pids), logs("rehearsal")[0][-3000:]
        time.sleep(0.2)
    stopped = _on_all_workers(env, "cd ~/fungizsl-runs/rehearsal && bash launch/tpu_worker.sh stop")
    assert stopped.count("sent SIGTERM to process group") == 2, stopped
    _wait(pids, 120, lambda: logs("rehearsal"))
    first = logs("rehearsal")
    saved = [re.findall(r"^fungizsl: preempted at step (\d+): checkpoint saved in ", log, re.M) for log in first]
    assert saved[0] and saved[0] == saved[1], (first[0][-2000:], first[1][-2000:])
    step = int(saved[0][0])
    assert 5 <= step < STEPS
    logged = [int(s) for s in re.findall(r"^step (\d+)/", first[0], re.M)]
    assert max(logged) == step  # the last finished step is the one saved: none lost
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit()) == [step]

    # The code each worker ran is the launcher's tarball, unpacked in its own folder, set up once
    # (stamp found: nothing installed), then started detached with the launcher's environment.
    for w, run in enumerate(runs("rehearsal")):
        assert (run / "setup.py").exists() and not (run / ".git").exists()
        assert not list((slice_dir / f"worker-{w}" / "tmp").glob("*.tgz"))  # unpacked, then removed
    gcloud = (slice_dir / "gcloud.log").read_text().splitlines()
    assert [line.split()[4] for line in gcloud] == ["scp", "ssh", "ssh", "ssh"]
    for w, log in enumerate(first):
        # both joined one program: the tokenizer process 0 trained is the one every process read
        assert re.search(rf"^process {w}: tokenizer ", log, re.M), log[-3000:]
    digests = {re.search(r"tokenizer \S+ sha256 (\w+)", log).group(1) for log in first}
    assert len(digests) == 1, digests

    # Second launch, same flags: a new folder per worker, resumed from the saved step, to the end.
    _launch(env, "rehearsal-2", flags)
    pids = [int((run / "run.pid").read_text()) for run in runs("rehearsal-2")]
    _wait(pids, 300, lambda: logs("rehearsal-2"))
    second = logs("rehearsal-2")
    assert f"resumed from step {step} of {STEPS}" in second[0], second[0][-3000:]
    assert min(int(s) for s in re.findall(r"^step (\d+)/", second[0], re.M)) > step
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["selection"]["last_step"] == STEPS
    # One program: process 0 wrote the shared files, process 1 only its own audit record.
    writes = [json.loads((workdir / "audit" / f"writes_process_{w}.json").read_text()) for w in (0, 1)]
    assert any(w.endswith("summary.json") for w in writes[0]) and writes[1] == [], writes[1]
    assert sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())[-1] == STEPS


def _running(pid: int) -> bool:
    stat = pathlib.Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"
