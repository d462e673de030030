"""Counting XLA compilations, to catch recompilation: the same function compiled again because a
shape, a dtype or a Python value changed between calls."""

import collections
import contextlib

import jax
from jax._src import dispatch  # the event name of a backend compilation (or persistent-cache hit)


@contextlib.contextmanager
def counted():
  """Within ``with``: a Counter of compilations by function name (persistent-cache hits count)."""
  counts = collections.Counter()

  def listen(event, duration, **metadata):
    del duration
    if event == dispatch.BACKEND_COMPILE_EVENT:
      counts[metadata.get("fun_name", "?")] += 1

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    yield counts
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)


def assert_compiles_once(config, workdir: str, monkeypatch) -> None:
  """Trains `config` (with at least two evaluations) and checks that nothing compiles twice: the
  train step compiles once; every jitted function of the model holds one compiled version; and
  from the end of the first evaluation to the end of the last, nothing compiles at all."""
  from mmjax import experiment
  from mmjax.train import loop

  built, after_evaluation = [], []
  build, evaluate = experiment.build, loop.Trainer.evaluate
  with counted() as counts:
    monkeypatch.setattr(experiment, "build", lambda *a, **k: built.append(build(*a, **k)) or built[-1])
    monkeypatch.setattr(loop.Trainer, "evaluate", lambda self, state: (evaluate(self, state), after_evaluation.append(counts.copy()))[0])
    experiment.train(config, workdir)
  assert len(after_evaluation) >= 2, "needs at least two evaluations"
  assert after_evaluation[0] == after_evaluation[-1], after_evaluation[-1] - after_evaluation[0]
  assert counts["jit(train_step)"] == 1
  jitted = {name: fn for name, fn in vars(built[-1].model).items() if hasattr(fn, "_cache_size")}
  assert jitted, "the model has no jitted functions to check"
  sizes = {name: fn._cache_size() for name, fn in jitted.items()}
  assert max(sizes.values()) == 1, sizes  # (0: only ever called inside another jitted function)
