"""A few training steps of a built config through the trainer, without the loop (for tests)."""

import jax
import numpy as np

from mmjax import experiment
from mmjax.train import loop


def short_run(config, steps: int, metric: str = "loss"):
  """Trains `config` for `steps` steps; returns the run, its trainer, the final state and the
  per-step values of `metric`."""
  run = experiment.build(config)
  trainer = loop.Trainer(config, run.model, run.data)
  state = trainer.init_state(config.seed)
  losses = []
  for _, batch in zip(range(steps), iter(trainer.train_dataset.to_iter_dataset())):
    state, metrics = trainer.train_step(state, trainer.put(batch))
    losses.append(float(jax.device_get(metrics[metric])))
  return run, trainer, state, np.array(losses)
