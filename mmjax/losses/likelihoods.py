"""Per-sample log-likelihoods of a decoder's output distribution, one function per family.

Every function scores targets ``[B, ...]`` under a factorised distribution whose parameters have
the same leading batch dimension, and returns ``log p(x_b)`` summed over the event dimensions:
``[B, ...] -> [B]``, in float32 whatever the input dtype. Parameters come first and the scored
targets last, as in `log_prob`. They are pure functions: use them under `jit`, `grad` and `vmap`.

Scales are given as their logarithm (``log_scale``), the parametrisation a decoder learns; a fixed
scale ``s`` is ``log_scale=math.log(s)``. A ``log_scale`` may be a scalar, one value per event
element (shared by the batch) or one per element of every sample.

Multimodal VAEs weight each modality's log-likelihood so that a modality with many dimensions does
not drown the others; that weight is a plain factor the caller multiplies in
(`likelihood_rescaling` computes MMVAE's).
"""

import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp

from mmjax import checks

_LOG_2PI = math.log(2 * math.pi)


def _batched(ndim: int, trailing: tuple[checks.Dim, ...] = ()) -> tuple[checks.Dim, ...]:
  """``(B, ?, …, *trailing)`` with as many dimensions as `ndim`, and at least ``1 + len(trailing)``."""
  return ("B", *[None] * max(ndim - 1 - len(trailing), 0), *trailing)


def _check_targets(fn: str, params, targets, params_name: str) -> None:
  checks.check_shape(f"{fn}: {params_name}", params, _batched(jnp.ndim(params)))
  checks.check_dtype(f"{fn}: {params_name}", params, "float")
  checks.check_shape(f"{fn}: targets", targets, params.shape)
  checks.check_dtype(f"{fn}: targets", targets, "float")


def _check_log_scale(fn: str, log_scale, params) -> None:
  shape = tuple(jnp.shape(log_scale))
  allowed = [(), tuple(params.shape[1:]), tuple(params.shape)]
  if shape not in allowed:
    raise ValueError(
        f"{fn}: log_scale: expected shape () (one scale), {allowed[1]} (one per event element) or "
        f"{allowed[2]} (one per element of every sample), got {shape}."
    )
  checks.check_dtype(f"{fn}: log_scale", log_scale, "float")


def _sum_event(values: jax.Array) -> jax.Array:
  return jnp.sum(values.reshape(values.shape[0], -1), axis=1)


def bernoulli_log_likelihood(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Log-likelihood of `targets` under independent Bernoullis with the given logits.

  ``log p(x) = Σ x·l − softplus(l)``, which equals ``x·log σ(l) + (1 − x)·log σ(−l)`` without ever
  forming ``log σ``: finite and with finite gradients for any finite logits. Targets in ``[0, 1]``
  that are not 0 or 1 (grey levels) give the usual cross-entropy, as MVAE uses for MNIST.

  Args:
    logits: ``[B, ...]`` logits of ``p(x = 1)``.
    targets: ``[B, ...]`` values in ``[0, 1]``, the shape of `logits`.

  Returns:
    ``[B]`` log-likelihoods summed over the event dimensions.

  >>> logits = jnp.array([[0.0, 2.0]])
  >>> bernoulli_log_likelihood(logits, jnp.array([[1.0, 0.0]]))  # log(1/2) + log(1 − σ(2))
  Array([-2.8200...], dtype=float32)
  """
  _check_targets("bernoulli_log_likelihood", logits, targets, "logits")
  logits, targets = logits.astype(jnp.float32), targets.astype(jnp.float32)
  return _sum_event(targets * logits - jax.nn.softplus(logits))


def gaussian_log_likelihood(mean: jax.Array, log_scale: jax.Array | float, targets: jax.Array) -> jax.Array:
  """Log-likelihood of `targets` under independent Gaussians ``N(mean, exp(log_scale)²)``.

  Args:
    mean: ``[B, ...]`` means.
    log_scale: log standard deviation: a scalar, an array of the event shape ``mean.shape[1:]``,
      or of the shape of `mean`.
    targets: ``[B, ...]``, the shape of `mean`.

  Returns:
    ``[B]`` log-likelihoods summed over the event dimensions.

  >>> gaussian_log_likelihood(jnp.zeros((1, 2)), 0.0, jnp.array([[0.0, 1.0]]))  # −log 2π − 1/2
  Array([-2.3378...], dtype=float32)
  """
  _check_targets("gaussian_log_likelihood", mean, targets, "mean")
  _check_log_scale("gaussian_log_likelihood", log_scale, mean)
  log_scale = jnp.asarray(log_scale, jnp.float32)
  standardised = (targets.astype(jnp.float32) - mean.astype(jnp.float32)) * jnp.exp(-log_scale)
  return _sum_event(-0.5 * jnp.square(standardised) - log_scale - 0.5 * _LOG_2PI)


def laplace_log_likelihood(loc: jax.Array, log_scale: jax.Array | float, targets: jax.Array) -> jax.Array:
  """Log-likelihood of `targets` under independent Laplace distributions ``Laplace(loc, exp(log_scale))``.

  MMVAE (Shi et al. 2019) uses a Laplace likelihood with a fixed scale of 0.75 on every image
  modality (``log_scale=math.log(0.75)``), its decoders' means being sigmoid outputs clamped to
  ``[1e-6, 1 − 1e-6]``.

  Args:
    loc: ``[B, ...]`` locations (the means).
    log_scale: log scale ``b`` (the standard deviation is ``√2·b``): a scalar, an array of the event
      shape ``loc.shape[1:]``, or of the shape of `loc`.
    targets: ``[B, ...]``, the shape of `loc`.

  Returns:
    ``[B]`` log-likelihoods summed over the event dimensions.

  >>> laplace_log_likelihood(jnp.zeros((1, 2)), 0.0, jnp.array([[0.0, 1.0]]))  # −2 log 2 − 1
  Array([-2.3862...], dtype=float32)
  """
  _check_targets("laplace_log_likelihood", loc, targets, "loc")
  _check_log_scale("laplace_log_likelihood", log_scale, loc)
  log_scale = jnp.asarray(log_scale, jnp.float32)
  distance = jnp.abs(targets.astype(jnp.float32) - loc.astype(jnp.float32))
  return _sum_event(-distance * jnp.exp(-log_scale) - log_scale - math.log(2.0))


def categorical_log_likelihood(logits: jax.Array, targets: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """Log-likelihood of `targets` under independent categoricals over the last axis of `logits`.

  Args:
    logits: ``[B, ..., C]`` unnormalised log-probabilities of ``C`` classes.
    targets: either ``int[B, ...]`` class indices in ``[0, C)``, or float ``[B, ..., C]`` one-hot
      vectors (or class probabilities: the cross-entropy with them).
    mask: optional ``bool[B, ...]`` (the shape of `logits` without its class axis); False entries
      (padding) add nothing and get no gradient, whatever their targets hold.

  Returns:
    ``[B]`` log-likelihoods summed over the (unmasked) event dimensions.

  >>> logits = jnp.log(jnp.array([[0.25, 0.75]]))
  >>> categorical_log_likelihood(logits, jnp.array([1]))
  Array([-0.2876...], dtype=float32)
  >>> categorical_log_likelihood(logits, jnp.array([[0.0, 1.0]]))
  Array([-0.2876...], dtype=float32)
  """
  fn = "categorical_log_likelihood"
  checks.check_shape(f"{fn}: logits", logits, _batched(jnp.ndim(logits), ("C",)))
  checks.check_dtype(f"{fn}: logits", logits, "float")
  labels_shape = logits.shape[:-1]
  if mask is None:
    valid = jnp.ones(labels_shape, jnp.bool_)
  else:
    checks.check_shape(f"{fn}: mask", mask, labels_shape)
    checks.check_dtype(f"{fn}: mask", mask, "bool")
    valid = mask
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if jnp.issubdtype(jnp.result_type(targets), jnp.integer):
    checks.check_shape(f"{fn}: targets (class indices)", targets, labels_shape)
    labels = jnp.where(valid, targets, 0)  # padding may hold any id, even out-of-range ones
    per_element = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]
  else:
    checks.check_shape(f"{fn}: targets (one-hot)", targets, logits.shape)
    checks.check_dtype(f"{fn}: targets (one-hot)", targets, "float")
    per_element = jnp.sum(jnp.where(valid[..., None], targets.astype(jnp.float32), 0.0) * log_probs, axis=-1)
  return _sum_event(jnp.where(valid, per_element, 0.0))


def token_log_likelihood(logits: jax.Array, tokens: jax.Array, valid: jax.Array) -> jax.Array:
  """Log-likelihood of padded token sequences: the sum over the real (unpadded) positions.

  Args:
    logits: ``[B, L, V]`` logits over a vocabulary of ``V`` ids at each of ``L`` positions.
    tokens: ``int[B, L]`` target ids; padding positions may hold any id.
    valid: ``bool[B, L]``, False at padding (the text encoders' validity mask).

  Returns:
    ``[B]`` log-likelihoods of each sequence's real tokens.

  >>> logits = jnp.log(jnp.array([[[0.5, 0.5], [0.9, 0.1]]]))
  >>> token_log_likelihood(logits, jnp.array([[1, 7]]), jnp.array([[True, False]]))  # log 0.5
  Array([-0.6931...], dtype=float32)
  """
  fn = "token_log_likelihood"
  bound = checks.check_shape(f"{fn}: logits", logits, ("B", "L", "V"))
  checks.check_shape(f"{fn}: tokens", tokens, ("B", "L"), bound)
  checks.check_dtype(f"{fn}: tokens", tokens, "int")
  checks.check_shape(f"{fn}: valid", valid, ("B", "L"), bound)
  return categorical_log_likelihood(logits, tokens, mask=valid)


def likelihood_rescaling(event_shapes: Mapping[str, Sequence[int]], reference: str) -> dict[str, float]:
  """MMVAE's per-modality likelihood weights: the reference modality's event size over each one's.

  Multiplying each modality's log-likelihood by its weight makes every modality count as if it had
  as many dimensions as the `reference` one. MMVAE (Shi et al. 2019) scales the MNIST
  log-likelihood by ``3·32·32 / 784 ≈ 3.92`` against SVHN (reference SVHN) and, on CUB, the image
  log-likelihood by ``32 / (3·64·64)`` against the 32-token sentences (reference: the sentence).

  Where it is used: the reference implementation multiplies ``log p(x_m | z)`` by the weight of
  modality ``m`` in every term of the training objective (its ELBO, IWAE, DReG and their
  multimodal "looser" variants, for the reconstruction of every modality from every latent), and
  also in the joint log-likelihood it reports; a true ``log p(x)`` needs weights of 1.

  Args:
    event_shapes: per-example shape of every modality (no batch dimension).
    reference: the modality whose weight is 1.

  Returns:
    ``{modality: weight}`` (Python floats: static constants of a config).

  References:
    Shi et al., Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative
    Models, 2019 (``llik_scaling`` in the reference implementation).

  >>> likelihood_rescaling({"mnist": (28, 28, 1), "svhn": (32, 32, 3)}, reference="svhn")
  {'mnist': 3.918..., 'svhn': 1.0}
  """
  if reference not in event_shapes:
    raise ValueError(f"likelihood_rescaling: reference modality {reference!r} is not one of {sorted(event_shapes)}.")
  sizes = {name: math.prod(shape) for name, shape in event_shapes.items()}
  for name, size in sizes.items():
    if size <= 0:
      raise ValueError(
          f"likelihood_rescaling: modality {name!r}: expected a non-empty event shape, got {tuple(event_shapes[name])}."
      )
  return {name: sizes[reference] / size for name, size in sizes.items()}
