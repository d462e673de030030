"""Broken checkpoints are detected, reported and skipped; incompatible ones are refused."""

import glob
import os
import shutil

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
