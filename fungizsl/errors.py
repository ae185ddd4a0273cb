"""Errors that the command line reports as one line (no traceback): the user must set something, or
run the same command again (a preempted run)."""


class ConfigError(ValueError):
    """A config field or flag is missing or wrong; the message names it and says what to set."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN or infinite; the run stopped (the message names the
    step and the last good checkpoint)."""


class Preempted(Exception):
    """SIGTERM (a preemption, a requeue, a maintenance event) stopped training after a checkpoint of
    the step it had reached; the same command resumes from there (see fungizsl.train.preemption)."""

    def __init__(self, step: int, directory):
        super().__init__(f"preempted at step {step}: checkpoint saved in {directory}; "
                         f"run the same command again to resume")
        self.step = step
