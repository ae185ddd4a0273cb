"""Where a training job's wall time goes: input pipeline, host-to-device, step, evaluation,
checkpointing (and the first step, which includes compilation).

Device work is asynchronous: a step's dispatch returns at once and its compute is paid at the
next point that waits for the device. So the clock times the phases that run on the host
directly, and the train step gets the remainder of the loop's wall time (dispatch plus device
compute, including time the host spent waiting for it). Used by `fungizsl.train.core.run`, which
writes the split to `summary.json` as `time_split_s` and prints it. Also here: the loop's progress
line (`Progress`) and the clock of training steps alone (`StepTimer`, behind img/sec/core).
"""

import contextlib
import sys
import time

import jax
from tqdm import tqdm


class PhaseClock:
    PHASES = ("input pipeline", "host-to-device", "first step (compile)", "evaluation", "checkpointing")

    def __init__(self):
        self.seconds = {name: 0.0 for name in self.PHASES}
        self.started = time.perf_counter()

    @contextlib.contextmanager
    def phase(self, name: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def split(self) -> dict[str, float]:
        """Seconds per phase; "train steps" is the loop's wall time not spent in another phase."""
        total = time.perf_counter() - self.started
        out = dict(self.seconds)
        out["train steps"] = max(total - sum(self.seconds.values()), 0.0)
        out["total"] = total
        return out


def format_split(split: dict[str, float]) -> str:
    total = split["total"] or 1.0
    parts = [f"{name} {seconds:.1f}s ({seconds / total:.0%})" for name, seconds in split.items() if name != "total"]
    return f"wall time {total:.1f}s: " + ", ".join(parts)


class Progress:
    """tqdm on a terminal; one printed line per log step otherwise. Quiet on processes > 0."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.enabled, self.total = enabled, total
        self.bar = None
        if enabled and sys.stdout.isatty():
            self.bar = tqdm(total=total, initial=initial, desc="train")

    def update(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def log(self, step: int, metrics: dict) -> None:
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", lr=f"{metrics['lr']:.1e}")
        elif self.enabled:
            rate = metrics.get("img/sec/core")
            print(f"step {step}/{self.total}: loss {metrics['loss']:.4f}, lr {metrics['lr']:.2e}"
                  + (f", img/sec/core {rate:.1f}" if rate else ""), flush=True)

    def write(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text)
        elif self.enabled:
            print(text, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class StepTimer:
    """Wall time spent in training steps only: paused (after the device caught up) around
    evaluations and checkpoint saves."""

    def __init__(self):
        self.seconds, self.steps, self._since = 0.0, 0, None

    def start(self):
        self._since = time.perf_counter()

    def pause(self, state):
        jax.block_until_ready(state)
        if self._since is not None:
            self.seconds += time.perf_counter() - self._since
            self._since = None

    def take(self, state) -> tuple[float, int]:
        self.pause(state)
        out = (self.seconds, self.steps)
        self.seconds, self.steps = 0.0, 0
        self.start()
        return out
