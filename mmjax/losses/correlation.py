"""Correlation losses between paired embeddings of two modalities, for multimodal autoencoders.

Both take ``[B, D₁]`` and ``[B, D₂]`` arrays whose row ``i`` describes the same sample in two
modalities, an optional per-sample ``mask`` (False rows take no part and get no gradient,
whatever they hold), and return a scalar to minimise, computed in float32. They are pure
functions: use them under `jit`, `grad` and `vmap` (over a leading axis of independent problems).
"""

import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.numerics import l2_normalize

# Deep CCA's defaults in common use: covariance ridge r₁ = r₂ = 1e-3 (here relative to each view's
# mean variance), and squared canonical correlations clamped below at 1e-9 before their square root.
DEFAULT_CCA_REGULARIZATION = 1e-3
DEFAULT_CCA_EPSILON = 1e-9
# Views whose mean variance is below this are treated as constant.
_MIN_MEAN_VARIANCE = 1e-20


def _check_pair(fn: str, first, second, mask, same_width: bool) -> jax.Array:
  bound = checks.check_shape(f"{fn}: 'first' embeddings", first, ("B", "D"))
  second_shape = ("B", "D") if same_width else ("B", None)
  checks.check_shape(f"{fn}: 'second' embeddings", second, second_shape, bound)
  checks.check_dtype(f"{fn}: 'first' embeddings", first, "float")
  checks.check_dtype(f"{fn}: 'second' embeddings", second, "float")
  if mask is None:
    return jnp.ones((bound["B"],), jnp.bool_)
  checks.check_shape(f"{fn}: mask", mask, ("B",), bound)
  checks.check_dtype(f"{fn}: mask", mask, "bool")
  return mask


def cosine_alignment_loss(first: jax.Array, second: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """Mean cosine distance ``1 − cos(first_i, second_i)`` between paired embeddings.

  Pulls each pair together in direction only (no negatives, unlike the contrastive losses). A
  zero embedding has cosine 0 with everything, and a finite gradient.

  Args:
    first: ``[B, D]`` embeddings of one modality.
    second: ``[B, D]`` embeddings of the other; row ``i`` pairs with ``first[i]``.
    mask: optional ``bool[B]``; False pairs are left out.

  Returns:
    The scalar loss in ``[0, 2]`` (0 when no pair is kept).

  >>> cosine_alignment_loss(jnp.array([[1.0, 0.0], [1.0, 0.0]]), jnp.array([[2.0, 0.0], [0.0, 1.0]]))
  Array(0.5, dtype=float32)
  """
  valid = _check_pair("cosine_alignment_loss", first, second, mask, same_width=True)
  first = l2_normalize(jnp.where(valid[:, None], first.astype(jnp.float32), 0.0))
  second = l2_normalize(jnp.where(valid[:, None], second.astype(jnp.float32), 0.0))
  distance = 1.0 - jnp.sum(first * second, axis=1)
  return jnp.sum(jnp.where(valid, distance, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def canonical_correlations(
    first: jax.Array,
    second: jax.Array,
    *,
    regularization: float = DEFAULT_CCA_REGULARIZATION,
    epsilon: float = DEFAULT_CCA_EPSILON,
    mask: jax.Array | None = None,
) -> jax.Array:
  """The regularised canonical correlations between two views, in decreasing order.

  With ``H₁, H₂`` the centred views (over the kept rows, ``n`` of them), ``C₁₁ = H₁ᵀH₁/(n − 1)``,
  ``C₂₂`` alike and ``C₁₂ = H₁ᵀH₂/(n − 1)``, the canonical correlations are the singular values
  of ``T = Σ₁₁^{-1/2} C₁₂ Σ₂₂^{-1/2}`` with the ridge-regularised covariances
  ``Σᵢᵢ = Cᵢᵢ + r·sᵢ·I``, Deep CCA's definition except that the ridge is relative to each view's
  mean variance ``sᵢ = tr(Cᵢᵢ)/Dᵢ`` (Deep CCA adds ``r·I``): the result then does not depend on
  the views' scales, and the condition number of ``Σᵢᵢ`` is at most ``1 + Dᵢ/r`` whatever they
  hold. Numerical safeguards:

  * the ridge makes both covariances positive definite, even with fewer rows than dimensions or
    constant features; each view is scaled to unit mean variance before any product (a view
    whose mean variance is at most 1e-20 counts as constant and is left unscaled);
  * whitening uses Cholesky factors (``T' = L₁⁻¹ C₁₂ L₂⁻ᵀ`` has the singular values of ``T``) and
    the singular values come from `jnp.linalg.eigvalsh` of ``T'ᵀT'`` (the smaller Gram matrix):
    eigenvalues only, whose gradient stays finite when eigenvalues coincide (eigenvector and SVD
    gradients divide by their differences and give NaN, e.g. for a constant batch);
  * the squared correlations are clamped at `epsilon` before the square root, whose gradient
    at 0 is infinite.

  Args:
    first: ``[B, D₁]`` first view.
    second: ``[B, D₂]`` second view; row ``i`` pairs with ``first[i]``.
    regularization: the ridge ``r``, relative to each view's mean variance.
    epsilon: floor of the squared correlations.
    mask: optional ``bool[B]``; False rows are left out.

  Returns:
    ``[min(D₁, D₂)]`` correlations (float32), largest first; ``√epsilon`` where the views carry no
    correlation (fewer than two kept rows included).

  References:
    Hotelling, Relations Between Two Sets of Variates, 1936. Andrew et al., Deep Canonical
    Correlation Analysis, 2013.

  >>> x = jax.random.normal(jax.random.key(0), (64, 2))
  >>> canonical_correlations(x, x @ jnp.array([[2.0, 1.0], [0.0, 1.0]]), regularization=1e-6).round(3)
  Array([1., 1.], dtype=float32)
  """
  valid = _check_pair("canonical_correlations", first, second, mask, same_width=False)
  denominator = jnp.maximum(jnp.sum(valid) - 1, 1).astype(jnp.float32)
  first, second = (_standardised(view.astype(jnp.float32), valid, denominator) for view in (first, second))
  factors = [
      jnp.linalg.cholesky(view.T @ view / denominator + regularization * jnp.eye(view.shape[1], dtype=jnp.float32))
      for view in (first, second)
  ]
  cross = first.T @ second / denominator
  # T' = L₁⁻¹ C₁₂ L₂⁻ᵀ, by two triangular solves.
  left = jax.scipy.linalg.solve_triangular(factors[0], cross, lower=True)
  transformed = jax.scipy.linalg.solve_triangular(factors[1], left.T, lower=True).T
  gram = transformed.T @ transformed if transformed.shape[1] <= transformed.shape[0] else transformed @ transformed.T
  squared = jnp.linalg.eigvalsh(gram)[::-1]
  return jnp.sqrt(jnp.maximum(squared, epsilon))


def _standardised(view: jax.Array, valid: jax.Array, denominator: jax.Array) -> jax.Array:
  """The kept rows centred and scaled to unit mean variance (zero rows elsewhere)."""
  view = jnp.where(valid[:, None], view, 0.0)
  mean = jnp.sum(view, axis=0) / jnp.maximum(jnp.sum(valid), 1)
  centred = jnp.where(valid[:, None], view - mean, 0.0)
  mean_variance = jnp.sum(jnp.square(centred)) / (denominator * view.shape[1])
  # A (numerically) constant view is left unscaled: its huge 1/√s would overflow the gradients.
  scaled = mean_variance > _MIN_MEAN_VARIANCE
  return centred * jax.lax.rsqrt(jnp.where(scaled, mean_variance, 1.0))


def cca_loss(
    first: jax.Array,
    second: jax.Array,
    *,
    num_components: int | None = None,
    regularization: float = DEFAULT_CCA_REGULARIZATION,
    epsilon: float = DEFAULT_CCA_EPSILON,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Deep CCA's loss: minus the sum of the top-k canonical correlations between two views.

  We chose Deep CCA's total correlation (Andrew et al. 2013) over the SoftCCA decorrelation
  penalties: it is the quantity CCA defines, it is invariant to invertible linear maps of either
  view (so it cannot be gamed by scaling), and `canonical_correlations` computes it without
  eigenvector or SVD gradients, which are what make Deep CCA implementations fragile. It needs
  batches larger than the embedding widths to mean much (with fewer rows the correlations of
  any two views approach 1); the ridge keeps it finite regardless.

  Args:
    first: ``[B, D₁]`` first view.
    second: ``[B, D₂]`` second view; row ``i`` pairs with ``first[i]``.
    num_components: k, how many of the largest correlations to sum (None: all ``min(D₁, D₂)``).
    regularization: the relative covariance ridge (see `canonical_correlations`).
    epsilon: floor of the squared correlations.
    mask: optional ``bool[B]``; False rows are left out.

  Returns:
    The scalar loss, in ``[−k, 0)``; 0 when fewer than two rows are kept.

  References:
    Andrew et al., Deep Canonical Correlation Analysis, 2013.

  >>> x = jax.random.normal(jax.random.key(0), (64, 3))
  >>> round(float(cca_loss(x, -x, num_components=2, regularization=1e-6)), 3)
  -2.0
  """
  enough = jnp.sum(_check_pair("cca_loss", first, second, mask, same_width=False)) >= 2
  correlations = canonical_correlations(first, second, regularization=regularization, epsilon=epsilon, mask=mask)
  size = correlations.shape[0]
  if num_components is None:
    num_components = size
  if not isinstance(num_components, int) or not 1 <= num_components <= size:
    raise ValueError(
        f"cca_loss: num_components: expected an int in [1, {size}] (min(D₁, D₂)), got {num_components!r}."
    )
  return jnp.where(enough, -jnp.sum(correlations[:num_components]), 0.0)
