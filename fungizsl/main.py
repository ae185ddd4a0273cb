"""Training entry point: `python -m fungizsl.main --config=configs/<exp>.py:<args> --workdir=DIR`.

Any config field can be overridden on the command line (`--config.total_steps=100`); a field
that does not exist stops the run with a message naming it. On several hosts (TPU VM slice,
SLURM) pass `--multihost` (or let the launchers set FUNGIZSL_MULTIHOST=1) so that
`jax.distributed.initialize()` runs before anything touches a device.
"""

import logging
import os
import sys

from absl import app, flags
from absl import logging as logging_absl
from ml_collections import config_flags

TRAINERS = {"fungalzsl": "fungizsl.train.fungalzsl"}

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file, with :args", lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and plots go; an existing run resumes")
flags.DEFINE_string("trainer", "fungalzsl", f"which trainer runs the config: {sorted(TRAINERS)}")
flags.DEFINE_bool("multihost", os.environ.get("FUNGIZSL_MULTIHOST") == "1",
                  "call jax.distributed.initialize() (coordinator from the TPU/SLURM environment or "
                  "JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID)")
flags.mark_flags_as_required(["config", "workdir"])
FLAGS = flags.FLAGS


def initialize_distributed() -> None:
    import jax

    explicit = {k: os.environ[v] for k, v in (("coordinator_address", "JAX_COORDINATOR_ADDRESS"),
                                              ("num_processes", "JAX_NUM_PROCESSES"),
                                              ("process_id", "JAX_PROCESS_ID")) if v in os.environ}
    for key in ("num_processes", "process_id"):
        if key in explicit:
            explicit[key] = int(explicit[key])
    jax.distributed.initialize(**explicit)  # with nothing explicit, JAX reads TPU/SLURM settings
    logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
                 jax.process_count(), jax.local_device_count(), jax.device_count())


def main(argv) -> None:
    del argv
    if not FLAGS["verbosity"].present:  # Orbax and Grain log every save at INFO; keep the console readable
        logging_absl.set_verbosity(logging_absl.WARNING)
    if FLAGS.multihost:
        initialize_distributed()
    import importlib

    if FLAGS.trainer not in TRAINERS:
        raise app.UsageError(f"--trainer={FLAGS.trainer!r}: known trainers are {sorted(TRAINERS)}")
    trainer = importlib.import_module(TRAINERS[FLAGS.trainer])
    from fungizsl.errors import ConfigError
    from fungizsl.train.core import NonFiniteLossError

    try:
        summary = trainer.train_and_evaluate(_CONFIG.value, FLAGS.workdir)
    except (ConfigError, NonFiniteLossError) as error:  # the message says what to do: no traceback
        print(f"fungizsl: {error}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(error, ConfigError) else 3)
    from fungizsl.evaluate import metrics_io

    import jax
    if jax.process_index() == 0:
        metrics_io.print_table({k: v for k, v in summary.items() if k not in ("confusion_matrix", "selection")},
                               title=f"{FLAGS.trainer} summary ({FLAGS.workdir})")
        selection = summary.get("selection", {})
        print(f"numbers from the {selection.get('split')} split, {selection.get('checkpoint')} checkpoint "
              f"(step {selection.get('step')} of {selection.get('last_step')}"
              + (f", chosen by val {selection['selection_metric']} = {selection.get('selection_value')}"
                 if selection.get("selection_metric") and selection.get("checkpoint") == "best" else "") + ")",
              flush=True)


def run(argv: list[str] | None = None) -> None:
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
