"""The training loop every trainer of this package runs on (FungalZSL CLIP, FungiCLEF DWCL/Q-Former).

A trainer describes *what* to train as a :class:`Task`; :func:`run` does the rest, the same way for
both papers: device mesh, sharded state init, a jit-compiled update step with buffer donation,
Orbax checkpoints of the train state together with the Grain iterator state, automatic resume,
logging, evaluation scheduling, best-checkpoint selection on a validation metric, one final test
evaluation, a NaN/inf guard, and export.

Contract
--------
``Task`` fields (see the class for types):

* ``init_variables(rng) -> {"params": ..., <other collections>: ...}`` is traced under ``jax.jit``
  and its output created directly in its shardings. Collections besides ``params`` (e.g.
  BatchNorm ``batch_stats``) are carried in the state as ``extra`` and never see the optimizer.
* ``load_variables() -> same tree of host arrays`` (optional): weights to start from instead of
  the random init (a Hugging Face folder, an earlier run). Its tree must equal the init's. Every
  process returns the whole tree; each places only its own shards (``placement.from_host``).
* ``loss_fn(params, extra, batch, rng) -> (loss, (metrics, new_extra))`` on the *global* batch
  (jax arrays split over the mesh's batch axes). ``rng`` is ``fold_in(key(config.seed), step)``,
  for dropout and the like. ``metrics`` are scalars, logged under ``train/``.
* ``train_iterator``: a checkpointable Grain iterator of host-local numpy batches (this process's
  share); the core places them with :func:`fungizsl.placement.to_global_batch`.
* ``evaluate(variables, split, evals, step, out_dir) -> {"<eval name>/<metric>": value}`` runs the
  evaluators ``evals`` (a ``{name: config}`` subset of ``config.evals``) on ``split`` with the
  given variables (sharded jax arrays). ``out_dir`` is the workdir on the final pass (write plots
  there, through epath, from process 0 only) and ``None`` during training.
* ``post_update(params) -> params`` (optional): applied inside the step after the optimizer (e.g.
  clamping CLIP's logit scale).
* ``export(variables, workdir)`` (optional): called on process 0 with host numpy variables of
  the checkpoint the final evaluation used; write under ``workdir`` (an epath), e.g. ``hf_export/``.
* ``summarise(results) -> dict`` (optional): the headline numbers written to ``summary.json``.
* ``make_optimizer(abstract_params) -> (optax transform, lr schedule)`` (optional; default
  :func:`default_optimizer` reads ``config.lr``, ``config.wd``, ``config.optim.*``).

Config fields read here: ``seed``, ``batch_size`` (global), ``total_steps``, ``log_every``,
``checkpoint_every``, ``keep_checkpoints``, ``mesh.{data,fsdp}`` (``fsdp=-1``: all devices),
``sharding_rules``, ``sharding_min_size`` (default 2**18 elements), ``evals.<name>.{type, split,
every}``, ``best_metric`` (``"<eval name>/<metric>"`` of an evaluator that does *not* run on the
final split or a variant of it), ``best_mode`` (max|min), ``final_eval_split`` (default "test"),
``final_eval_checkpoint`` ("best" | "last"), ``export``, ``tensorboard_upload_secs`` (default 60).

Evaluation schedule: an entry of ``config.evals`` runs during training on its ``split`` every
``every`` steps and at the last step (``every=0``: not during training). Every entry runs once more
at the end on ``final_eval_split`` with the checkpoint ``final_eval_checkpoint`` names: "best" is
the kept step with the best ``best_metric`` (a validation number; choosing by the final split is
refused), "last" the final step. An entry with ``every=0`` whose ``split`` is a variant of the
final split (``<final split>_<name>``, e.g. ``test_paper``: a shifted test set) runs in that final
pass on its own split instead. An entry on the final split or a variant of it with ``every>0``
(the final split seen during training) is refused with a ConfigError before anything starts.
``summary.json`` records the split, step and checkpoint the numbers come from, and the selection
metric with its value.

Safety: the step keeps the previous state when the loss or the gradient norm is not finite and
records the step; the loop checks at every log, eval and checkpoint step, never saves a bad state,
and stops with :class:`NonFiniteLossError` naming the step and the last good checkpoint.

Preemption: SIGTERM while training saves a checkpoint of the step reached (on every process at
the same step) and raises :class:`~fungizsl.errors.Preempted` (:mod:`fungizsl.train.preemption`).

Logging: on a terminal, a tqdm bar; otherwise (CI, SLURM, nohup) one line per ``log_every`` steps.
``img/sec/core`` counts training-step time only (evaluation and checkpoint time excluded).

Several hosts: every process runs this loop (collectives need all of them); process 0 alone
writes TensorBoard, JSON and exports (:mod:`fungizsl.workdir`), and Orbax writes each process's
shards and iterator state.
"""

from __future__ import annotations

import dataclasses
import io
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from etils import epath
from jax.experimental import multihost_utils

from fungizsl import metrics_io, placement, runs, xla_options
from fungizsl import workdir as workdir_lib
from fungizsl.errors import ConfigError, NonFiniteLossError, Preempted
from fungizsl.train import checkpoint, optim, preemption, timing

VAL_HISTORY_FILE = "val_history.json"


@dataclasses.dataclass
class Task:
    name: str
    init_variables: Callable[[jax.Array], Mapping[str, Any]]
    loss_fn: Callable[..., tuple[jax.Array, tuple[dict, dict]]]
    train_iterator: Any
    evaluate: Callable[..., dict[str, Any]]
    load_variables: Callable[[], Mapping[str, Any]] | None = None
    post_update: Callable[[Any], Any] | None = None
    export: Callable[[dict, epath.Path], None] | None = None
    summarise: Callable[[dict], dict] | None = None
    make_optimizer: Callable[[Any], tuple[optax.GradientTransformation, Callable]] | None = None
    describe: Callable[[dict], str] | None = None  # one log line for a dict of eval results


# ---------------------------------------------------------------------------------------------
# Mesh, optimizer, state
# ---------------------------------------------------------------------------------------------

def make_mesh(config) -> jax.sharding.Mesh:
    """The ("data", "fsdp") mesh of ``config.mesh``; ``fsdp=-1`` puts every device on the fsdp axis."""
    fsdp = config.mesh.fsdp
    if fsdp == -1:
        fsdp = jax.device_count()
    mesh = placement.make_mesh(data=config.mesh.data, fsdp=fsdp)
    if config.batch_size % mesh.size:
        raise ValueError(f"config.batch_size={config.batch_size} is not divisible by the {mesh.size} devices")
    return mesh


def default_optimizer(config):
    def make(params):
        return optim.make_optimizer(
            params, learning_rate=config.lr, total_steps=config.total_steps,
            warmup_steps=config.warmup_steps, weight_decay=config.wd, b2=config.optim.b2,
            grad_clip_norm=config.optim.grad_clip_norm, frozen=tuple(config.optim.frozen),
            layer_decay=config.optim.layer_decay)
    return make


@dataclasses.dataclass
class Trainable:
    """What :func:`build` compiles: the abstract state, its shardings and the jitted functions."""

    abstract_state: Any
    state_sharding: Any
    init_state: Callable  # rng -> state (jitted, sharded output)
    place_variables: Callable  # host variables (full copy on every process) -> state (sharded)
    train_step: Callable  # (state, batch) -> (state, metrics) (jitted, state donated)
    schedule: Callable


def split_variables(variables: Mapping[str, Any]):
    variables = dict(variables)
    if "params" not in variables:
        raise ValueError(f"Task.init_variables must return a dict with 'params', got keys {sorted(variables)}")
    return variables.pop("params"), variables


def build(config, task: Task, mesh) -> Trainable:
    """Shapes, shardings and the compiled update step of ``task`` on ``mesh`` (nothing allocated)."""
    abstract_vars = jax.eval_shape(task.init_variables, jax.random.key(0))
    abstract_params, _ = split_variables(abstract_vars)
    optimizer, schedule = (task.make_optimizer or default_optimizer(config))(abstract_params)

    def state_from(variables):
        params, extra = split_variables(variables)
        return {"step": jnp.zeros((), jnp.int32), "params": params, "extra": extra,
                "opt_state": optimizer.init(params), "nonfinite_step": jnp.zeros((), jnp.int32)}

    abstract_state = jax.eval_shape(state_from, abstract_vars)
    rules = tuple(tuple(r) for r in config.get("sharding_rules", ()))
    min_size = config.get("sharding_min_size", 2 ** 18)  # smaller leaves stay replicated
    state_sharding = (placement.fsdp_sharding(abstract_state, mesh, rules, min_size=min_size) if rules
                      else jax.tree.map(lambda _: placement.replicated(mesh), abstract_state))
    var_sharding = {"params": state_sharding["params"], **state_sharding["extra"]}
    base_rng = jax.random.key(config.seed)
    if rules and workdir_lib.is_main():
        split = [s for s in jax.tree.leaves(state_sharding["params"]) if any(a is not None for a in s.spec)]
        print(f"fsdp: {len(split)} of {len(jax.tree.leaves(state_sharding['params']))} parameter arrays split "
              f"over the {mesh.shape['fsdp']} devices of the fsdp axis", flush=True)

    def init_state(rng):
        return state_from(task.init_variables(rng))

    def train_step(state, batch):
        step = state["step"] + 1
        rng = jax.random.fold_in(base_rng, step)

        def loss_of(params):
            return task.loss_fn(params, state["extra"], batch, rng)

        (loss, (metrics, extra)), grads = jax.value_and_grad(loss_of, has_aux=True)(state["params"])
        updates, opt_state = optimizer.update(grads, state["opt_state"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        if task.post_update is not None:
            params = task.post_update(params)
        grad_norm = optax.tree.norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
        # A bad step leaves the state as it was; the host sees nonfinite_step and stops.
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        new_state = {"step": step,
                     "params": keep(params, state["params"]),
                     "extra": keep(dict(extra), state["extra"]),
                     "opt_state": keep(opt_state, state["opt_state"]),
                     "nonfinite_step": jnp.where((state["nonfinite_step"] == 0) & ~finite, step,
                                                 state["nonfinite_step"])}
        metrics = dict(metrics, loss=loss, grad_norm=grad_norm, lr=schedule(state["step"]))
        return new_state, metrics

    place = xla_options.jit(state_from, in_shardings=(var_sharding,), out_shardings=state_sharding)

    def place_variables(variables):  # host arrays (the full tree on every process) -> state
        return place(placement.from_host(variables, var_sharding))

    return Trainable(
        abstract_state=abstract_state, state_sharding=state_sharding,
        init_state=xla_options.jit(init_state, out_shardings=state_sharding),
        place_variables=place_variables,
        train_step=xla_options.jit(train_step, in_shardings=(state_sharding, placement.batch_sharding(mesh)),
                           out_shardings=(state_sharding, placement.replicated(mesh)), donate_argnums=0),
        schedule=schedule)


def sharded_abstract(trainable: Trainable):
    return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                        trainable.abstract_state, trainable.state_sharding)


def variables_of(state) -> dict:
    return {"params": state["params"], **state["extra"]}


# ---------------------------------------------------------------------------------------------
# Evaluation schedule and selection
# ---------------------------------------------------------------------------------------------

def is_final_split(split: str, final_split: str) -> bool:
    """``split`` is the final split or a variant of it (``<final split>_<name>``, e.g. ``test_gray``)."""
    return split == final_split or split.startswith(f"{final_split}_")


def eval_entries(config) -> dict[str, dict]:
    """name -> evaluator config with its ``every``; an entry on the final split (or a variant of
    it) that would run during training is refused."""
    final_split = config.get("final_eval_split", "test")
    entries = {}
    for name, cfg in config.get("evals", {}).items():
        cfg = dict(cfg)
        if "split" not in cfg:
            raise ValueError(f"config.evals.{name} needs a 'split' (e.g. 'val')")
        cfg.setdefault("every", config.get("eval_every", 0))
        if int(cfg["every"] or 0) > 0 and is_final_split(cfg["split"], final_split):
            raise ConfigError(f"config.evals.{name}.split={cfg['split']!r} is the final split {final_split!r} "
                              f"(or a variant of it) and config.evals.{name}.every={cfg['every']} would run it "
                              f"during training: set config.evals.{name}.every=0 or split='val'")
        entries[name] = cfg
    return entries


def due_evals(entries: dict[str, dict], step: int, total_steps: int) -> dict[str, dict[str, dict]]:
    """split -> {name: config} of the entries that run at ``step`` during training."""
    due: dict[str, dict[str, dict]] = {}
    for name, cfg in entries.items():
        every = int(cfg["every"] or 0)
        if every > 0 and (step % every == 0 or step == total_steps):
            due.setdefault(cfg["split"], {})[name] = cfg
    return due


def final_passes(entries: dict[str, dict], final_split: str) -> dict[str, dict[str, dict]]:
    """split -> {name: config} of the final evaluation: every entry on ``final_split``, except
    final-only entries (``every=0``) on a variant of it (``<final split>_<name>``), on their own, and
    entries on a variant of another split (``val_<name>``, e.g. a shifted validation set), on the
    same variant of the final split (``test_<name>``): a shifted val set is never the plain test set."""
    passes: dict[str, dict[str, dict]] = {final_split: {}}
    for name, cfg in entries.items():
        split, every = cfg["split"], int(cfg["every"] or 0)
        if split.startswith(f"{final_split}_"):
            target = final_split if every else split
        else:
            target = f"{final_split}_{split.split('_', 1)[1]}" if "_" in split else final_split
        passes.setdefault(target, {})[name] = cfg
    return passes


def check_selection(config, entries) -> tuple[str | None, str]:
    """(best_metric, final split); refuses a selection metric measured on the final split."""
    final_split = config.get("final_eval_split", "test")
    best_metric = config.get("best_metric", None) or None
    which = config.get("final_eval_checkpoint", "best")
    if which not in ("best", "last"):
        raise ValueError(f"config.final_eval_checkpoint must be 'best' or 'last', got {which!r}")
    if best_metric:
        name = best_metric.split("/", 1)[0]
        if name not in entries:
            raise ValueError(f"config.best_metric={best_metric!r} names no entry of config.evals "
                             f"({sorted(entries)})")
        if is_final_split(entries[name]["split"], final_split):
            raise ConfigError(f"config.best_metric={best_metric!r} is measured on config.evals.{name}.split="
                              f"{entries[name]['split']!r}, the final split {final_split!r} or a variant of "
                              f"it: select on 'val' instead")
        if not entries[name]["every"]:
            raise ValueError(f"config.best_metric={best_metric!r}: config.evals.{name}.every is 0, so it "
                             f"never runs during training")
    elif which == "best":
        raise ValueError("config.final_eval_checkpoint='best' needs config.best_metric")
    return best_metric, final_split


def check_evals(config) -> None:
    """The checks :func:`run` makes on ``config.evals`` and the selection, for a trainer to call
    before it prepares data or trains a tokenizer."""
    check_selection(config, eval_entries(config))


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------

def _check_finite(state, step: int, ckpt: checkpoint.RunCheckpoints) -> None:
    bad = int(jax.device_get(state["nonfinite_step"]))
    if bad:
        ckpt.wait()
        good = [s for s in ckpt.all_steps() if s < bad]
        where = (f"the last good checkpoint is step {max(good)} in {ckpt.directory}" if good
                 else "no checkpoint was saved before it")
        raise NonFiniteLossError(f"the loss or the gradients became NaN/inf at step {bad} (noticed at step "
                                 f"{step}); stopped without saving that state; {where}. Lower config.lr or "
                                 f"check the data of that step.")


def _stop_preempted(step: int, ckpt: checkpoint.RunCheckpoints, progress, writer) -> None:
    """After the checkpoint of ``step``: wait until every process has written it, then stop."""
    progress.close()
    ckpt.close()
    if writer:
        writer.close()
    workdir_lib.barrier("fungizsl_preempted")  # no process leaves while another still writes
    raise Preempted(step, ckpt.directory)


def _scalar_metrics(metrics) -> dict[str, float]:
    return {k: float(v) for k, v in jax.device_get(metrics).items()}


def run(config, workdir, task: Task, mesh=None) -> dict:
    """Trains ``task`` as ``config`` says, resuming from ``workdir`` if it holds a run; evaluates;
    writes ``summary.json``; returns the summary dict."""
    workdir = workdir_lib.as_path(workdir)
    is_main = workdir_lib.is_main()
    mesh = mesh or make_mesh(config)
    entries = eval_entries(config)
    best_metric, final_split = check_selection(config, entries)
    if is_main:
        workdir.mkdir(parents=True, exist_ok=True)
        workdir_lib.write_text(workdir / runs.CONFIG_FILE, config.to_json_best_effort(indent=2))

    # State.
    trainable = build(config, task, mesh)
    ckpt = checkpoint.RunCheckpoints(workdir, keep=config.keep_checkpoints, best_metric=best_metric,
                                     best_mode=config.get("best_mode", "max"))
    if ckpt.latest_step() is not None:
        state = ckpt.restore(sharded_abstract(trainable), task.train_iterator)
    elif task.load_variables is not None:
        loaded = task.load_variables()
        want = jax.tree.structure(jax.eval_shape(task.init_variables, jax.random.key(0)))
        if jax.tree.structure(loaded) != want:
            raise ValueError(f"Task.load_variables returned a tree unlike the model's: {jax.tree.structure(loaded)} "
                             f"vs {want}")
        state = trainable.place_variables(loaded)
        del loaded
    else:
        state = trainable.init_state(jax.random.key(config.seed))
    first_step = int(state["step"])
    if first_step and is_main:
        print(f"resumed from step {first_step} of {config.total_steps} in {ckpt.directory}", flush=True)

    writer = (metrics_io.TensorBoard(workdir / "tb", upload_every=config.get("tensorboard_upload_secs", 60))
              if is_main else None)
    history_path = workdir / VAL_HISTORY_FILE
    history = metrics_io.read_json(history_path) if history_path.exists() else []
    history = [h for h in history if h["step"] <= first_step]
    audit = [] if config.get("data", {}).get("audit_indices", False) else None

    # Loop. SIGTERM (preemption, requeue) saves the step reached and stops: see train/preemption.py.
    progress = timing.Progress(config.total_steps, first_step, is_main)
    timer = timing.StepTimer()
    clock = timing.PhaseClock()
    timer.start()
    with preemption.Watch() as watch:
        for step in range(first_step + 1, config.total_steps + 1):
            with clock.phase("input pipeline"):
                local_batch = next(task.train_iterator)
            if audit is not None:  # which records this process trained on, step by step
                audit.append(np.asarray(local_batch["index"]))
            with clock.phase("host-to-device"):
                global_batch = jax.block_until_ready(placement.to_global_batch(local_batch, mesh))
            state, metrics = trainable.train_step(state, global_batch)
            if step == first_step + 1:
                with clock.phase("first step (compile)"):
                    jax.block_until_ready(state)
                timer.start()  # img/sec/core leaves compilation out
            else:
                timer.steps += 1
            progress.update()
            last = step == config.total_steps
            if step % config.log_every == 0 or last:
                seconds, steps = timer.take(state)
                _check_finite(state, step, ckpt)
                metrics = _scalar_metrics(metrics)
                metrics["img/sec/core"] = config.batch_size * steps / max(seconds, 1e-9) / jax.device_count()
                progress.log(step, metrics)
                if writer:
                    writer.scalars(metrics, step, prefix="train")
            due = due_evals(entries, step, config.total_steps)
            results: dict[str, Any] = {}
            if due:
                timer.pause(state)
                _check_finite(state, step, ckpt)
                eval_start = time.perf_counter()
                for split, evals in due.items():
                    split_results = task.evaluate(variables_of(state), split, evals, step, None)
                    results.update(split_results)
                    if writer:
                        writer.scalars(split_results, step, prefix=split)
                    progress.write(f"step {step} [{split}] " + (task.describe(split_results) if task.describe else
                                                                 _describe(split_results)))
                clock.seconds["evaluation"] += time.perf_counter() - eval_start
                timer.start()
            selected = best_metric in results if best_metric else False
            if selected:
                history.append({"step": step, best_metric: float(results[best_metric])})
                if is_main:
                    metrics_io.write_json(history_path, history, digits=0)
            preempted = watch.reached(step)  # every process, every step: they agree on the step
            if step % config.checkpoint_every == 0 or last or selected or preempted:
                timer.pause(state)
                _check_finite(state, step, ckpt)
                with clock.phase("checkpointing"):
                    ckpt.save(step, state, task.train_iterator,
                              metrics={best_metric: float(results[best_metric])} if selected else None, force=True)
                timer.start()
            if preempted:
                _stop_preempted(step, ckpt, progress, writer)
    progress.close()
    _check_finite(state, int(state["step"]), ckpt)
    with clock.phase("checkpointing"):
        ckpt.wait()
    time_split = clock.split()
    progress.write(timing.format_split(time_split))
    if audit:
        data = np.stack(audit)

        buffer = io.BytesIO()
        np.save(buffer, data)
        workdir_lib.write_bytes(workdir / "audit" / f"process_{jax.process_index()}.npy", buffer.getvalue())

    # Final evaluation, once, on the checkpoint the config names.
    last_step = int(state["step"])
    which = config.get("final_eval_checkpoint", "best")
    selection = {"split": final_split, "checkpoint": which, "last_step": last_step,
                 "selection_metric": best_metric, "selection_split": (entries[best_metric.split("/")[0]]["split"]
                                                                      if best_metric else None)}
    eval_step = last_step
    if which == "best":
        kept = set(ckpt.all_steps())
        candidates = [h for h in history if h["step"] in kept]
        if not candidates:
            raise RuntimeError(f"no kept checkpoint has {best_metric}; val history {history}, kept {sorted(kept)}")
        pick = (max if config.get("best_mode", "max") == "max" else min)(candidates, key=lambda h: h[best_metric])
        eval_step = pick["step"]
        selection["selection_value"] = pick[best_metric]
        if eval_step != last_step:
            state = ckpt.restore(sharded_abstract(trainable), None, step=eval_step)
    elif best_metric and history:
        selection["selection_value"] = history[-1][best_metric] if history[-1]["step"] == last_step else None
    selection["step"] = eval_step
    final = {}
    for split, group in final_passes(entries, final_split).items():
        final.update(task.evaluate(variables_of(state), split, group, eval_step,
                                   workdir if split == final_split else None))
    progress.write(f"final [{final_split}, {which} checkpoint, step {eval_step}] "
                   + (task.describe(final) if task.describe else _describe(final)))
    summary = dict(task.summarise(final) if task.summarise else metrics_io.scalars(final))
    summary.update(step=eval_step, selection=selection, time_split_s=time_split)

    # Export and records: every process joins the gather (sharded params span hosts); one writes.
    export = (multihost_utils.process_allgather(variables_of(state), tiled=True)
              if task.export is not None and config.get("export", True) else None)
    if is_main:
        if writer:
            writer.scalars(final, eval_step, prefix=f"final_{final_split}")
            writer.close()
        metrics_io.write_json(workdir / "eval_metrics.json",
                              {"final": final, "selection": selection, "val_history": history})
        if export is not None:
            task.export(export, workdir)
        metrics_io.write_json(workdir / runs.SUMMARY_FILE, summary)
    if config.get("audit_writes", False):
        workdir_lib.write_audit(workdir)
    workdir_lib.barrier("fungizsl_run_done")
    ckpt.close()
    return summary


def _describe(results: dict) -> str:
    shown = [(k, v) for k, v in metrics_io.scalars(results).items()][:4]
    return ", ".join(f"{k} {v:.4f}" for k, v in shown)
