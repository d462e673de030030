"""Checkpoints of the training state and the data iterator, through Orbax, verified on restore.

A checkpoint at step ``k`` holds the `TrainState` (parameters, optimizer state, step, PRNG key),
the Grain iterator state (JSON), and a fingerprint of every array of the state, all committed
together: Orbax writes a checkpoint into a temporary directory and renames it when complete, and
deletes old checkpoints only after a new one is committed. On restore the fingerprints are
recomputed from what was read; a checkpoint that cannot be read or does not match is reported,
moved to ``<checkpoints>_corrupt/`` and the previous one is tried. Nothing is unpickled: arrays
are read by TensorStore, everything else is JSON.
"""

import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from absl import logging

from mmjax.parallel import sharding as sharding_lib

FINGERPRINT_FORMAT = 1


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir can be used, or one does not fit the run's state."""


def _leaf_fingerprint(x: jax.Array) -> jax.Array:
  """A position-weighted 32-bit checksum of the exact bits of `x`."""
  # 8-byte values (with jax_enable_x64) bitcast to pairs of uint32 words.
  bits = {8: jnp.uint32, 4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[x.dtype.itemsize]
  words = (x if x.dtype == jnp.bool_ else jax.lax.bitcast_convert_type(x, bits)).astype(jnp.uint32).ravel()
  # Odd multipliers of a Weyl sequence make the checksum sensitive to where a bit sits, so
  # swapped or shifted data changes it, not just altered values. uint32 arithmetic wraps.
  weights = jnp.arange(words.size, dtype=jnp.uint32) * jnp.uint32(2654435761) + jnp.uint32(1)
  return jnp.sum(words * weights, dtype=jnp.uint32)


@jax.jit
def _fingerprints(tree: Any) -> Any:
  return jax.tree.map(_leaf_fingerprint, tree)


def fingerprint(tree: Any) -> dict[str, int]:
  """``{leaf path: checksum}`` of a tree of (possibly sharded) arrays, the same on every host."""
  values = jax.device_get(_fingerprints(tree))
  return {
      sharding_lib.path_string(path): int(value) for path, value in jax.tree_util.tree_leaves_with_path(values)
  }


class Checkpointer:
  """Saves every `every` steps (and when forced), keeps the newest `keep`, restores the latest
  checkpoint that verifies.

  Args:
    directory: where checkpoints live (one sub-directory per step).
    every: save interval in steps.
    keep: how many checkpoints to keep (None: all).
    asynchronous: write in a background thread while training continues.
  """

  def __init__(self, directory: str, every: int, keep: int | None, asynchronous: bool = True):
    self.directory = os.path.abspath(directory)
    self._options = dict(every=every, keep=keep, asynchronous=asynchronous)
    self._manager = self._open()

  def _open(self) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        self.directory,
        # Named handlers, so a fresh manager can read a checkpoint's metadata before restoring.
        item_handlers={
            "state": ocp.StandardCheckpointHandler(),
            "data": ocp.JsonCheckpointHandler(),
            "integrity": ocp.JsonCheckpointHandler(),
        },
        options=ocp.CheckpointManagerOptions(
            # Not the default policy: that one also saves the first step of every (re)start.
            save_decision_policy=ocp.checkpoint_managers.FixedIntervalPolicy(self._options["every"]),
            max_to_keep=self._options["keep"],
            enable_async_checkpointing=self._options["asynchronous"],
            # Remove what a save interrupted by a crash left behind.
            cleanup_tmp_directories=True,
        ),
    )

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, data_state: dict, force: bool = False) -> bool:
    """Starts saving `state` and `data_state` at `step` if due (or `force`); returns whether it did.

    The data state is a JSON snapshot taken now, so later iterator steps cannot leak into an
    asynchronous save.
    """
    if not (force or self._manager.should_save(step)):
      return False
    integrity = {"format": FINGERPRINT_FORMAT, "fingerprint": fingerprint(state)}
    return self._manager.save(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            integrity=ocp.args.JsonSave(integrity),
        ),
        force=True,
    )

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, dict]:
    """The state (laid out as `abstract_state`'s shardings say) and data state saved at `step`.

    Raises:
      CheckpointError: the checkpoint's arrays do not have the shapes of `abstract_state` (the
        config changed): not a corruption, so nothing is moved.
      Exception: anything else that goes wrong reading or verifying it.
    """
    self._check_compatible(step, abstract_state)
    restored = self._manager.restore(
        step,
        args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            data=ocp.args.JsonRestore(),
            integrity=ocp.args.JsonRestore(),
        ),
    )
    expected = restored["integrity"]["fingerprint"]
    actual = fingerprint(restored["state"])
    wrong = sorted(path for path in set(expected) | set(actual) if expected.get(path) != actual.get(path))
    if wrong:
      raise ValueError(f"{len(wrong)} arrays do not match their saved fingerprints, e.g. {wrong[:3]}")
    return restored["state"], restored["data"]

  def _check_compatible(self, step: int, abstract_state: Any) -> None:
    saved = self._manager.item_metadata(step)["state"]
    leaves = jax.tree_util.tree_leaves_with_path(saved)
    if not leaves or any(getattr(leaf, "shape", None) is None for _, leaf in leaves):
      raise ValueError("the array metadata cannot be read")  # damage, not a different model
    saved_shapes = {sharding_lib.path_string(path): tuple(leaf.shape) for path, leaf in leaves}
    wanted = {
        sharding_lib.path_string(path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_leaves_with_path(abstract_state)
    }
    if saved_shapes != wanted:
      differ = sorted(p for p in set(saved_shapes) | set(wanted) if saved_shapes.get(p) != wanted.get(p))
      raise CheckpointError(
          f"checkpoint {step} in {self.directory} holds a different model or optimizer than this "
          f"config builds ({len(differ)} arrays differ, e.g. "
          + ", ".join(f"{p}: saved {saved_shapes.get(p)}, now {wanted.get(p)}" for p in differ[:3])
          + "). Use the config the run started with, or another workdir."
      )

  def restore_latest(
      self, abstract_state: Any, report: Callable[[str], None] = logging.warning
  ) -> tuple[int, Any, dict] | None:
    """``(step, state, data_state)`` of the newest checkpoint that reads and verifies, or None.

    Newer checkpoints that fail are reported through `report` and moved aside to
    ``<directory>_corrupt/`` (kept for inspection, out of the way of new saves).

    Raises:
      CheckpointError: checkpoints exist but none is usable, or they do not fit the state.
    """
    steps = self.all_steps()
    for step in reversed(steps):
      try:
        state, data_state = self.restore(step, abstract_state)
      except CheckpointError:
        raise
      except Exception as error:  # noqa: BLE001 -- any failure to read or verify means unusable
        destination = self._quarantine(step)
        report(f"checkpoint {step} is unusable ({type(error).__name__}: {error}); moved to {destination}")
        continue
      return step, state, data_state
    if steps:
      raise CheckpointError(
          f"none of the checkpoints {steps} in {self.directory} could be restored; they were moved to "
          f"{self.directory}_corrupt/. Remove them to start the run afresh."
      )
    return None

  def _quarantine(self, step: int) -> str:
    self._manager.close()
    source = os.path.join(self.directory, str(step))
    destination = os.path.join(f"{self.directory}_corrupt", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if jax.process_index() == 0:
      os.makedirs(os.path.dirname(destination), exist_ok=True)
      shutil.move(source, destination)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      multihost_utils.sync_global_devices(f"mmjax_quarantine_{step}")
    self._manager = self._open()
    return destination

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def abstract_with_shardings(abstract_state: Any, shardings: Any) -> Any:
  """Shape/dtype structs carrying the shardings to restore onto (any mesh, any topology)."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract_state, shardings)

