"""Label decoder: logits over the classes, the MVAE architecture, shared checks."""

import jax
import jax.numpy as jnp
import pytest

from mmjax.decoders import MLPLabelDecoder


def test_label_decoder(decoder_checks):
  decoder_checks(MLPLabelDecoder(num_classes=10, width=16, depth=2, norm="layer"), (10,))


def test_defaults_are_the_mvae_label_decoder(count_parameters):
  # MVAE's MNIST label decoder: Linear(64, 512), Linear(512, 512) twice, Linear(512, 10).
  expected = (64 * 512 + 512) + 2 * (512 * 512 + 512) + (512 * 10 + 10)
  assert count_parameters(MLPLabelDecoder(num_classes=10), 64) == expected == 563_722


def test_logits_train_to_the_requested_class():
  # Cross-entropy through the decoder: a few steps of gradient descent make it predict the labels.
  decoder = MLPLabelDecoder(num_classes=3, width=16, depth=1)
  z = jax.random.normal(jax.random.key(0), (6, 4))
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  params = jax.jit(decoder.init)(jax.random.key(1), z)

  def loss(params):
    logits = decoder.apply(params, z)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))

  step = jax.jit(lambda p: jax.tree.map(lambda w, g: w - 0.5 * g, p, jax.grad(loss)(p)))
  for _ in range(100):
    params = step(params)
  assert (jnp.argmax(jax.jit(decoder.apply)(params, z), axis=1) == labels).all()


def test_bad_latent_names_the_modality():
  with pytest.raises(ValueError, match=r"MLPLabelDecoder: modality 'digit': latent: expected shape \(B, Z\), got \(4,\)"):
    MLPLabelDecoder(num_classes=10, width=4, modality="digit").init(jax.random.key(0), jnp.zeros(4))
