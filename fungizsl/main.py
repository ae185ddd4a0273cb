"""Training entry point: `python -m fungizsl.main --config=configs/<exp>.py:<args> --workdir=DIR`.

Any config field can be overridden on the command line (`--config.total_steps=100`); a field
that does not exist stops the run with a message naming it. The config names its trainer module
(`config.trainer`, e.g. "fungizsl.fungalzsl.trainer"; `--trainer` overrides it), and every trainer
module exposes `train_and_evaluate(config, workdir) -> summary`. On several hosts (TPU VM slice,
SLURM) pass `--multihost` (or let the launchers set FUNGIZSL_MULTIHOST=1) so that
`jax.distributed.initialize()` runs before anything touches a device (importing JAX does not).
"""

import importlib
import logging
import os
import sys

import jax
from absl import app, flags
from absl import logging as logging_absl
from ml_collections import config_flags

from fungizsl import devices, metrics_io, runs
from fungizsl.errors import ConfigError, NonFiniteLossError

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file, with :args", lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and plots go; an existing run resumes")
flags.DEFINE_string("trainer", None, "the trainer module that runs the config, e.g. fungizsl.fungalzsl.trainer, "
                    "fungizsl.fungiclef.full (default: the config's `trainer` field)")
flags.DEFINE_bool("multihost", os.environ.get("FUNGIZSL_MULTIHOST") == "1",
                  "call jax.distributed.initialize() (coordinator from the TPU/SLURM environment or "
                  "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def initialize_distributed() -> None:
    # Explicit JAX_* settings and SLURM GPU ordinals; JAX reads the rest from the TPU/SLURM settings.
    jax.distributed.initialize(**devices.distributed_initialize_kwargs())
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def load_trainer(config, override: str | None = None):
    """The trainer module the config names (or `override`); a name that is not a fungizsl trainer
    module is a usage error, not a traceback."""
    name = runs.trainer_module({"trainer": override, "system": config.get("system")} if override else config)
    try:
        module = importlib.import_module(name)
    except ModuleNotFoundError as error:
        if not name.startswith(error.name or "\0"):  # a missing dependency inside the trainer
            raise
        raise app.UsageError(f"trainer {name!r} is not a module (config.trainer or --trainer); trainers are "
                             f"modules such as fungizsl.fungalzsl.trainer or fungizsl.fungiclef.full") from None
    if not hasattr(module, "train_and_evaluate"):
        raise app.UsageError(f"trainer {name!r} has no train_and_evaluate(config, workdir)")
    return name, module


def main(argv) -> None:
    del argv
    if not FLAGS["verbosity"].present:  # Orbax and Grain log every save at INFO; keep the console readable
        logging_absl.set_verbosity(logging_absl.WARNING)
    if FLAGS.multihost:
        initialize_distributed()
    devices.warn_if_cpu_only(_CONFIG.value)
    trainer_name, trainer = load_trainer(_CONFIG.value, FLAGS.trainer)
    try:
        summary = trainer.train_and_evaluate(_CONFIG.value, FLAGS.workdir)
    except (ConfigError, NonFiniteLossError) as error:  # the message says what to do: no traceback
        print(f"fungizsl: {error}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(error, ConfigError) else 3)
    if jax.process_index() == 0:
        metrics_io.print_table({k: v for k, v in summary.items() if k not in ("confusion_matrix", "selection")},
                               title=f"{trainer_name.removeprefix('fungizsl.')} summary ({FLAGS.workdir})")
        selection = summary.get("selection")
        if selection:
            print(f"numbers from the {selection.get('split')} split, {selection.get('checkpoint')} checkpoint "
                  f"(step {selection.get('step')} of {selection.get('last_step')}"
                  + (f", chosen by val {selection['selection_metric']} = {selection.get('selection_value')}"
                     if selection.get("selection_metric") and selection.get("checkpoint") == "best" else "")
                  + ")", flush=True)


def run(argv: list[str] | None = None) -> None:
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
