"""Soft dynamic time warping (soft-DTW): a differentiable alignment cost between two sequences.

Dynamic time warping aligns ``x[0:n]`` with ``y[0:m]`` by the monotone path through the cost matrix
``C[i, j]`` from ``(0, 0)`` to ``(n-1, m-1)`` (steps right, down or diagonal) with the least total
cost. Soft-DTW replaces the minimum of that recursion by the soft minimum
``min_γ(a) = −γ log Σ_k exp(−a_k / γ)``:

    R[i, j] = C[i, j] + min_γ(R[i-1, j-1], R[i-1, j], R[i, j-1]),   soft-DTW = R[n-1, m-1],

which is smooth in ``C`` and tends to DTW as ``γ → 0`` (from below: ``DTW − γ log 3 · (n + m − 2) ≤
soft-DTW ≤ DTW``). Its gradient with respect to ``C`` is the expected alignment matrix: the
average, under the Gibbs distribution ``∝ exp(−cost / γ)`` over alignment paths, of each path's
0/1 matrix (`soft_dtw_alignment`).

Sequences of unequal length are padded to static shapes and described by their lengths (padding
at the end): the result equals soft-DTW of the unpadded sequences, and padded entries of ``C``
(whatever they hold) get zero gradient. The recursion runs over anti-diagonals with `jax.lax.scan`
(``n + m − 1`` sequential steps, each vectorised over the batch and the diagonal).
"""

import numbers

import jax
import jax.numpy as jnp

from mmjax import checks


def pairwise_squared_distances(x: jax.Array, y: jax.Array) -> jax.Array:
  """``C[b, i, j] = ‖x[b, i] − y[b, j]‖²``, the usual soft-DTW cost matrix.

  Computed as ``‖x‖² + ‖y‖² − 2 x·y`` (memory ``O(B·N·M)``, not ``O(B·N·M·D)``), clamped at 0
  against rounding.

  Args:
    x: ``[B, N, D]``.
    y: ``[B, M, D]``.

  Returns:
    ``[B, N, M]`` (at least float32).

  >>> pairwise_squared_distances(jnp.array([[[0.0, 0.0], [1.0, 1.0]]]), jnp.array([[[1.0, 0.0]]])).tolist()
  [[[1.0], [1.0]]]
  """
  bindings = checks.check_shape("pairwise_squared_distances: x", x, ("B", None, "D"))
  checks.check_shape("pairwise_squared_distances: y", y, ("B", None, "D"), bindings)
  checks.check_dtype("pairwise_squared_distances: x", x, "float")
  checks.check_dtype("pairwise_squared_distances: y", y, "float")
  dtype = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
  x, y = jnp.asarray(x, dtype), jnp.asarray(y, dtype)
  squared = jnp.sum(x * x, -1)[:, :, None] + jnp.sum(y * y, -1)[:, None, :] - 2 * jnp.einsum("bnd,bmd->bnm", x, y)
  return jnp.maximum(squared, 0)


def _check(fn: str, cost, gamma, x_lengths, y_lengths) -> None:
  bindings = checks.check_shape(f"{fn}: cost", cost, ("B", None, None))
  checks.check_dtype(f"{fn}: cost", cost, "float")
  for name, lengths in (("x_lengths", x_lengths), ("y_lengths", y_lengths)):
    if lengths is not None:
      checks.check_shape(f"{fn}: {name}", lengths, ("B",), bindings)
      checks.check_dtype(f"{fn}: {name}", lengths, "int")
  if isinstance(gamma, numbers.Real) and not gamma > 0:
    raise ValueError(f"{fn}: gamma must be positive, got {gamma}.")


def _soft_minimum(values: jax.Array, valid: jax.Array, gamma) -> jax.Array:
  """``min_γ`` over axis 0 of `values` where `valid` holds; 0 where nothing is valid. Finite gradients."""
  scaled = jnp.where(valid, -values / gamma, jnp.finfo(values.dtype).min)
  top = jax.lax.stop_gradient(jnp.max(scaled, axis=0))
  total = jnp.sum(jnp.where(valid, jnp.exp(scaled - top), 0), axis=0)
  any_valid = jnp.any(valid, axis=0)
  return jnp.where(any_valid, -gamma * (top + jnp.log(jnp.where(any_valid, total, 1))), 0)


def _lengths(lengths, size: int, batch: int) -> jax.Array:
  if lengths is None:
    return jnp.full((batch,), size, jnp.int32)
  return jnp.clip(jnp.asarray(lengths, jnp.int32), 1, size)


def soft_dtw_cost(
    cost: jax.Array,
    *,
    gamma: float | jax.Array = 1.0,
    x_lengths: jax.Array | None = None,
    y_lengths: jax.Array | None = None,
) -> jax.Array:
  """The soft-DTW alignment cost of every pair in a batch, from its cost matrix.

  Args:
    cost: ``[B, N, M]`` costs ``C[b, i, j]`` of matching ``x[b, i]`` with ``y[b, j]`` (for example
      `pairwise_squared_distances`); computed in at least float32.
    gamma: smoothing (> 0; may be a traced scalar); ``γ → 0`` gives DTW.
    x_lengths: ``int[B]`` real lengths of the first sequences (rows), padding at the end; None: all
      ``N``. Lengths below 1 count as 1, lengths above ``N`` as ``N``.
    y_lengths: ``int[B]`` real lengths of the second sequences (columns); None: all ``M``. Clipped
      to ``[1, M]`` alike.

  Returns:
    ``[B]`` soft-DTW values (mean them for a loss). Entries of `cost` outside each pair's lengths
    do not affect them.

  References:
    Cuturi and Blondel, "Soft-DTW: a Differentiable Loss Function for Time-Series", ICML 2017.

  >>> cost = jnp.array([[[0.0, 1.0, 4.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]]])
  >>> soft_dtw_cost(cost, gamma=1e-3)  # DTW: the diagonal costs nothing
  Array([0.], dtype=float32)
  >>> soft_dtw_cost(cost, gamma=1.0)
  Array([-1.19...], dtype=float32)
  >>> soft_dtw_cost(cost, gamma=1e-3, x_lengths=jnp.array([2]), y_lengths=jnp.array([3]))  # rows 0–1 only
  Array([1.], dtype=float32)
  """
  _check("soft_dtw_cost", cost, gamma, x_lengths, y_lengths)
  batch, n, m = cost.shape
  dtype = jnp.promote_types(jnp.result_type(cost), jnp.float32)
  rows, cols = _lengths(x_lengths, n, batch), _lengths(y_lengths, m, batch)
  inside = (jnp.arange(n)[None, :, None] < rows[:, None, None]) & (jnp.arange(m)[None, None, :] < cols[:, None, None])
  cost = jnp.where(inside, jnp.asarray(cost, dtype), 0)
  # Anti-diagonal d holds the cells (i, d - i); cells off the matrix are computed and never read.
  i = jnp.arange(n)
  j = jnp.arange(n + m - 1)[:, None] - i[None, :]
  along_diagonals = jnp.moveaxis(cost[:, i[None, :], jnp.clip(j, 0, m - 1)], 1, 0)  # [n + m - 1, B, n]
  # Which predecessor of each cell exists: (i-1, j-1), (i-1, j), (i, j-1).
  has_predecessor = jnp.stack([(i >= 1) & (j >= 1), jnp.broadcast_to(i >= 1, j.shape), j >= 1], axis=1)[:, :, None]

  def one_row_back(diagonal):
    return jnp.pad(diagonal, ((0, 0), (1, 0)))[:, :-1]

  def step(carry, inputs):
    two_back, one_back = carry
    costs, valid = inputs
    predecessors = jnp.stack([one_row_back(two_back), one_row_back(one_back), one_back])
    accumulated = costs + _soft_minimum(predecessors, valid, gamma)
    return (one_back, accumulated), accumulated

  start = jnp.zeros((batch, n), dtype)
  _, accumulated = jax.lax.scan(step, (start, start), (along_diagonals, has_predecessor))
  return accumulated[rows + cols - 2, jnp.arange(batch), rows - 1]


def soft_dtw_alignment(
    cost: jax.Array,
    *,
    gamma: float | jax.Array = 1.0,
    x_lengths: jax.Array | None = None,
    y_lengths: jax.Array | None = None,
) -> jax.Array:
  """The expected alignment matrix of soft-DTW: ``A[b] = ∂ soft_dtw_cost(cost)[b] / ∂ cost[b]``.

  ``A[b, i, j]`` in ``[0, 1]`` is the probability that ``x[b, i]`` is matched with ``y[b, j]`` under
  the Gibbs distribution over alignment paths; as ``γ → 0`` it becomes the 0/1 matrix of the DTW
  path. Arguments as in `soft_dtw_cost`; entries outside each pair's lengths are 0.

  Returns:
    ``[B, N, M]`` (at least float32).

  References:
    Cuturi and Blondel, "Soft-DTW: a Differentiable Loss Function for Time-Series", ICML 2017.

  >>> cost = jnp.array([[[0.0, 1.0, 4.0], [1.0, 0.0, 1.0], [4.0, 1.0, 0.0]]])
  >>> soft_dtw_alignment(cost, gamma=1e-3).round(3).tolist()
  [[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]]
  """
  _check("soft_dtw_alignment", cost, gamma, x_lengths, y_lengths)
  dtype = jnp.promote_types(jnp.result_type(cost), jnp.float32)

  def total(cost):
    return jnp.sum(soft_dtw_cost(cost, gamma=gamma, x_lengths=x_lengths, y_lengths=y_lengths))

  return jax.grad(total)(jnp.asarray(cost, dtype))
