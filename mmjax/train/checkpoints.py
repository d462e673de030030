"""Checkpoints of the training state and the data iterator, through Orbax.

A checkpoint at step ``k`` holds the `TrainState` (parameters, optimizer state, step, PRNG key)
and the Grain iterator state (JSON), so a run restarted on the same workdir continues the exact
trajectory. Orbax writes each checkpoint to a temporary directory and renames it when complete,
so an interrupted save never replaces a good checkpoint.
"""

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every `every` steps (and when forced), keeps the newest `keep`, restores the latest.

  Args:
    directory: where checkpoints live (one sub-directory per step).
    every: save interval in steps.
    keep: how many checkpoints to keep (None: all).
    asynchronous: write in a background thread while training continues.
  """

  def __init__(self, directory: str, every: int, keep: int | None, asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            # Not the default policy: that one also saves the first step of every (re)start.
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(every),
            max_to_keep=keep,
            enable_async_checkpointing=asynchronous,
            cleanup_tmp_directories=True,
        ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Starts saving `state` and `data_state` at `step` if due (or `force`); returns whether it did.

    The data state is a JSON-serialisable snapshot taken now, so later iterator steps cannot leak
    into an asynchronous save.
    """
    return self._manager.save(
        step,
        args=ocp.args.Composite(state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)),
        force=force,
    )

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """The state (laid out as `abstract_state`'s shardings say) and data state saved at `step`."""
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()
        ),
    )
    return restored["state"], restored["data"]

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are committed."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """Shape/dtype structs carrying the shardings to restore onto (any mesh, any topology)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)
