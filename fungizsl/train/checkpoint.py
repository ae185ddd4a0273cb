"""Orbax checkpoints of a training run: train state and Grain iterator state saved together.

Each step folder under `<workdir>/checkpoints/` holds two items: `state` (step, params, other
variables, optimizer state; sharded arrays are written by every host in parallel) and `data` (the
Grain iterator position, one file per process), so a resumed run sees exactly the batches it
would have seen. Saves are asynchronous; `close()` waits for the last one. The newest `keep`
steps are kept, and also the best one by `best_metric` among the steps saved with metrics (the
trainer core saves every step it evaluates on val, with that metric).

Paths are `etils.epath` paths: the workdir may be `gs://...`.
"""

import logging

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from fungizsl import workdir as workdir_lib

STATE, DATA = "state", "data"


class RunCheckpoints:
    def __init__(self, workdir, keep: int = 3, best_metric: str | None = None, best_mode: str = "max"):
        if keep < 1:
            raise ValueError(f"config.keep_checkpoints must be at least 1, got {keep}")
        if best_mode not in ("max", "min"):
            raise ValueError(f"config.best_mode must be 'max' or 'min', got {best_mode!r}")
        policy = [policies.LatestN(n=keep)]
        if best_metric:
            policy.append(policies.BestN(get_metric_fn=lambda metrics: metrics[best_metric],
                                         reverse=best_mode == "min", n=1,
                                         keep_checkpoints_without_metrics=False))
        self.directory = workdir_lib.as_path(workdir) / "checkpoints"
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=(STATE, DATA),
            options=ocp.CheckpointManagerOptions(preservation_policy=policies.AnyPreservationPolicy(policy),
                                                 create=True))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, iterator: grain.DatasetIterator, metrics: dict | None = None,
             force: bool = False) -> bool:
        return self.manager.save(step, args=ocp.args.Composite(
            **{STATE: ocp.args.StandardSave(state), DATA: grain.checkpoint.CheckpointSave(iterator)}),
            metrics=metrics, force=force)

    def restore(self, abstract_state, iterator: grain.DatasetIterator | None, step: int | None = None):
        """Restores `state` into the shapes and shardings of `abstract_state` and, given an
        `iterator`, moves it to the saved position. Returns the restored state."""
        step = self.latest_step() if step is None else step
        items = {STATE: ocp.args.StandardRestore(abstract_state)}
        if iterator is not None:
            items[DATA] = grain.checkpoint.CheckpointRestore(iterator)
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        logging.info("restored %s step %d", self.directory, step)
        return restored[STATE]

    def wait(self):
        self.manager.wait_until_finished()

    def close(self):
        self.manager.wait_until_finished()
        self.manager.close()


def load_params(path):
    """Params of an earlier fungizsl run, to initialise a new one: `path` is a workdir (its newest
    step is used) or one step folder `<workdir>/checkpoints/<step>`. Returns numpy arrays."""
    path = workdir_lib.as_path(path)
    if (path / "checkpoints").is_dir():
        path = path / "checkpoints"
    if (path / STATE).is_dir():
        directory, step = path.parent, int(path.name)
    elif path.is_dir():
        directory, step = path, ocp.CheckpointManager(path, item_names=(STATE, DATA)).latest_step()
        if step is None:
            raise FileNotFoundError(f"{path} holds no fungizsl checkpoint steps")
    else:
        raise FileNotFoundError(f"config.model.init={str(path)!r} is neither a Hugging Face folder nor a "
                                f"fungizsl workdir/checkpoint")
    manager = ocp.CheckpointManager(epath.Path(directory), item_names=(STATE, DATA),
                                    item_handlers={STATE: ocp.StandardCheckpointHandler()})
    # Restore onto this process's first device, whatever mesh and host count saved it.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                          manager.item_metadata(step)[STATE])
    state = manager.restore(step, args=ocp.args.Composite(**{STATE: ocp.args.StandardRestore(target)}))[STATE]
    return jax.device_get(state["params"])
