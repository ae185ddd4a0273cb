"""Training entry point: `python -m fungizsl.main --config=configs/<exp>.py:<args> --workdir=DIR`.

Any config field can be overridden on the command line (`--config.total_steps=100`); a field
that does not exist stops the run with a message naming it. On several hosts (TPU VM slice,
SLURM) pass `--multihost` (or let the launchers set FUNGIZSL_MULTIHOST=1) so that
`jax.distributed.initialize()` runs before anything touches a device.
"""

import logging
import os

from absl import app, flags
from absl import logging as logging_absl
from ml_collections import config_flags

TRAINERS = {"fungalzsl": "fungizsl.train.fungalzsl", "evaluate": "fungizsl.train.evaluate_only"}

_CONFIG = config_flags.DEFINE_config_file("config", None, "ml_collections config file, with :args", lock_config=True)
flags.DEFINE_string("workdir", None, "where checkpoints, metrics and plots go; an existing run resumes")
flags.DEFINE_string("trainer", "fungalzsl", f"which trainer runs the config: {sorted(TRAINERS)} "
                    "(a config's own `trainer` field wins unless this flag is given)")
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

    name = FLAGS.trainer if FLAGS["trainer"].present else _CONFIG.value.get("trainer", FLAGS.trainer)
    if name not in TRAINERS:
        raise app.UsageError(f"trainer {name!r}: known trainers are {sorted(TRAINERS)}")
    trainer = importlib.import_module(TRAINERS[name])
    summary = trainer.train_and_evaluate(_CONFIG.value, FLAGS.workdir)
    from fungizsl.evaluate import metrics_io

    import jax
    if jax.process_index() == 0:
        metrics_io.print_table({k: v for k, v in summary.items() if k != "confusion_matrix"},
                               title=f"{name} summary ({FLAGS.workdir})")


def run(argv: list[str] | None = None) -> None:
    app.run(main, argv=argv)


if __name__ == "__main__":
    run()
