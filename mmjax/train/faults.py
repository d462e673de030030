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
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

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
  at the same step, or the others would wait forever in the next step's collectives; a signal
  often reaches only one of them (a preempted host), so `requested` shares what each process
  received with all the others at every step.
  """

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.received: str | None = None
    self._received_number = 0
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
    self._received_number = number
    logging.warning("%s received: stopping after the current step", self.received)

  def requested(self) -> bool:
    """Whether to stop after the current step: the same answer on every process of the run.

    Every process must call it at every step (it is a collective in multi-process runs). When
    some did receive a signal, `received` names the first of them on all, e.g. ``"SIGTERM to
    process 1"``.
    """
    if jax.process_count() == 1:
      return self.received is not None
    # Asked at every step by every process, one all-gather of each one's signal (0: none) gives
    # all of them the same answer at the same step. JAX's preemption sync point cannot serve:
    # its SIGTERM listener is the C handler that our Python handler replaces.
    numbers = multihost_utils.process_allgather(np.array([self._received_number], np.int32), tiled=True)
    senders = np.flatnonzero(numbers)
    if senders.size == 0:
      return False
    first = int(senders[0])
    self.received = f"{signal.Signals(int(numbers[first])).name} to process {first}"
    return True
