"""What stops a run early, and how the loop hears of it: signals and non-finite values.

Both end the same way: the loop saves a checkpoint of the last good state at the current step,
flushes its logs, and raises one of the exceptions below, so nothing is lost and the CLI can say
what happened in one line.
"""

import math
import signal
import threading
from collections.abc import Mapping

import jax
from absl import logging

NONFINITE_POLICIES = ("halt", "skip")


class Interrupted(Exception):
  """The run was asked to stop (SIGTERM, SIGINT); a checkpoint of the current step was saved."""

  def __init__(self, step: int, signal_name: str):
    self.step = step
    self.signal_name = signal_name
    super().__init__(
        f"stopped by {signal_name} after step {step}; checkpoint {step} saved. "
        "Run the same command again to continue."
    )


class NonFiniteError(RuntimeError):
  """Training stopped on non-finite losses or gradients; the last good state was saved."""

  def __init__(self, step: int, terms: list[str], in_a_row: int):
    self.step = step
    self.terms = terms
    repeated = f" ({in_a_row} steps in a row)" if in_a_row > 1 else ""
    super().__init__(
        f"step {step}: non-finite {', '.join(terms)}{repeated}. The update was not applied; the "
        f"last good parameters were saved as checkpoint {step}. Lower the learning rate, check "
        "the data, or set train.nonfinite_policy='skip'."
    )


def nonfinite_terms(metrics: Mapping[str, float]) -> list[str]:
  """Names of the metrics (losses, gradient norms, …) whose value is NaN or infinite."""
  return sorted(name for name, value in metrics.items() if isinstance(value, float) and not math.isfinite(value))


class StopSignals:
  """Within ``with``: the first SIGTERM or SIGINT asks the loop to stop after the current step.

  A second SIGINT (Ctrl-C twice) interrupts at once. In multi-process runs every process must stop
  at the same step, so `requested` consults JAX's preemption sync point, which the coordination
  service triggers on all processes when any of them is preempted.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: str | None = None
    self._previous = {}

  def __enter__(self) -> "StopSignals":
    if threading.current_thread() is not threading.main_thread():
      logging.warning("training outside the main thread: SIGTERM/SIGINT will not save a checkpoint first")
      return self
    for number in self.SIGNALS:
      self._previous[number] = signal.signal(number, self._handle)
    return self

  def __exit__(self, *exc_info) -> None:
    for number, handler in self._previous.items():
      signal.signal(number, handler)
    self._previous.clear()

  def _handle(self, number, frame) -> None:
    if self.received is not None and number == signal.SIGINT:
      raise KeyboardInterrupt
    self.received = signal.Signals(number).name
    logging.warning("%s received: stopping after the current step", self.received)

  def requested(self, step: int) -> bool:
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils

      if multihost_utils.reached_preemption_sync_point(step):
        self.received = self.received or "preemption notice"
        return True
      return False
    return self.received is not None
