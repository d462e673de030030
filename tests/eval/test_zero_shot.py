"""Zero-shot classification against a NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import eval as evaluation


def test_class_embeddings_average_normalised_prompts():
  rng = np.random.default_rng(0)
  prompts = rng.normal(size=(4, 3, 5))
  unit = prompts / np.linalg.norm(prompts, axis=-1, keepdims=True)
  expected = unit.mean(1) / np.linalg.norm(unit.mean(1), axis=-1, keepdims=True)
  np.testing.assert_allclose(evaluation.class_embeddings(jnp.asarray(prompts, jnp.float32)), expected, rtol=1e-5)


def test_accuracy_matches_reference_with_mask_and_top_k():
  rng = np.random.default_rng(1)
  images, classes = rng.normal(size=(50, 8)), rng.normal(size=(6, 8))
  labels = rng.integers(0, 6, size=50)
  mask = rng.random(50) < 0.7
  scores = images @ classes.T  # cosine ranking is unchanged by the image norm
  top1 = scores.argmax(1) == labels
  top3 = np.array([labels[i] in np.argsort(-scores[i])[:3] for i in range(50)])
  fn = jax.jit(evaluation.zero_shot_accuracy, static_argnames="k")
  args = (jnp.asarray(images, jnp.float32), jnp.asarray(classes, jnp.float32), jnp.asarray(labels))
  np.testing.assert_allclose(fn(*args), top1.mean(), rtol=1e-6)
  np.testing.assert_allclose(fn(*args, k=3), top3.mean(), rtol=1e-6)
  np.testing.assert_allclose(fn(*args, mask=jnp.asarray(mask)), top1[mask].mean(), rtol=1e-6)
