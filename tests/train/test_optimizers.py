"""Optimizer construction: schedule shape, decay mask, clipping."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import clip_digits
from mmjax.train import optimizers


def _config(**changes):
  config = clip_digits.get_config().optimizer
  config.update(changes)
  return config


def test_warmup_then_cosine_to_the_final_fraction():
  _, schedule = optimizers.make_optimizer(_config(learning_rate=1.0, warmup_steps=10, final_learning_rate_fraction=0.1), 110)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(0.5)
  assert float(schedule(10)) == pytest.approx(1.0)
  assert float(schedule(60)) == pytest.approx(0.55, rel=1e-4)
  assert float(schedule(110)) == pytest.approx(0.1)


def test_weight_decay_skips_vectors_and_scalars():
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2), "log_scale": jnp.ones(())}
  assert optimizers.decay_mask(params) == {"kernel": True, "bias": False, "log_scale": False}
  optimizer, _ = optimizers.make_optimizer(_config(schedule="constant", learning_rate=0.1, weight_decay=0.5, grad_clip_norm=None), 10)
  zero = {k: jnp.zeros_like(v) for k, v in params.items()}
  updates, _ = optimizer.update(zero, optimizer.init(params), params)
  np.testing.assert_allclose(updates["kernel"], -0.1 * 0.5 * np.ones((2, 2)), rtol=1e-6)
  assert float(jnp.abs(updates["bias"]).max()) == 0 and float(updates["log_scale"]) == 0


def test_gradients_are_clipped_by_global_norm():
  optimizer, _ = optimizers.make_optimizer(
      _config(name="sgd", schedule="constant", learning_rate=1.0, momentum=0.0, weight_decay=0.0, grad_clip_norm=1.0), 10
  )
  params = {"w": jnp.zeros(4)}
  updates, _ = optimizer.update({"w": jnp.full(4, 10.0)}, optimizer.init(params), params)
  assert float(optax.tree.norm(updates)) == pytest.approx(1.0, rel=1e-5)


def test_per_objective_settings_override_the_section_and_are_validated():
  import ml_collections

  from mmjax import schema

  config = ml_collections.ConfigDict(dict(
      name="adamw", learning_rate=1e-3, schedule="constant", warmup_steps=0, final_learning_rate_fraction=0.0,
      b1=0.9, b2=0.98, eps=1e-6, momentum=0.9, weight_decay=0.1, grad_clip_norm=None,
      per_objective={"discriminator": {"learning_rate": 4e-4, "b1": 0.0}},
  ))
  d, g = optimizers.for_objective(config, "discriminator"), optimizers.for_objective(config, "generator")
  assert (d.learning_rate, d.b1, d.b2) == (4e-4, 0.0, 0.98) and (g.learning_rate, g.b1) == (1e-3, 0.9)
  assert float(optimizers.make_optimizer(d, 10)[1](3)) == pytest.approx(4e-4)
  config.per_objective = {"critic": {"learning_rate": -1.0, "beta": 0.5}}
  found = schema.problems(config, optimizers.config_schema(("discriminator", "generator")))
  assert "per_objective.critic: unknown name; valid names here: ['discriminator', 'generator']" in found
  assert "per_objective.critic.learning_rate: -1.0 is below the minimum 0.0" in found
  assert any(p.startswith("per_objective.critic.beta: unknown key") for p in found)
  config.per_objective = {"generator": {"schedule": "warmup_cosine", "warmup_steps": 20}}
  assert optimizers.config_problems(config, 10, ("discriminator", "generator")) == [
      "optimizer.per_objective.generator.warmup_steps (20) must be below train.num_steps (10)"]
