"""MMVAE specifics: its loss is the paper's looser bound, recomputed by hand. (What every VAE family
must do is tested in tests/models/test_vae_families.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.models import vae_testing


def _numpy_looser_bounds(model, params, batch, rng):
  """``[B]`` MMVAE looser bounds recomputed by hand, one (modality, sample, example) at a time, with
  the paper's reference code as the specification (``_m_iwae_looser``): every modality's samples
  are scored by EVERY decoder (each weighted), the prior, and the mixture of ALL posteriors."""
  inputs, present = model.inputs(batch)
  posteriors = model.encode(params, inputs)
  loc, scale = np.asarray(posteriors.loc, np.float64), np.asarray(posteriors.scale, np.float64)  # [M, B, D]
  count, size, latent = loc.shape
  samples = model.config.num_samples
  keys = jax.random.split(rng, count)
  z = np.stack([loc[m] + scale[m] * np.asarray(jax.random.laplace(keys[m], (samples, size, latent))) for m in range(count)])
  image, label = np.asarray(batch["image"], np.float64).reshape(size, -1), np.asarray(batch["label"])
  weights = model.weights
  log_w = np.zeros((count, samples, size))
  for m in range(count):
    for k in range(samples):
      outputs = model.decode(params, jnp.asarray(z[m, k], jnp.float32))
      means = 1.0 / (1.0 + np.exp(-np.asarray(outputs["image"], np.float64).reshape(size, -1)))
      logits = np.asarray(outputs["label"], np.float64)
      for b in range(size):
        log_px = weights["image"] * np.sum(-np.abs(image[b] - means[b]) / 0.75 - np.log(2 * 0.75))
        log_px += weights["label"] * (logits[b, label[b]] - np.log(np.sum(np.exp(logits[b]))))
        log_pz = np.sum(-np.abs(z[m, k, b]) - np.log(2.0))
        components = [np.sum(-np.abs(z[m, k, b] - loc[n, b]) / scale[n, b] - np.log(2 * scale[n, b])) for n in range(count)]
        log_qz = np.log(np.mean(np.exp(components)))
        log_w[m, k, b] = log_px + log_pz - log_qz
  per_modality = np.log(np.mean(np.exp(log_w - log_w.max(1, keepdims=True)), axis=1)) + log_w.max(1)
  return np.mean(per_modality, axis=0)


@pytest.mark.parametrize("estimator", ["iwae", "dreg"])
def test_loss_matches_the_reference_objective_by_hand(data_dir, estimator):
  model, batch, variables = vae_testing.build("mmvae", data_dir, batch_size=4, estimator=estimator)
  rng = jax.random.key(3)
  loss, (metrics, _) = jax.jit(model.loss)(variables["params"], {}, batch, rng, 10_000)
  expected = _numpy_looser_bounds(model, variables["params"], batch, rng)
  np.testing.assert_allclose(float(metrics["bound"]), expected.mean(), rtol=1e-4)
  np.testing.assert_allclose(float(loss), -expected.mean(), rtol=1e-4)
