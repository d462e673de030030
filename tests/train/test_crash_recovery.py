"""Real SIGKILLs and SIGTERM/SIGINT against a training process; nothing beyond the last
checkpoint is lost, and the resumed run ends bit for bit where an uninterrupted one ends."""

import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax import experiment
from mmjax.train.metric_writers import WALL_CLOCK_KEYS
from tests.training_processes import start_cli_training, wait_for_step

HERE = os.path.dirname(os.path.abspath(__file__))
pytestmark = pytest.mark.slow

# One run, killed at each of these points in turn and restarted on the same workdir each time
# (checkpoints every 4 steps, only the newest kept, evaluation at 6 and 12).
KILL_POINTS = [
    "after_step:3",        # before any checkpoint: starts again from scratch
    "metrics_write:5",     # a half-written line in metrics.jsonl, after checkpoint 4
    "evaluate:6",          # during an evaluation
    "checkpoint_write:8",  # during the write of checkpoint 8: checkpoint 4 must survive
    "checkpoint_write:12", # during the final checkpoint
]


def _worker(data_dir, workdir, kill_point):
  return subprocess.run(
      [sys.executable, os.path.join(HERE, "crash_worker.py"), data_dir, workdir, kill_point],
      capture_output=True, text=True, timeout=600,
  )


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK_KEYS} for line in f]


def _state(workdir):
  return jax.device_get(experiment.restore(workdir)[2])


def _assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(x, y)


def test_sigkill_at_five_points_loses_nothing(data_dir, tmp_path):
  reference, crashed = str(tmp_path / "reference"), str(tmp_path / "crashed")
  done = _worker(data_dir, reference, "none")
  assert done.returncode == 0, done.stderr[-3000:]

  survivors = {}
  for kill_point in KILL_POINTS:
    killed = _worker(data_dir, crashed, kill_point)
    assert killed.returncode == -signal.SIGKILL, (kill_point, killed.stderr[-3000:])
    survivors[kill_point] = sorted(os.listdir(os.path.join(crashed, "checkpoints")))
  done = _worker(data_dir, crashed, "none")
  assert done.returncode == 0, done.stderr[-3000:]

  # Killed while writing checkpoint 8 (keep=1): its partial write stayed in a temporary
  # directory (removed at the next start) and the committed checkpoint 4 was still there.
  assert survivors["checkpoint_write:8"] == ["4", "8.orbax-checkpoint-tmp"]
  assert survivors["checkpoint_write:12"] == ["12.orbax-checkpoint-tmp", "8"]
  assert sorted(os.listdir(os.path.join(crashed, "checkpoints"))) == ["12"]
  _assert_bitwise_equal(_state(reference), _state(crashed))
  assert [r["step"] for r in _records(crashed)] == list(range(1, 13))
  assert _records(crashed) == _records(reference)
  with open(os.path.join(reference, "eval.json")) as a, open(os.path.join(crashed, "eval.json")) as b:
    assert json.load(a) == json.load(b)


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT])
def test_sigterm_and_sigint_save_and_exit_cleanly(data_dir, tmp_path, signal_number):
  workdir = str(tmp_path / "run")
  process = start_cli_training(data_dir, workdir)
  wait_for_step(workdir, 3, process)
  process.send_signal(signal_number)
  _, stderr = process.communicate(timeout=300)

  assert process.returncode == 75, stderr[-3000:]
  records = _records(workdir)
  stopped_at = records[-1]["step"]
  assert f"stopped by {signal.Signals(signal_number).name} after step {stopped_at}; checkpoint {stopped_at} saved" in stderr
  assert "Traceback" not in stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(stopped_at)]
  assert [r["step"] for r in records] == list(range(1, stopped_at + 1))

  if signal_number == signal.SIGINT:
    return  # resuming is the same for both signals; once is enough
  # The run goes on from there: the next start resumes at the saved step.
  resumed = start_cli_training(data_dir, workdir, f"--config.train.num_steps={stopped_at + 2}")
  _, stderr = resumed.communicate(timeout=300)
  assert resumed.returncode == 0, stderr[-3000:]
  assert [r["step"] for r in _records(workdir)] == list(range(1, stopped_at + 3))
