"""SIGTERM on one process (a TPU maintenance event, a spot VM's notice): the trainer saves the step
it reached, exits with code 143 after one line, and the same command resumes to the parameters of
an uninterrupted run. Several processes under SLURM: tests/test_slurm.py."""

import os
import re
import signal
import subprocess
import time

from fungizsl.train import checkpoint, preemption
from trainer_runs import assert_same_params, finish, start_training

RUN = ("--config.batch_size=8", "--config.total_steps=40", "--config.warmup_steps=1", "--config.log_every=1",
       "--config.checkpoint_every=5", "--config.data.robustness_per_class=1")
LINE = re.compile(r"^fungizsl: preempted at step (\d+): checkpoint saved in (\S+); "
                  r"run the same command again to resume$", re.M)
LOGGED = re.compile(r"^step (\d+)/40: loss", re.M)


def test_watch_turns_sigterm_into_a_flag_and_restores_the_previous_handler():
    def previous(signum, frame):
        raise AssertionError("the previous handler ran while the watch was on")

    old = signal.signal(signal.SIGTERM, previous)
    try:
        with preemption.Watch() as watch:
            assert not watch.multihost and not watch.reached(1)
            os.kill(os.getpid(), signal.SIGTERM)
            deadline = time.time() + 5
            while not watch.requested and time.time() < deadline:
                time.sleep(0.01)
            assert watch.reached(2) and watch.reached(3)  # stays set: one save, then the stop
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)


def _interrupt_after(process: subprocess.Popen, step: int) -> tuple[int, str]:
    """Reads the run's output, sends SIGTERM once step `step` is logged; (exit status, output)."""
    out = []
    for line in process.stdout:
        out.append(line)
        if line.startswith(f"step {step}/"):
            process.send_signal(signal.SIGTERM)
    return process.wait(timeout=120), "".join(out)


def test_sigterm_saves_the_step_reached_and_the_same_command_resumes_to_the_same_parameters(tmp_path):
    """Tolerance: none, the resumed run's parameters equal the uninterrupted run's bit for bit
    (same devices, same batches from the restored Grain state, same XLA programs)."""
    whole, cut = tmp_path / "uninterrupted", tmp_path / "interrupted"
    uninterrupted = start_training(whole, *RUN)
    status, out = _interrupt_after(start_training(cut, *RUN), step=7)
    finish(uninterrupted)

    assert status == preemption.EXIT_CODE == 143, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    [(step, directory)] = LINE.findall(out)
    step = int(step)
    logged = [int(s) for s in LOGGED.findall(out)]
    # The checkpoint is the last step the run finished (and logged), past the periodic ones.
    assert step == logged[-1] and 7 <= step < 40, (step, logged)
    assert directory == str(cut / "checkpoints")
    steps = checkpoint.RunCheckpoints(cut).all_steps()
    assert max(steps) == step and all(s % 5 == 0 for s in steps if s != step), steps
    assert not (cut / "summary.json").exists()

    again = finish(start_training(cut, *RUN))
    assert f"resumed from step {step} of 40" in again
    assert [int(s) for s in LOGGED.findall(again)][0] == step + 1  # no step done twice, none skipped
    assert_same_params(whole, cut, rtol=0, atol=0)
