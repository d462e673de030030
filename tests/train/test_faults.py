"""Non-finite losses: `halt` saves the last good state and stops naming the step and the terms;
`skip` drops the update, counts it, and halts after too many in a row."""

import json
import os

import jax
import numpy as np
import pytest

from mmjax import experiment
from mmjax.train import faults, loop


class PoisonedData:
  """The run's data with NaN images at the given (1-based) training steps."""

  def __init__(self, data, steps):
    self._data, self._steps = data, set(steps)

  def train_dataset(self, batch_size, seed, process_index=0, process_count=1):
    def poison(index, batch):
      if index + 1 in self._steps:
        batch = {**batch, "image": np.full_like(batch["image"], np.nan)}
      return batch

    return self._data.train_dataset(batch_size, seed, process_index, process_count).map_with_index(poison)

  def eval_batches(self, *args, **kwargs):
    return self._data.eval_batches(*args, **kwargs)


def _train(config, workdir, poisoned_steps=()):
  run = experiment.build(config)
  return loop.train(config, str(workdir), run.model, PoisonedData(run.data, poisoned_steps))


def _params(workdir, step):
  return jax.device_get(experiment.restore(str(workdir), step)[2].params)


@pytest.fixture(scope="module")
def clean_run(data_dir, tmp_path_factory):
  from tests.conftest import small_config

  config = small_config(data_dir, num_steps=10, checkpoint_every=1, keep_checkpoints=10, eval_every=None, log_every=1)
  workdir = tmp_path_factory.mktemp("clean")
  _train(config, workdir)
  return config, workdir


def test_halt_saves_the_last_good_state_and_names_the_step(clean_run, tmp_path):
  config, clean = clean_run
  with pytest.raises(faults.NonFiniteError, match=r"step 5: non-finite .*loss.*checkpoint 5"):
    _train(config, tmp_path, poisoned_steps=[5])
  # Checkpoint 5 holds the parameters from before step 5's update: those of clean step 4.
  for a, b in zip(jax.tree.leaves(_params(tmp_path, 5)), jax.tree.leaves(_params(clean, 4))):
    np.testing.assert_array_equal(a, b)
  with open(tmp_path / "metrics.jsonl") as f:
    assert [json.loads(line)["step"] for line in f] == [1, 2, 3, 4]  # logs flushed, bad step not logged
  assert not os.path.exists(tmp_path / "eval.json")


def test_skip_drops_updates_and_counts_them(clean_run, tmp_path):
  config, _ = clean_run
  config = config.copy_and_resolve_references()
  config.train.nonfinite_policy = "skip"
  final = _train(config, tmp_path, poisoned_steps=[3, 4, 7])
  with open(tmp_path / "metrics.jsonl") as f:
    records = [json.loads(line) for line in f]
  assert [r["skipped_steps"] for r in records] == [0, 0, 1, 2, 2, 2, 3, 3, 3, 3]
  assert all(np.isfinite(r["loss"]) for r in records if r["step"] not in (3, 4, 7))
  assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(_params(tmp_path, 10)))
  assert final["step"] == 10 and np.isfinite(final["zeroshot_top1"])


def test_skip_halts_after_too_many_in_a_row(clean_run, tmp_path):
  config, _ = clean_run
  config = config.copy_and_resolve_references()
  config.train.nonfinite_policy = "skip"
  config.train.max_nonfinite_in_a_row = 3
  with pytest.raises(faults.NonFiniteError, match=r"step 6: non-finite .* \(3 steps in a row\)"):
    _train(config, tmp_path, poisoned_steps=range(4, 10))
  # Steps 4–6 were all dropped: checkpoint 6 still holds clean step 3's parameters.
  for a, b in zip(jax.tree.leaves(_params(tmp_path, 6)), jax.tree.leaves(_params(clean_run[1], 3))):
    np.testing.assert_array_equal(a, b)
  state = jax.device_get(experiment.restore(str(tmp_path), 6)[2])
  assert int(state.step) == 6 and int(state.skipped_steps) == 3 and int(state.nonfinite_streak) == 3


def test_nonfinite_terms_lists_only_bad_values():
  assert faults.nonfinite_terms({"loss": float("nan"), "grad_norm": float("inf"), "logit_scale": 14.0}) == [
      "grad_norm", "loss"
  ]


@pytest.fixture(autouse=True)
def fallback_handlers():
  """Handlers that only record, in place while each test runs: a signal that StopSignals fails to
  catch then fails the test's assertions instead of interrupting pytest itself."""
  import signal

  caught = []
  previous = {
      number: signal.signal(number, lambda number, frame: caught.append(number)) for number in faults.StopSignals.SIGNALS
  }
  yield caught
  for number, handler in previous.items():
    signal.signal(number, handler)


def _signal_self(number) -> bool:
  """Sends `number` to this process; returns whether its handler aborted at once (KeyboardInterrupt)."""
  try:
    os.kill(os.getpid(), number)
    # The handler runs in the main thread at the next bytecode boundary; give it a few.
    for _ in range(1000):
      pass
  except KeyboardInterrupt:
    return True
  return False


def test_first_signal_asks_to_stop_and_a_second_ctrl_c_aborts_at_once(fallback_handlers):
  import signal

  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  with faults.StopSignals() as stop:
    assert not stop.requested()
    assert not _signal_self(signal.SIGINT)
    assert stop.received == "SIGINT" and stop.requested()
    assert _signal_self(signal.SIGINT)
  assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
  _signal_self(signal.SIGTERM)
  assert fallback_handlers == [signal.SIGTERM]  # only the signal sent after the block


def test_sigterm_asks_to_stop_and_a_repeated_sigterm_does_not_abort():
  import signal

  with faults.StopSignals() as stop:
    assert not _signal_self(signal.SIGTERM)
    assert not _signal_self(signal.SIGTERM)  # a scheduler repeating its notice must not lose the checkpoint
    assert stop.received == "SIGTERM" and stop.requested()


def test_interrupted_says_which_signal_and_step():
  error = faults.Interrupted(12, "SIGTERM")
  assert (error.step, error.signal_name) == (12, "SIGTERM")
  assert str(error) == "stopped by SIGTERM after step 12; checkpoint 12 saved. Run the same command again to continue."


def test_nonfinite_terms_skips_counters_and_keeps_negative_infinity():
  metrics = {"skipped_steps": 2, "loss": 1.5, "grad_norm": float("-inf"), "logit_scale": float("nan")}
  assert faults.nonfinite_terms(metrics) == ["grad_norm", "logit_scale"]
  assert faults.nonfinite_terms({"loss": 0.25, "skipped_steps": 0}) == []


@pytest.mark.parametrize(
    "in_a_row, repeated", [(1, ""), (2, " (2 steps in a row)"), (5, " (5 steps in a row)")]
)
def test_nonfinite_error_names_step_terms_and_streak(in_a_row, repeated):
  error = faults.NonFiniteError(9, ["grad_norm", "loss"], in_a_row)
  assert (error.step, error.terms) == (9, ["grad_norm", "loss"])
  assert str(error) == (
      f"step 9: non-finite grad_norm, loss{repeated}. The update was not applied; the last good "
      "parameters were saved as checkpoint 9. Lower the learning rate, check the data, or set "
      "train.nonfinite_policy='skip'."
  )


def test_signal_is_logged_when_received(caplog):
  import signal

  with faults.StopSignals():
    _signal_self(signal.SIGTERM)
  assert [record.getMessage() for record in caplog.records] == ["SIGTERM received: stopping after the current step"]


def test_outside_the_main_thread_no_handler_is_installed_and_a_warning_says_so(caplog):
  import signal
  import threading

  before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
  seen = {}

  def train():
    with faults.StopSignals() as stop:
      seen["handlers"] = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
      seen["requested"] = stop.requested()

  thread = threading.Thread(target=train)
  thread.start()
  thread.join()
  assert seen == {"handlers": before, "requested": False}
  assert [record.getMessage() for record in caplog.records] == [
      "training outside the main thread: SIGTERM/SIGINT will not save a checkpoint first"
  ]


@pytest.mark.parametrize(
    "own, gathered, requested, received_after",
    [
        (None, [0, 0], False, None),
        ("SIGTERM", [15, 0], True, "SIGTERM to process 0"),
        (None, [0, 15], True, "SIGTERM to process 1"),  # only another process was signalled
        ("SIGINT", [2, 15], True, "SIGINT to process 0"),  # the first process that has one names it
    ],
)
def test_multi_process_runs_share_each_process_signal_and_agree(monkeypatch, own, gathered, requested, received_after):
  import signal

  from jax.experimental import multihost_utils

  shared = []
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda x, tiled: shared.append((x.tolist(), tiled)) or np.array(gathered, np.int32))
  stop = faults.StopSignals()
  if own is not None:
    stop._handle(getattr(signal, own), None)
  assert stop.requested() is requested
  assert shared == [([getattr(signal, own).value if own else 0], True)]
  assert stop.received == (received_after or own)
