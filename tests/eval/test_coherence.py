"""Coherence metrics against hand-computed cases, and the whole generative evaluation on a model
whose generations are known."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.eval import coherence


def test_coherence_and_joint_coherence_by_hand():
  predicted, labels = np.array([3, 1, 4, 1, 5]), np.array([3, 1, 0, 2, 5])
  assert coherence.coherence(predicted, labels) == pytest.approx(3 / 5)
  assert coherence.coherence(predicted, labels, np.array([True, False, True, True, False])) == pytest.approx(1 / 3)
  assert np.isnan(coherence.coherence(predicted, labels, np.zeros(5, bool)))
  joint = {"a": np.array([0, 1, 2, 3]), "b": np.array([0, 1, 2, 0]), "c": np.array([0, 2, 2, 3])}
  assert coherence.joint_coherence(joint) == pytest.approx(2 / 4)  # samples 0 and 2 agree everywhere
  with pytest.raises(ValueError, match="at least two modalities"):
    coherence.joint_coherence({"a": joint["a"]})


def test_reconstruction_error_under_jit_and_vmap():
  values, targets = jnp.array([[[0.0, 1.0]], [[2.0, 2.0]]]), jnp.zeros((2, 1, 2))
  np.testing.assert_allclose(jax.jit(coherence.reconstruction_error)(values, targets), [0.5, 4.0])
  per_row = jax.vmap(lambda v, t: coherence.reconstruction_error(v[None], t[None])[0])(values, targets)
  np.testing.assert_allclose(per_row, [0.5, 4.0])
  with pytest.raises(ValueError, match="reconstruction_error: values"):
    coherence.reconstruction_error(jnp.zeros((2, 3)), jnp.zeros((2, 2)))


def test_reconstruction_error_of_token_ids_is_the_token_error_rate():
  tokens = jnp.array([[1, 5, 2, 0], [1, 7, 7, 2]], jnp.int32)
  generated = jnp.array([[1, 5, 2, 2], [1, 6, 6, 0]], jnp.int32)
  expected = [1 / 4, 3 / 4]  # wrong positions over all four, the pad included
  np.testing.assert_allclose(jax.jit(coherence.reconstruction_error)(generated, tokens), expected)
  per_row = jax.vmap(lambda v, t: coherence.reconstruction_error(v[None], t[None])[0])(generated, tokens)
  np.testing.assert_allclose(per_row, expected)


class _References:
  """Classifies an 'image' as its first pixel's value; labels are their own class."""

  def predict(self, modality, values):
    return np.asarray(values).reshape(len(values), -1)[:, 0].astype(np.int32) if modality == "image" else np.asarray(values)

  def accuracy(self, modality):
    return 0.5 if modality == "image" else 1.0


def _model(has_prior: bool = True):
  """Image from label: right for classes < 5, wrong above; label from image: always 0."""

  def evaluation(variables, batch, key):
    del variables, key
    image_from_label = jnp.where(batch["label"] < 5, batch["label"], 0).astype(jnp.float32)
    alone = {"label": {"image": jnp.broadcast_to(image_from_label[:, None, None, None], batch["image"].shape), "label": batch["label"]},
             "image": {"image": batch["image"], "label": jnp.zeros_like(batch["label"])}}
    errors = {m: jnp.zeros(batch["label"].shape) for m in ("image", "label")}
    return {"alone": alone, "reconstruction": alone["label"], "errors": errors, "log_likelihood": -jnp.ones(batch["label"].shape)}

  def prior_samples(variables, num, key):
    del variables, key
    return {"image": jnp.zeros((num, 2, 2, 1)), "label": jnp.arange(num) % 2}

  return types.SimpleNamespace(
      modalities=("image", "label"), references=_References(), _evaluation=evaluation, _prior_samples=prior_samples, has_prior=has_prior,
      config=types.SimpleNamespace(eval_prior_samples=10), specs={"image": types.SimpleNamespace(kind="image"), "label": types.SimpleNamespace(kind="label")},
      likelihoods={"image": {"name": "bernoulli", "link": "identity"}, "label": {"name": "categorical", "link": "identity"}},
  )


def _batch():
  labels = np.arange(10, dtype=np.int32)
  present = np.arange(10) < 8  # the last two rows are padding
  return {"image": jnp.zeros((10, 2, 2, 1)), "label": jnp.asarray(labels),
          "present": {"image": jnp.asarray(present), "label": jnp.asarray(present)}}


def test_evaluate_generative_against_hand_computed_coherences():
  metrics = coherence.evaluate_generative(_model(), {}, [_batch()], jax.random.key(0))
  assert metrics["coherence/label->image"] == pytest.approx(5 / 8)  # classes 0-4 of the 8 real rows
  assert metrics["coherence/image->label"] == pytest.approx(1 / 8)  # only class 0
  assert metrics["coherence/joint"] == pytest.approx(0.5)  # image class 0 vs labels 0, 1, 0, 1, …
  assert metrics["classifier_accuracy/image"] == 0.5 and metrics["num_examples"] == 8
  assert metrics["log_likelihood"] == -1.0
  for key in ("images/reconstruction/image", "images/label->image", "images/prior/image"):
    assert metrics[key].dtype == np.uint8 and metrics[key].ndim == 3


def test_evaluate_generative_without_a_prior_has_no_joint_coherence():
  metrics = coherence.evaluate_generative(_model(has_prior=False), {}, [_batch()], jax.random.key(0))
  assert metrics["coherence/label->image"] == pytest.approx(5 / 8) and metrics["classifier_accuracy/image"] == 0.5
  assert "coherence/joint" not in metrics and "images/prior/image" not in metrics
