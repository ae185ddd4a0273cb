"""Where a training job's wall time goes: input pipeline, host-to-device, step, evaluation,
checkpointing (and the first step, which includes compilation).

Device work is asynchronous: a step's dispatch returns at once and its compute is paid at the
next point that waits for the device. So the clock times the phases that run on the host
directly, and the train step gets the remainder of the loop's wall time (dispatch plus device
compute, including time the host spent waiting for it). Used by `fungizsl.train.core.run`, which
writes the split to `summary.json` as `time_split_s` and prints it.
"""

import contextlib
import time


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
