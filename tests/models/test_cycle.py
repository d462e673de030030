"""Cycle-consistent image ↔ label translation: a short run lowers its loss, and the cycles are the
distances they claim to be."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import cycle_digits
from mmjax.models.cycle import Translators
from tests.models.training import short_run


def tiny_config(data_dir, **model):
  config = cycle_digits.get_config()
  config.data.update(data_dir=data_dir, batch_size=32)
  config.model.update(features=16, **model)
  config.model.encoder.mlp.update(width=32, depth=1)
  config.model.decoder.mlp.update(width=32, depth=1)
  config.train.update(num_steps=40, eval_batch_size=128)
  return config


@pytest.mark.parametrize("paired_weight", [1.0, 0.0])
def test_short_run_lowers_the_loss_and_evaluates(data_dir, paired_weight):
  run, trainer, state, losses = short_run(tiny_config(data_dir, paired_weight=paired_weight), 40)
  assert losses[-5:].mean() < 0.92 * losses[:5].mean(), losses
  metrics = trainer.evaluate(state)
  assert {"accuracy", "to_label", "to_source", "cycle_source", "cycle_label", "loss"} <= set(metrics)


def test_cycle_terms_match_numpy(data_dir):
  run, _, state, _ = short_run(tiny_config(data_dir), 1)
  batch = next(run.data.eval_batches(16))
  terms = run.model.terms(state.params, batch)
  apply = lambda method, x: run.model.module.apply({"params": state.params}, x, method=method)  # noqa: E731
  x = np.asarray(batch["image"], np.float32)
  cycled = np.asarray(apply(Translators.to_source, jax.nn.softmax(apply(Translators.to_label, jnp.asarray(x)))))
  np.testing.assert_allclose(terms["cycle_source"], np.abs(cycled - x).reshape(16, -1).mean(1), rtol=1e-5, atol=1e-6)
