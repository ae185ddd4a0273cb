"""Preemption: SIGTERM during training becomes "save a checkpoint at this step, then stop".

SIGTERM is what a job gets before it is taken away: SLURM on `scontrol requeue`, preemption,
`scancel` or the end of its time (followed by SIGKILL after the cluster's KillWait), a Cloud TPU
maintenance event, a spot or preemptible VM's notice. :func:`fungizsl.train.core.run` watches
for it while it trains: at the step all processes agree on, it saves a checkpoint of that step
(train state and Grain iterator), waits for the save, and raises :class:`~fungizsl.errors.Preempted`;
``fungizsl.main`` prints one line and exits with :data:`EXIT_CODE`. Running the same command
again resumes from that step, with the batches an uninterrupted run would have seen, so no
finished step is lost.

* One process (no ``jax.distributed``): a Python SIGTERM handler sets a flag, checked after each
  step; the previous handler comes back when training ends (a SIGTERM during the final
  evaluation ends the process as before).
* Several processes (``jax.distributed.initialize`` ran): an Orbax save is collective, so every
  process must save at the same step. JAX's preemption sync manager, started by
  ``jax.distributed.initialize``, catches SIGTERM in C++ (on any process), tells the others and
  picks the step: :func:`jax.experimental.multihost_utils.reached_preemption_sync_point` turns
  True on every process at the same step. No Python handler is installed then: it would replace
  JAX's. A SIGTERM after the last step is swallowed by JAX's handler; the run goes on to its end
  (or SIGKILL).
"""

from __future__ import annotations

import signal
import threading

import jax
from jax.experimental import multihost_utils

# What a process ended by SIGTERM reports (128 + 15), so schedulers and shells read it alike.
EXIT_CODE = 143


class Watch:
    """Watches for SIGTERM while training; a context manager (``with Watch() as watch:``)."""

    def __init__(self):
        self.multihost = jax.distributed.is_initialized()
        self.requested = False
        self._previous = None

    def __enter__(self) -> Watch:
        # Signal handlers can only be set from the main thread; elsewhere only JAX's manager watches.
        if not self.multihost and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None

    def _handle(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def reached(self, step: int) -> bool:
        """Whether training must save and stop after ``step``. Every process calls this at every
        step (with several processes it is a collective agreement on the step)."""
        if self.multihost:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested
