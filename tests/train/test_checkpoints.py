"""Broken checkpoints are detected, reported and skipped; incompatible ones are refused."""

import glob
import os
import shutil
from typing import NamedTuple

import jax
import numpy as np
import pytest

from mmjax import experiment
from mmjax.train import checkpoints


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
  """A finished 8-step run (checkpoints 4 and 8) and the config to extend it to 12 steps."""
  from tests.conftest import small_config

  config = small_config(data_dir, num_steps=8, checkpoint_every=4, keep_checkpoints=3, eval_every=None, log_every=4)
  base = str(tmp_path_factory.mktemp("base"))
  experiment.train(config, base)
  longer = small_config(data_dir, num_steps=12, checkpoint_every=4, keep_checkpoints=3, eval_every=None, log_every=4)
  return base, longer


def _array_files(step_dir):
  """The files holding array bytes (TensorStore's OCDBT data files, wherever Orbax put them)."""
  return glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)


def _truncate(path):
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _flip_bytes(path):
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    for offset in range(len(data) // 3, len(data) // 3 + 16):
      data[offset] ^= 0xFF
    f.seek(0)
    f.write(data)


CORRUPTIONS = {
    "truncated array data": lambda step_dir: [_truncate(f) for f in _array_files(step_dir)],
    "flipped bits in array data": lambda step_dir: [_flip_bytes(f) for f in _array_files(step_dir)],
    "garbled data-iterator state": lambda step_dir: open(os.path.join(step_dir, "data", "metadata"), "w").write("{not json"),
    "missing array metadata": lambda step_dir: os.remove(os.path.join(step_dir, "state", "_METADATA")),
    # Readable, well-formed and of the right shapes: only the fingerprints can tell.
    "another step's arrays": lambda step_dir: _copy_state(os.path.join(os.path.dirname(step_dir), "4"), step_dir),
}

# The report each damage must give: the check that catches it, not just "unusable".
REASONS = {"another step's arrays": "do not match their saved fingerprints"}


def _copy_state(source_step_dir, step_dir):
  shutil.rmtree(os.path.join(step_dir, "state"))
  shutil.copytree(os.path.join(source_step_dir, "state"), os.path.join(step_dir, "state"))


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_broken_latest_checkpoint_falls_back_to_the_previous_one(runs, tmp_path, corruption, capsys):
  base, longer = runs
  workdir = str(tmp_path / "run")
  shutil.copytree(base, workdir)
  CORRUPTIONS[corruption](os.path.join(workdir, "checkpoints", "8"))

  final = experiment.train(longer, workdir)

  err = capsys.readouterr().err
  assert "checkpoint 8 is unusable" in err
  assert REASONS.get(corruption, "") in err
  assert glob.glob(os.path.join(workdir, "checkpoints_corrupt", "8-*"))
  # Resumed from 4: the same as extending an intact run that is rolled back to 4.
  reference = str(tmp_path / "reference")
  shutil.copytree(base, reference)
  shutil.rmtree(os.path.join(reference, "checkpoints", "8"))
  assert experiment.train(longer, reference) == final
  for a, b in zip(jax.tree.leaves(jax.device_get(experiment.restore(workdir)[2])),
                  jax.tree.leaves(jax.device_get(experiment.restore(reference)[2]))):
    np.testing.assert_array_equal(a, b)


def test_when_no_checkpoint_is_usable_the_run_stops_and_says_so(runs, tmp_path):
  base, longer = runs
  workdir = str(tmp_path / "run")
  shutil.copytree(base, workdir)
  for step in ("4", "8"):
    CORRUPTIONS["garbled data-iterator state"](os.path.join(workdir, "checkpoints", step))
  with pytest.raises(checkpoints.CheckpointError, match=r"none of the checkpoints \[4, 8\] .* could be restored"):
    experiment.train(longer, workdir)


def test_a_checkpoint_of_another_model_is_refused_not_moved(runs, tmp_path):
  base, longer = runs
  workdir = str(tmp_path / "run")
  shutil.copytree(base, workdir)
  wider = longer.copy_and_resolve_references()
  wider.model.embed_dim = 24
  with pytest.raises(checkpoints.CheckpointError, match=r"holds a different model or optimizer .* saved \(16,\), now \(24,\)"):
    experiment.train(wider, workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]


def test_a_64_bit_array_from_another_step_is_caught_by_its_fingerprint(tmp_path):
  """Under jax_enable_x64 the two saved states differ only in the low 32 bits of a float64 and an
  int64: a fingerprint that dropped half of each 8-byte value would pass the wrong one."""
  reports = []
  with jax.enable_x64(True):
    directory = str(tmp_path / "checkpoints")
    saver = checkpoints.Checkpointer(directory, every=1, keep=None, asynchronous=False)
    states = {
        step: {
            "w": jax.numpy.full((3,), 1.0 + step * 2.0**-40, jax.numpy.float64),
            "n": jax.numpy.full((2,), 2**40 + step, jax.numpy.int64),
        }
        for step in (1, 2)
    }
    for step, state in states.items():
      saver.save(step, state, {"step": step})
    saver.close()
    _copy_state(os.path.join(directory, "1"), os.path.join(directory, "2"))

    restorer = checkpoints.Checkpointer(directory, every=1, keep=None, asynchronous=False)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), states[2])
    step, state, data_state = restorer.restore_latest(abstract, report=reports.append)
    restorer.close()

  assert (step, data_state) == (1, {"step": 1})
  assert state["w"].dtype == np.float64 and state["n"].dtype == np.int64
  np.testing.assert_array_equal(state["w"], states[1]["w"])
  np.testing.assert_array_equal(state["n"], states[1]["n"])
  assert len(reports) == 1 and "checkpoint 2 is unusable" in reports[0]
  assert "2 arrays do not match their saved fingerprints" in reports[0]
  assert os.listdir(os.path.join(directory)) == ["1"]
  assert len(glob.glob(os.path.join(f"{directory}_corrupt", "2-*"))) == 1


# Unit tests of `Checkpointer` on small trees: fast, and they reach every branch without training.


def _numpy_fingerprint(array) -> int:
  """The checksum of `_leaf_fingerprint`, written independently in NumPy with Python integers."""
  array = np.asarray(array)
  if array.dtype == np.bool_:
    words = array.astype(np.uint64).ravel()
  else:
    words = array.view({8: np.uint32, 4: np.uint32, 2: np.uint16, 1: np.uint8}[array.dtype.itemsize]).ravel()
  return sum(int(word) * (index * 2654435761 + 1) for index, word in enumerate(words)) % 2**32


def test_fingerprints_are_the_saved_format():
  """Checkpoints store these numbers (format 1): they must not change between versions, or every
  existing checkpoint would fail to verify."""
  tree = {
      "params": {
          "kernel": np.linspace(-2, 3, 12, dtype=np.float32).reshape(3, 4),
          "half": np.arange(5, dtype=np.float16),
      },
      "flags": np.array([True, False, True]),
      "key": np.array([7, 2**31 + 5], np.uint32),
      "step": np.int32(-3),
      "bytes": np.array([255, 1, 128], np.uint8),
  }
  assert checkpoints.FINGERPRINT_FORMAT == 1
  assert checkpoints.fingerprint(tree) == {
      "params/kernel": _numpy_fingerprint(tree["params"]["kernel"]),
      "params/half": _numpy_fingerprint(tree["params"]["half"]),
      "flags": _numpy_fingerprint(tree["flags"]),
      "key": _numpy_fingerprint(tree["key"]),
      "step": _numpy_fingerprint(tree["step"]),
      "bytes": _numpy_fingerprint(tree["bytes"]),
  }
  with jax.enable_x64(True):
    wide = np.array([1.0 + 2.0**-40, -3.5], np.float64)
    assert checkpoints.fingerprint({"w": jax.numpy.asarray(wide)}) == {"w": _numpy_fingerprint(wide)}


def test_fingerprints_change_when_values_swap_places():
  values = np.arange(6, dtype=np.float32)
  swapped = values[[1, 0, 2, 3, 4, 5]]
  assert checkpoints.fingerprint({"x": values}) != checkpoints.fingerprint({"x": swapped})


def _state(step: int) -> dict:
  return {
      "w": np.full((2, 3), float(step), np.float32),
      "b": np.arange(3, dtype=np.float32) * step,
      "scale": np.float32(step / 2),
      "count": np.array([step], np.int32),
  }


ABSTRACT = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


def test_saves_every_n_steps_or_when_forced_and_keeps_the_newest(tmp_path):
  saver = checkpoints.Checkpointer(str(tmp_path / "ckpt"), every=2, keep=2, asynchronous=False)
  assert saver.directory == os.path.abspath(tmp_path / "ckpt")
  assert saver.latest_step() is None and saver.all_steps() == []
  saved = {step: saver.save(step, _state(step), {"position": step}) for step in range(1, 7)}
  assert saved == {1: False, 2: True, 3: False, 4: True, 5: False, 6: True}
  assert saver.save(7, _state(7), {"position": 7}, force=True)
  saver.close()
  reader = checkpoints.Checkpointer(str(tmp_path / "ckpt"), every=2, keep=2, asynchronous=False)
  assert reader.all_steps() == [6, 7] and reader.latest_step() == 7
  state, data_state = reader.restore(6, ABSTRACT)
  reader.close()
  assert data_state == {"position": 6}
  np.testing.assert_array_equal(state["w"], _state(6)["w"])
  np.testing.assert_array_equal(state["count"], _state(6)["count"])


def test_asynchronous_saves_are_complete_after_close(tmp_path):
  saver = checkpoints.Checkpointer(str(tmp_path), every=1, keep=None)
  for step in (1, 2, 3):
    saver.save(step, _state(step), {"position": step})
  saver.close()
  reader = checkpoints.Checkpointer(str(tmp_path), every=1, keep=None, asynchronous=False)
  assert reader.all_steps() == [1, 2, 3]
  step, state, data_state = reader.restore_latest(ABSTRACT, report=pytest.fail)
  reader.close()
  assert (step, data_state) == (3, {"position": 3})
  np.testing.assert_array_equal(state["w"], _state(3)["w"])


def _saved(directory, steps) -> None:
  saver = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  for step in steps:
    saver.save(step, _state(step), {"position": step})
  saver.close()


def test_wrong_arrays_are_reported_quarantined_and_the_previous_checkpoint_restored(tmp_path):
  directory = tmp_path / "ckpt"
  _saved(directory, (1, 2, 3))
  _copy_state(str(directory / "1"), str(directory / "3"))
  reports = []
  reader = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  step, state, data_state = reader.restore_latest(ABSTRACT, report=reports.append)
  assert reader.all_steps() == [1, 2]  # the manager reopened after the move sees the change
  reader.close()
  assert (step, data_state) == (2, {"position": 2})
  np.testing.assert_array_equal(state["w"], _state(2)["w"])
  [quarantined] = os.listdir(f"{directory}_corrupt")
  assert quarantined.startswith("3-") and len(quarantined) == len("3-20260101-120000")
  assert reports == [
      f"checkpoint 3 is unusable (ValueError: 4 arrays do not match their saved fingerprints, e.g. "
      f"['b', 'count', 'scale']); moved to {directory}_corrupt/{quarantined}"
  ]
  assert sorted(os.listdir(directory)) == ["1", "2"]


def test_unreadable_array_metadata_is_damage_and_none_usable_is_an_error(tmp_path):
  directory = tmp_path / "ckpt"
  _saved(directory, (1, 2))
  for step in ("1", "2"):
    os.remove(directory / step / "state" / "_METADATA")
  reports = []
  reader = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  with pytest.raises(checkpoints.CheckpointError) as error:
    reader.restore_latest(ABSTRACT, report=reports.append)
  assert str(error.value) == (
      f"none of the checkpoints [1, 2] in {directory} could be restored; they were moved to "
      f"{directory}_corrupt/. Remove them to start the run afresh."
  )
  assert [report.split(";")[0] for report in reports] == [
      "checkpoint 2 is unusable (ValueError: the array metadata cannot be read)",
      "checkpoint 1 is unusable (ValueError: the array metadata cannot be read)",
  ]
  assert sorted(name.split("-")[0] for name in os.listdir(f"{directory}_corrupt")) == ["1", "2"]


def test_no_checkpoint_restores_nothing(tmp_path):
  reader = checkpoints.Checkpointer(str(tmp_path), every=1, keep=None, asynchronous=False)
  assert reader.restore_latest(ABSTRACT, report=pytest.fail) is None
  reader.close()


def test_another_model_is_refused_with_the_differing_arrays_and_nothing_moves(tmp_path):
  directory = tmp_path / "ckpt"
  _saved(directory, (1,))
  wider = {
      **ABSTRACT,
      "w": jax.ShapeDtypeStruct((2, 4), np.float32),
      "b": jax.ShapeDtypeStruct((4,), np.float32),
      "extra": ABSTRACT["count"],
      "more": ABSTRACT["count"],
  }
  reader = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  with pytest.raises(checkpoints.CheckpointError) as error:
    reader.restore_latest(wider, report=pytest.fail)
  reader.close()
  assert str(error.value) == (
      f"checkpoint 1 in {directory} holds a different model or optimizer than this config builds "
      "(4 arrays differ, e.g. b: saved (3,), now (4,), extra: saved None, now (1,), more: saved None, now (1,)). "
      "Use the config the run started with, or another workdir."
  )
  assert os.listdir(directory) == ["1"] and not os.path.exists(f"{directory}_corrupt")


def test_quarantine_in_a_multi_process_run_waits_for_every_process(tmp_path, monkeypatch):
  from jax.experimental import multihost_utils

  directory = tmp_path / "ckpt"
  _saved(directory, (1, 2))
  barriers = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "sync_global_devices", barriers.append)
  reader = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  destination = reader._quarantine(2)
  assert [name for name in barriers if name.startswith("mmjax")] == ["mmjax_quarantine_2"]  # Orbax has its own
  assert os.path.isdir(destination) and reader.all_steps() == [1]
  reader.close()


def test_quarantine_moves_files_only_on_the_first_process(tmp_path, monkeypatch):
  directory = tmp_path / "ckpt"
  _saved(directory, (1,))
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  reader = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  destination = reader._quarantine(1)
  reader.close()
  assert not os.path.exists(destination) and os.listdir(directory) == ["1"]


def test_abstract_with_shardings_keeps_shapes_and_dtypes_and_adds_the_shardings():
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoints.abstract_with_shardings(ABSTRACT, jax.tree.map(lambda _: sharding, ABSTRACT))
  assert abstract == {
      "w": jax.ShapeDtypeStruct((2, 3), np.float32, sharding=sharding),
      "b": jax.ShapeDtypeStruct((3,), np.float32, sharding=sharding),
      "scale": jax.ShapeDtypeStruct((), np.float32, sharding=sharding),
      "count": jax.ShapeDtypeStruct((1,), np.int32, sharding=sharding),
  }
  assert abstract["w"].sharding == sharding


def test_the_saved_integrity_record_and_a_fingerprint_missing_from_it(tmp_path):
  import json

  directory = tmp_path / "ckpt"
  _saved(directory, (1, 2))
  with open(directory / "2" / "integrity" / "metadata") as f:
    integrity = json.load(f)
  assert integrity == {"format": 1, "fingerprint": checkpoints.fingerprint(_state(2))}
  del integrity["fingerprint"]["w"]  # a damaged record: an array it does not vouch for is not trusted
  with open(directory / "2" / "integrity" / "metadata", "w") as f:
    json.dump(integrity, f)
  reports = []
  reader = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  step, _, _ = reader.restore_latest(ABSTRACT, report=reports.append)
  reader.close()
  assert step == 1
  assert [report.split(";")[0] for report in reports] == [
      "checkpoint 2 is unusable (ValueError: 1 arrays do not match their saved fingerprints, e.g. ['w'])"
  ]


class _State(NamedTuple):
  params: dict
  step: np.ndarray


def test_restores_into_the_structure_and_dtypes_of_the_abstract_state(tmp_path):
  state = _State(params={"w": np.linspace(0, 1, 6, dtype=np.float32).reshape(2, 3)}, step=np.int32(5))
  saver = checkpoints.Checkpointer(str(tmp_path), every=1, keep=None, asynchronous=False)
  saver.save(5, state, {"position": 5})
  saver.close()
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = checkpoints.abstract_with_shardings(
      jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype), state),
      jax.tree.map(lambda _: sharding, state),
  )
  reader = checkpoints.Checkpointer(str(tmp_path), every=1, keep=None, asynchronous=False)
  restored, data_state = reader.restore(5, abstract)
  reader.close()
  assert type(restored) is _State and data_state == {"position": 5}
  assert restored.params["w"].sharding == sharding and restored.step.dtype == np.int32
  np.testing.assert_array_equal(restored.params["w"], state.params["w"])
  assert int(restored.step) == 5


def test_array_metadata_without_shapes_is_damage(tmp_path, monkeypatch):
  directory = tmp_path / "ckpt"
  _saved(directory, (1,))
  reader = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  # Metadata Orbax could parse only partly: entries that are not array metadata.
  monkeypatch.setattr(reader._manager, "item_metadata", lambda step: {"state": {"w": object(), "count": object()}})
  with pytest.raises(ValueError, match="^the array metadata cannot be read$"):
    reader.restore(1, ABSTRACT)
  reader.close()


def test_what_an_interrupted_save_left_behind_is_removed_on_open(tmp_path):
  directory = tmp_path / "ckpt"
  _saved(directory, (1,))
  leftover = directory / "2.orbax-checkpoint-tmp-1764763200"  # Orbax's name for a save in progress
  (leftover / "state").mkdir(parents=True)
  (leftover / "state" / "partial").write_bytes(b"half a write")
  # The run restarts and saves again: Orbax removes the leftovers in the background and waits for
  # that before its first save.
  restarted = checkpoints.Checkpointer(str(directory), every=1, keep=None, asynchronous=False)
  assert restarted.save(2, _state(2), {"position": 2})
  restarted.close()
  assert sorted(os.listdir(directory)) == ["1", "2"]
