"""Training entry point: `python -m fungizsl.main --config=configs/<exp>.py:<args> --workdir=DIR`.

Any config field can be overridden on the command line (`--config.total_steps=100`); a field
that does not exist stops the run with a message naming it. The config names its trainer module
(`config.trainer`, e.g. "fungizsl.fungalzsl.trainer"; `--trainer` overrides it), and every trainer
module exposes `train_and_evaluate(config, workdir) -> summary`. On several hosts (TPU VM slice,
SLURM) pass `--multihost` (or let the launchers set FUNGIZSL_MULTIHOST=1) so that
`jax.distributed.initialize()` runs before anything touches a device (importing JAX does not).

What a user gets wrong stops the run with one line on stderr, `fungizsl: <what to set>`, exit
code 2, and no traceback (:class:`fungizsl.errors.ConfigError`): a config field that does not
exist or a bad value (checked while the flags are parsed), a bad argument after the config file's
colon, and, before the trainer renders, trains or writes anything, what :func:`preflight` checks:
the schedule's step counts, the trainer's own `check_config(config)` where it has one (model
folders), and a workdir every process can create and write.
"""

import difflib
import importlib
import logging
import os
import sys

import jax
from absl import app, flags
from absl import logging as logging_absl
from ml_collections import config_flags

from fungizsl import allocator, devices, metrics_io, runs
from fungizsl import workdir as workdir_lib
from fungizsl.errors import ConfigError, NonFiniteLossError, Preempted
from fungizsl.train import optim, preemption

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
        raise ConfigError(f"trainer {name!r} is not a module (config.trainer or --trainer); trainers are "
                          f"modules such as fungizsl.fungalzsl.trainer or fungizsl.fungiclef.full") from None
    if not hasattr(module, "train_and_evaluate"):
        raise ConfigError(f"trainer {name!r} has no train_and_evaluate(config, workdir)")
    return name, module


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _config_arg(argv) -> str | None:
    """The value of --config in ``argv`` (``--config=X`` or ``--config X``)."""
    for i, arg in enumerate(argv):
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
    return None


def _missing_field(argv) -> str | None:
    """A one-line message for the first ``--config.<path>`` override of ``argv`` that names no
    field of the config (None if every one does)."""
    try:
        config = FLAGS["config"].parser.parse(_config_arg(argv))
    except Exception:  # noqa: BLE001 - the config itself fails: the caller reports the original error
        return None
    for arg in argv:
        if not arg.startswith(("--config.", "--noconfig.")):
            continue
        flag = arg.split("=", 1)[0].lstrip("-")
        path = flag.removeprefix("no") if flag.startswith("noconfig.") else flag
        node, parts = config, path.split(".")[1:]
        for depth, key in enumerate(parts):
            if not hasattr(node, "keys"):
                return f"--{flag}: config.{'.'.join(parts[:depth])} is a value, not a block of fields"
            if key not in node:
                where = ".".join(["config", *parts[:depth]])
                close = difflib.get_close_matches(key, [str(k) for k in node.keys()], n=1)
                hint = (f"did you mean --{where}.{close[0]}?" if close
                        else f"fields of {where}: {', '.join(sorted(map(str, node.keys())))}")
                return f"--{flag}: the config has no field {where}.{key}; {hint}"
            node = node[key]
    return None


def parse_flags(argv):
    """absl's flag parsing, with a user's mistake (an unknown config field, a bad value, a bad
    argument after the config file's colon) reported as one line, exit code 2."""
    try:
        rest = FLAGS(argv)
        if FLAGS["config"].value is not None:
            FLAGS["config"].value.get("trainer")  # a file that did not load raises here, not later
        return rest
    except OSError as error:  # ml_collections keeps a config file's load error for the first access
        path = (_config_arg(argv) or "").split(":", 1)[0]
        message = (f"--config={_config_arg(argv)}: no such config file {path}; configs are files such as "
                   f"configs/fungalzsl.py" if not os.path.isfile(path) else
                   f"--config={_config_arg(argv)}: the config file does not load ({error})")
    except flags.Error as error:
        message = str(error)
        if "Error whilst parsing config file" in message:  # get_config(arg) refused its argument
            cause = error  # absl's error <- ml_collections' copy <- the config's own error
            while cause.__context__ is not None and not cause.__suppress_context__:
                cause = cause.__context__
            message = f"--config={_config_arg(argv)}: {cause}"
    except (AttributeError, KeyError) as error:  # ml_collections: an override names no field
        message = _missing_field(argv) or f"a --config.* override names no config field ({error})"
    print(f"fungizsl: {_one_line(message)}", file=sys.stderr, flush=True)
    sys.exit(2)


def preflight(config, workdir: str, trainer) -> None:
    """Checks made before the trainer renders, trains or writes anything (a
    :class:`ConfigError` otherwise): the schedules' step counts, the trainer's own
    ``check_config(config)`` if it has one, then the workdir, which every process creates and
    probes with a write of its own (every process writes there: Orbax saves each process's shards)."""
    optim.check_schedules(config)
    if hasattr(trainer, "check_config"):
        trainer.check_config(config)
    workdir_lib.check_writable(workdir)


def main(argv) -> None:
    del argv
    if not FLAGS["verbosity"].present:  # Orbax and Grain log every save at INFO; keep the console readable
        logging_absl.set_verbosity(logging_absl.WARNING)
    if FLAGS.multihost:
        initialize_distributed()
    try:
        trainer_name, trainer = load_trainer(_CONFIG.value, FLAGS.trainer)
        preflight(_CONFIG.value, FLAGS.workdir, trainer)
        devices.warn_if_cpu_only(_CONFIG.value)
        summary = trainer.train_and_evaluate(_CONFIG.value, FLAGS.workdir)
    except (ConfigError, NonFiniteLossError) as error:  # the message says what to do: no traceback
        print(f"fungizsl: {error}", file=sys.stderr, flush=True)
        sys.exit(2 if isinstance(error, ConfigError) else 3)
    except Preempted as error:  # SIGTERM: the step reached is saved; the same command resumes
        print(f"fungizsl: {error}", file=sys.stderr, flush=True)
        sys.exit(preemption.EXIT_CODE)
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
    app.run(main, argv=argv, flags_parser=parse_flags)


if __name__ == "__main__":
    allocator.reexec_under_tcmalloc()
    run()
