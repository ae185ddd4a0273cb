"""Orbax checkpoints of a training run: train state and Grain iterator state saved together.

Each step folder under `<workdir>/checkpoints/` holds two items: `state` (step, params,
optimizer state; sharded arrays are written by every host in parallel) and `data` (the Grain
iterator position, one file per process), so a resumed run sees exactly the batches it would
have seen. Saves are asynchronous; `close()` waits for the last one. The newest `keep` steps are
kept, and also the best one by `best_metric` among the steps saved with metrics.
"""

import logging
import os

import grain
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

STATE, DATA = "state", "data"


class RunCheckpoints:
    def __init__(self, workdir: str, keep: int = 3, best_metric: str | None = None, best_mode: str = "max"):
        if keep < 1:
            raise ValueError(f"config.keep_checkpoints must be at least 1, got {keep}")
        policy = [policies.LatestN(n=keep)]
        if best_metric:
            policy.append(policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                                         reverse=best_mode == "min", n=1,
                                         keep_checkpoints_without_metrics=False))
        self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=(STATE, DATA),
            options=ocp.CheckpointManagerOptions(preservation_policy=policies.AnyPreservationPolicy(policy),
                                                 create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state, iterator: grain.DatasetIterator, metrics: dict | None = None,
             force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), DATA: grain.checkpoint.CheckpointSave(iterator)}),
            metrics=metrics, force=force)

    def restore(self, abstract_state, iterator: grain.DatasetIterator, step: int | None = None):
        """Restores `state` into the shapes and shardings of `abstract_state` and moves
        `iterator` to the saved position. Returns the restored state."""
        step = self.latest_step() if step is None else step
        restored = self.manager.restore(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardRestore(abstract_state),
               DATA: grain.checkpoint.CheckpointRestore(iterator)}))
        logging.info("resumed from %s step %d", self.directory, step)
        return restored[STATE]

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(path: str):
    """Params of an earlier fungizsl run, to initialise a new one: `path` is a workdir (its newest
    step is used) or one step folder `<workdir>/checkpoints/<step>`. Returns numpy arrays."""
    return load_variables(path)["params"]


def load_variables(path: str) -> dict:
    """Like `load_params`, with the model's other collections too (a ResNet's `batch_stats`):
    {"params": ..., "batch_stats": ...}."""
    path = os.path.abspath(path)
    if os.path.isdir(os.path.join(path, "checkpoints")):
        path = os.path.join(path, "checkpoints")
    if os.path.isdir(os.path.join(path, STATE)):
        directory, step = os.path.dirname(path), int(os.path.basename(path))
    elif os.path.isdir(path):
        directory, step = path, ocp.CheckpointManager(path, item_names=(STATE, DATA)).latest_step()
        if step is None:
            raise FileNotFoundError(f"{path} holds no fungizsl checkpoint steps")
    else:
        raise FileNotFoundError(f"config.model.init={path!r} is neither a Hugging Face folder nor a "
                                f"fungizsl workdir/checkpoint")
    manager = ocp.CheckpointManager(directory, item_names=(STATE, DATA),
                                    item_handlers={STATE: ocp.StandardCheckpointHandler()})
    # Restore onto this process's first device, whatever mesh and host count saved it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step)[STATE])
    state = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)}))[STATE]
    return {k: v for k, v in jax.device_get(state).items() if k not in ("step", "opt_state")}
