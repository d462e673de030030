"""Coherence of multimodal generative models, and their whole evaluation.

Cross-coherence ``coherence/<src>-><dst>``: generate modality dst from modality src alone, classify
the generation with a classifier trained on real dst data, and count how often it gives src's
class. Joint coherence ``coherence/joint``: decode prior samples into every modality, and count how
often all the classifiers agree. The classifiers' own accuracies on real data go beside them
(``classifier_accuracy/<m>``): a coherence cannot be trusted above its judge's accuracy.

References:
  Shi et al., Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative Models,
  2019 (cross and joint coherence). Sutter et al., Generalized Multimodal ELBO, 2021.
"""

from collections.abc import Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import checks
from mmjax.eval.images import image_grid
from mmjax.parallel import distributed

# Samples shown per image grid (rows of 8).
GRID_SIZE = 16


def coherence(predicted: np.ndarray, labels: np.ndarray, mask: np.ndarray | None = None) -> float:
  """The fraction of the (unmasked) samples whose generation is classified as their label.

  Args:
    predicted: ``int[B]`` classes a reference classifier gives the generations.
    labels: ``int[B]`` the classes of the samples they were generated from.
    mask: optional ``bool[B]``; False samples are left out.

  Returns:
    The fraction (NaN when no sample is kept).

  >>> coherence(np.array([1, 2, 3, 0]), np.array([1, 2, 0, 0]), np.array([True, True, True, False]))
  0.666...
  """
  predicted, labels = np.asarray(predicted), np.asarray(labels)
  checks.check_shape("coherence: predicted", predicted, ("B",))
  checks.check_shape("coherence: labels", labels, predicted.shape)
  mask = np.ones(predicted.shape, bool) if mask is None else np.asarray(mask, bool)
  checks.check_shape("coherence: mask", mask, predicted.shape)
  return float(np.mean(predicted[mask] == labels[mask])) if mask.any() else float("nan")


def joint_coherence(predictions: Mapping[str, np.ndarray]) -> float:
  """The fraction of joint samples whose modalities are all classified as the same class.

  Args:
    predictions: ``{modality: int[N]}`` classes of N joint samples, at least two modalities.

  Returns:
    The fraction.

  >>> joint_coherence({"image": np.array([1, 2, 3]), "label": np.array([1, 2, 4])})
  0.666...
  """
  if len(predictions) < 2:
    raise ValueError(f"joint_coherence: predictions: expected at least two modalities, got {sorted(predictions)}.")
  stacked = np.stack([np.asarray(p) for p in predictions.values()])
  return float(np.mean(np.all(stacked == stacked[:1], axis=0)))


def reconstruction_error(values: jax.Array, targets: jax.Array) -> jax.Array:
  """``[B]`` per-sample error, averaged over the event: the mean squared error for continuous
  values (pixels, waveforms), the fraction of wrong entries for integers (a label's class: 0 or 1;
  a text's tokens: the token error rate over its positions, pads included).

  >>> reconstruction_error(jnp.array([[0.0, 1.0]]), jnp.array([[0.0, 0.0]]))
  Array([0.5], dtype=float32)
  >>> reconstruction_error(jnp.array([3, 1]), jnp.array([3, 2]))
  Array([0., 1.], dtype=float32)
  >>> reconstruction_error(jnp.array([[5, 7, 0, 0]]), jnp.array([[5, 6, 2, 0]]))
  Array([0.5], dtype=float32)
  """
  checks.check_shape("reconstruction_error: values", values, jnp.shape(targets))
  if jnp.issubdtype(jnp.result_type(targets), jnp.integer):
    errors = (values != targets).astype(jnp.float32)
  else:
    errors = jnp.square(values.astype(jnp.float32) - targets.astype(jnp.float32))
  return jnp.mean(errors.reshape(errors.shape[0], -1), axis=1)


def _grid(model, modality: str, images) -> np.ndarray:
  section = model.likelihoods[modality]
  unit = section["name"] == "bernoulli" or section["link"] == "sigmoid"
  return image_grid(np.asarray(images)[:GRID_SIZE], columns=8, value_range=(0.0, 1.0) if unit else None)


def evaluate_generative(model, variables, batches: Iterable, key: jax.Array) -> dict:
  """The evaluation of a generative family (`mmjax.models.vae_common.MultimodalVAE`) over a split.

  Args:
    model: the family; its jitted ``_evaluation(variables, batch, key)`` gives every modality
      generated from each modality alone (``alone``), reconstructions, reconstruction errors and
      the IWAE ``log_likelihood``; ``_prior_samples(variables, n, key)`` decodes prior samples
      (when ``has_prior``: no joint coherence and prior grids otherwise).
    variables: the model's variables.
    batches: the evaluation split (padding rows have no modality present).
    key: PRNG key of the evaluation (fixed: evaluations are repeatable).

  Returns:
    ``coherence/<src>-><dst>``, ``coherence/joint`` and ``classifier_accuracy/<m>`` (with
    reference classifiers), ``log_likelihood``, ``reconstruction_error/<m>``, ``num_examples``,
    and uint8 image grids of each image modality (``images/reconstruction/<m>`` with the originals
    above, ``images/<src>-><m>``, ``images/prior/<m>``); text and audio generations have no grid
    (they are judged by their reference classifiers and reconstruction errors).
  """
  modalities, references = model.modalities, model.references
  sample_key, key = jax.random.split(key)
  correct: dict[str, list] = {}
  totals: dict[str, list] = {"log_likelihood": [], **{f"reconstruction_error/{m}": [] for m in modalities}}
  images: dict[str, np.ndarray] = {}
  count = 0
  for index, batch in enumerate(batches):
    outputs = distributed.to_host(model._evaluation(variables, batch, jax.random.fold_in(key, index)))
    present = {m: np.asarray(distributed.to_host(batch["present"][m])) for m in modalities}
    valid = np.any(np.stack(list(present.values())), axis=0)
    count += int(valid.sum())
    totals["log_likelihood"].append(outputs["log_likelihood"][valid])
    for m in modalities:
      totals[f"reconstruction_error/{m}"].append(outputs["errors"][m][present[m]])
    if references is not None:
      labels = np.asarray(distributed.to_host(batch["label"]))
      for source in modalities:
        for target in modalities:
          if target != source:
            predicted = np.asarray(references.predict(target, outputs["alone"][source][target]))
            correct.setdefault(f"coherence/{source}->{target}", []).append(predicted[present[source]] == labels[present[source]])
    if index == 0:
      for m in modalities:
        if model.specs[m].kind == "image":
          original = np.asarray(distributed.to_host(batch[m]))[:8]
          images[f"images/reconstruction/{m}"] = _grid(model, m, np.concatenate([original, outputs["reconstruction"][m][:8]]))
          for source in modalities:
            if source != m:
              images[f"images/{source}->{m}"] = _grid(model, m, outputs["alone"][source][m])
  metrics = {name: float(np.mean(np.concatenate(values))) for name, values in {**totals, **correct}.items()}
  if model.has_prior:
    samples = distributed.to_host(model._prior_samples(variables, model.config.eval_prior_samples, sample_key))
    for m in modalities:
      if model.specs[m].kind == "image":
        images[f"images/prior/{m}"] = _grid(model, m, samples[m])
    if references is not None:
      metrics["coherence/joint"] = joint_coherence({m: np.asarray(references.predict(m, samples[m])) for m in modalities})
  if references is not None:
    metrics.update({f"classifier_accuracy/{m}": references.accuracy(m) for m in modalities})
  return {**metrics, "num_examples": count, **images}
