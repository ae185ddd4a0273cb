"""Errors that the command line reports as one line (no traceback): the user must set something."""


class ConfigError(ValueError):
    """A config field or flag is missing or wrong; the message names it and says what to set."""


class NonFiniteLossError(RuntimeError):
    """The loss or the gradients became NaN or infinite; the run stopped (the message names the
    step and the last good checkpoint)."""
