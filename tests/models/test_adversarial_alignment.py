"""Domain-adversarial alignment of image and caption embeddings: a short run lowers its loss, and
the encoders receive the domain classifier's gradient reversed."""

import jax
import numpy as np

from configs import align_digits
from mmjax.models.encoder_configs import encoder_section
from tests.models.training import short_run


def tiny_config(data_dir, **model):
  config = align_digits.get_config()
  config.data.update(data_dir=data_dir, batch_size=32)
  config.model.update(embed_dim=16, domain_width=8, **model)
  config.model.encoders.image = encoder_section("image", "mlp", mlp=dict(width=32, depth=1))
  config.model.encoders.text.gru.width = 16
  config.optimizer.warmup_steps = 5
  config.train.update(num_steps=40, eval_batch_size=128)
  return config


def test_short_run_lowers_the_classification_loss_and_evaluates(data_dir):
  """The total is a minimax game (the domain term rises as the encoders win), so the class term is
  what must fall."""
  config = tiny_config(data_dir)
  config.optimizer.learning_rate = 1e-2
  run, trainer, state, losses = short_run(config, 40, "classification")
  assert losses[-5:].mean() < 0.8 * losses[:5].mean(), losses
  metrics = trainer.evaluate(state)
  assert {"accuracy/image", "accuracy/text", "alignment/domain_accuracy", "alignment/cross_accuracy"} <= set(metrics)
  assert 0.0 <= metrics["alignment/domain_accuracy"] <= 1.0


def test_encoders_get_the_reversed_domain_gradient(data_dir):
  """The domain term's gradient reaches the encoders scaled by the reversal scale, and the domain
  classifier's own gradient does not depend on it."""
  run, _, state, _ = short_run(tiny_config(data_dir, domain_weight=1.0), 1)
  batch = jax.tree.map(np.asarray, next(run.data.eval_batches(16)))
  model = run.model

  def domain_grad(scale):
    model.config.reversal_scale = scale
    grads = jax.grad(lambda p: model.loss(p, {}, batch, jax.random.key(0), 0)[1][0]["domain"])(state.params)
    return grads

  try:
    one, two = domain_grad(1.0), domain_grad(2.0)
  finally:
    model.config.reversal_scale = 1.0
  encoder = lambda g: jax.tree.leaves({k: v for k, v in g.items() if k.startswith("encoders")})  # noqa: E731
  classifier = lambda g: jax.tree.leaves({k: v for k, v in g.items() if k.startswith("domain")})  # noqa: E731
  for a, b in zip(encoder(one), encoder(two), strict=True):
    np.testing.assert_allclose(2 * a, b, rtol=1e-4, atol=1e-7)
  for a, b in zip(classifier(one), classifier(two), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
