"""Kernels of the contrastive losses that never form the ``[rows, columns]`` logits matrix.

They walk over chunks of rows with `jax.lax.scan`, so their temporary memory is
O(chunk · columns) rather than O(rows · columns), and their gradients are `jax.custom_vjp` rules
whose backward pass recomputes each chunk's logits from the inputs (and, for the softmax, the
O(rows + columns) log-sum-exps of the forward pass) instead of storing them. The logits are
``scale · rows @ columnsᵀ (+ bias)``, computed in float32.

Both kernels also run per device under `jax.shard_map` or `jax.pmap`:
`row_column_cross_entropies` is purely local, and `sigmoid_pair_sum` takes an `axis_name` over which
it passes the column blocks around a ring of devices.
"""

import functools

import jax
import jax.numpy as jnp

AxisName = str | tuple[str, ...]

# Excluded logits take this finite floor rather than -inf, as in `contrastive._exclude_columns`,
# so an all-excluded line stays finite instead of turning into NaN.
_FLOOR = float(jnp.finfo(jnp.float32).min)


def _axes(axis_name: AxisName | None) -> tuple[str, ...]:
  if axis_name is None:
    return ()
  return axis_name if isinstance(axis_name, tuple) else (axis_name,)


def _varying_axes(*values: jax.Array) -> set[str]:
  return set().union(*(jax.typeof(value).mat.varying for value in values))


def _vary(values: tuple[jax.Array, ...], axes: set[str]) -> tuple[jax.Array, ...]:
  """`values`, each cast to vary over those of the mesh `axes` it does not vary over yet.

  Under `shard_map` a `custom_vjp` must return cotangents typed like its inputs, and a scan
  carry must keep its type: a replicated scale whose gradient is a per-device partial sum has to
  enter as a varying value, so that the transpose of this cast (a `psum`) adds the partial sums
  up. Outside `shard_map`, and under `pmap` (which does not track variance), `axes` is empty or
  the cast does nothing.
  """
  return tuple(
      jax.lax.pcast(value, missing, to="varying")
      if (missing := tuple(sorted(axes - jax.typeof(value).mat.varying)))
      else value
      for value in values
  )


def _chunks(rows: jax.Array, chunk_size: int, *per_row: jax.Array):
  """Splits `rows` and the `per_row` arrays into ``[num_chunks, chunk, ...]``, padding with zeros.

  Returns the chunked arrays and the first row index of each chunk. Padded rows must be masked
  by the caller (a zero-padded validity vector does that).
  """
  size = rows.shape[0]
  chunk = max(1, min(chunk_size, size))
  count = -(-size // chunk)
  padding = count * chunk - size
  split = lambda x: jnp.pad(x, [(0, padding)] + [(0, 0)] * (x.ndim - 1)).reshape(count, chunk, *x.shape[1:])
  return tuple(split(x) for x in (rows, *per_row)), jnp.arange(count) * chunk


def _unchunk(chunked: jax.Array, size: int) -> jax.Array:
  return chunked.reshape(-1, *chunked.shape[2:])[:size]


def _exp_at_most_1(shifted: jax.Array) -> jax.Array:
  """``exp`` of a logit minus a maximum or log-sum-exp, which cannot exceed 0 in exact arithmetic.

  The backward pass recomputes the logits and subtracts a maximum saved by the forward pass;
  capping at 0 is exact mathematics and keeps every step finite should the two ever round apart
  (huge, un-normalised embeddings).
  """
  return jnp.exp(jnp.minimum(shifted, 0.0))


def _dots(rows: jax.Array, columns: jax.Array) -> jax.Array:
  return jax.lax.dot_general(rows, columns, (((1,), (1,)), ((), ())))


def _transposed_product(left: jax.Array, right: jax.Array) -> jax.Array:
  """``leftᵀ @ right`` without materialising the transpose."""
  return jax.lax.dot_general(left, right, (((0,), (0,)), ((), ())))


def row_column_cross_entropies(
    rows: jax.Array,
    columns: jax.Array,
    scale: jax.Array,
    row_valid: jax.Array,
    column_valid: jax.Array,
    *,
    chunk_size: int,
    offset: jax.Array | int = 0,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array, jax.Array]:
  """The pieces of both softmax cross-entropies of ``L = scale · rows @ columnsᵀ``, chunk by chunk.

  Row ``i``'s positive is column ``offset + i``. Each log-sum-exp comes in two parts, a shift
  (the maximum, which carries no gradient) and the log-sum-exp of the logits minus that shift,
  and the positive logits are read from the same chunk of logits the maxima come from. The
  cross-entropy ``shifted + (shift - positive)`` then subtracts two copies of the *same* rounded
  number: when the positive is the largest logit the gap is exactly 0, at any scale, as in a
  dense ``log_softmax``. (Adding the shift to the shifted log-sum-exp first, then subtracting a
  positive from another product, loses the small term and the agreement at logits ≳ 1e4.)

  Row ``i`` sums over the valid columns, column ``j`` over the valid rows; an empty sum gives a
  very negative finite shift. The column direction is an online log-sum-exp (running maximum and
  rescaled running sum) carried across row chunks, so one pass over the chunks gives both.

  Args:
    rows: ``float32[R, D]``.
    columns: ``float32[C, D]``, ``C ≥ offset + R``.
    scale: float32 scalar.
    row_valid: ``bool[R]``; invalid rows are left out of the column sums.
    column_valid: ``bool[C]``; invalid columns are left out of the row sums.
    chunk_size: rows per chunk; `R` need not be a multiple of it.
    offset: index of row 0's positive column (a device's first row under `axis_name`).

  Returns:
    ``(row_shifted float32[R], row_shift float32[R], positive float32[R], column_shifted
    float32[C], column_shift float32[C])``: row ``i``'s cross-entropy is
    ``row_shifted[i] + (row_shift[i] - positive[i])``, column ``offset + i``'s
    ``column_shifted[offset + i] + (column_shift[offset + i] - positive[i])``. Differentiable
    w.r.t. `rows`, `columns` and `scale` in O(chunk · C) memory; the shifts have no gradient.

  >>> x = jnp.eye(3)
  >>> valid = jnp.ones(3, bool)
  >>> shifted, shift, positive, _, _ = row_column_cross_entropies(
  ...     x, x, jnp.float32(2.0), valid, valid, chunk_size=2)
  >>> expected = -jnp.diagonal(jax.nn.log_softmax(2.0 * x, axis=1))
  >>> jnp.allclose(shifted + (shift - positive), expected).item()
  True
  """
  rows, columns, scale = _vary((rows, columns, scale), _varying_axes(rows, columns, scale))
  return _cross_entropies(rows, columns, scale, row_valid, column_valid, jnp.asarray(offset, jnp.int32), chunk_size)


def _scaled_logits(scale: jax.Array, rows: jax.Array, columns: jax.Array) -> jax.Array:
  """``(scale · rows) @ columnsᵀ``: the scale goes into the product, not onto its result.

  ``scale · (rows @ columnsᵀ)`` is not one array in XLA's optimised build: the multiply is fused
  into each consumer, and where a consumer subtracts (``logit - max``) LLVM contracts the two into
  one fused multiply-add that skips the product's rounding. At logits ~1e8 the "largest" logit
  then sits several units below its own maximum and the log-sum-exp loses its largest term. A
  product's result is computed once, rounded once, for every use.
  """
  return _dots(scale * rows, columns)


def _positive_columns(start, offset, chunk: int, columns: int) -> jax.Array:
  """``bool[chunk, columns]``: True where a chunk row meets its positive column."""
  targets = offset + start + jnp.arange(chunk)
  return targets[:, None] == jnp.arange(columns)[None, :]


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def _cross_entropies(rows, columns, scale, row_valid, column_valid, offset, chunk_size):
  return _cross_entropies_fwd(rows, columns, scale, row_valid, column_valid, offset, chunk_size)[0]


def _cross_entropies_fwd(rows, columns, scale, row_valid, column_valid, offset, chunk_size):
  (row_chunks, valid_chunks), starts = _chunks(rows, chunk_size, row_valid)

  def body(carry, chunk):
    column_max, column_sum = carry
    rows_c, valid_c, start = chunk
    logits = _scaled_logits(scale, rows_c, columns)
    positive = jnp.sum(jnp.where(_positive_columns(start, offset, *logits.shape), logits, 0.0), axis=1)
    by_row = jnp.where(column_valid[None, :], logits, _FLOOR)
    row_max = jnp.max(by_row, axis=1)
    row_shifted = jnp.log(jnp.sum(_exp_at_most_1(by_row - row_max[:, None]), axis=1))
    by_column = jnp.where(valid_c[:, None], logits, _FLOOR)
    new_max = jnp.maximum(column_max, jnp.max(by_column, axis=0))
    column_sum = column_sum * _exp_at_most_1(column_max - new_max) + jnp.sum(
        _exp_at_most_1(by_column - new_max), axis=0
    )
    return (new_max, column_sum), (row_shifted, row_max, positive)

  size = columns.shape[0]
  init = _vary((jnp.full((size,), _FLOOR, jnp.float32), jnp.zeros((size,), jnp.float32)), _varying_axes(rows, columns))
  (column_max, column_sum), per_row = jax.lax.scan(body, init, (row_chunks, valid_chunks, starts))
  row_shifted, row_max, positive = (_unchunk(x, rows.shape[0]) for x in per_row)
  column_shifted = jnp.log(column_sum)
  outputs = (row_shifted, row_max, positive, column_shifted, column_max)
  return outputs, (rows, columns, scale, row_valid, column_valid, offset, row_max, row_shifted, column_max, column_shifted)


def _cross_entropies_bwd(chunk_size, residuals, cotangents):
  rows, columns, scale, row_valid, column_valid, offset, row_max, row_shifted, column_max, column_shifted = residuals
  # The shifts' cotangents are dropped: each shift cancels out of the cross-entropies it is in.
  row_ct, _, positive_ct, column_ct, _ = cotangents
  chunked, starts = _chunks(rows, chunk_size, row_valid, row_max, row_shifted, row_ct, positive_ct)

  def body(carry, chunk):
    d_columns, d_scale = carry
    rows_c, valid_c, max_c, shifted_c, ct_c, positive_ct_c, start = chunk
    logits = _scaled_logits(scale, rows_c, columns)
    # The probabilities as a dense log_softmax rounds them, (logit - max) - shifted; the masks go
    # on the probabilities, not the logits: an excluded entry gets no gradient whatever its logit.
    by_row = jnp.where(column_valid[None, :], _exp_at_most_1((logits - max_c[:, None]) - shifted_c[:, None]), 0.0)
    by_column = jnp.where(
        valid_c[:, None], _exp_at_most_1((logits - column_max[None, :]) - column_shifted[None, :]), 0.0
    )
    positives = jnp.where(_positive_columns(start, offset, *logits.shape), positive_ct_c[:, None], 0.0)
    d_logits = ct_c[:, None] * by_row + column_ct[None, :] * by_column + positives
    d_columns = d_columns + scale * _transposed_product(d_logits, rows_c)
    # ∂L/∂scale = Σ d_logits ⊙ (rows @ columnsᵀ) = Σ rows ⊙ (d_logits @ columns).
    d_rows_unscaled = d_logits @ columns
    return (d_columns, d_scale + jnp.sum(rows_c * d_rows_unscaled)), scale * d_rows_unscaled

  init = _vary((jnp.zeros_like(columns), jnp.zeros((), jnp.float32)), _varying_axes(rows, columns))
  (d_columns, d_scale), d_rows = jax.lax.scan(body, init, (*chunked, starts))
  return _unchunk(d_rows, rows.shape[0]), d_columns, d_scale, None, None, None


_cross_entropies.defvjp(_cross_entropies_fwd, _cross_entropies_bwd)


def sigmoid_pair_sum(
    rows: jax.Array,
    columns: jax.Array,
    scale: jax.Array,
    bias: jax.Array,
    row_valid: jax.Array,
    column_valid: jax.Array,
    *,
    chunk_size: int,
    axis_name: AxisName | None = None,
) -> jax.Array:
  """Summed sigmoid log-loss ``-log σ(±(scale · rowᵢ · columnⱼ + bias))`` over the valid pairs.

  A pair is positive (sign +) when ``i == j`` and negative otherwise, as in SigLIP.

  With `axis_name`, this runs per device (under `jax.shard_map` or `jax.pmap`) on the local rows
  and local columns, and sums the local rows against the columns of *every* device: the column
  blocks travel around a ring of devices with `jax.lax.ppermute`, a device's own block being the
  only one with positives. The backward pass runs the ring again, carrying each block together
  with the accumulator of its gradient, so the gradient arrives back on the block's device after
  a full turn. Memory per device therefore does not grow with the number of devices.

  Args:
    rows: ``float32[R, D]``.
    columns: ``float32[R, D]``; with `axis_name`, this device's block of the columns.
    scale: float32 scalar.
    bias: float32 scalar.
    row_valid: ``bool[R]``; invalid rows take part in no pair.
    column_valid: ``bool[R]``; invalid columns take part in no pair.
    chunk_size: rows per chunk; `R` need not be a multiple of it.
    axis_name: the mapped axis (or tuple of axes) the batch is split over; None on one device.

  Returns:
    The float32 sum over this device's rows (not yet reduced over devices), differentiable
    w.r.t. `rows`, `columns`, `scale` and `bias` in O(chunk · R) memory.

  References:
    Zhai et al., Sigmoid Loss for Language Image Pre-Training, 2023 (the chunked,
    ring-exchanged implementation of section 3.3).

  >>> x = jnp.eye(2)
  >>> valid = jnp.ones(2, bool)
  >>> round(float(sigmoid_pair_sum(x, x, jnp.float32(1.0), jnp.float32(0.0), valid, valid, chunk_size=1)), 4)
  2.0128
  """
  axes = _varying_axes(rows, columns, scale, bias).union(_axes(axis_name))
  rows, columns, scale, bias, row_valid, column_valid = _vary((rows, columns, scale, bias, row_valid, column_valid), axes)
  return _sigmoid_ring(rows, columns, scale, bias, row_valid, column_valid, axis_name, chunk_size)


def _pass_on(block, axis_name: AxisName):
  """Sends a pytree to the next device on the ring over `axis_name`."""
  size = jax.lax.axis_size(axis_name)
  return jax.lax.ppermute(block, axis_name, [(i, (i + 1) % size) for i in range(size)])


def _pair_terms(rows_c, start, columns, scale, bias, valid_c, column_valid, positives: bool):
  """A chunk's dot products, logits, positive-pair indicator and pair validity."""
  dots = _dots(rows_c, columns)
  logits = scale * dots + bias
  if positives:
    row_ids = start + jnp.arange(rows_c.shape[0])
    positive = row_ids[:, None] == jnp.arange(columns.shape[0])[None, :]
  else:
    positive = jnp.zeros(logits.shape, jnp.bool_)
  pairs = valid_c[:, None] & column_valid[None, :]
  return dots, logits, positive, pairs


def _softplus(x: jax.Array) -> jax.Array:
  # The same formula as jax.nn.softplus (logaddexp(x, 0)) without its special cases for
  # infinities, which make it four times slower per element on CPU; the logits here are finite.
  return jnp.maximum(x, 0.0) + jnp.log1p(jnp.exp(-jnp.abs(x)))


def _block_sum(rows, columns, scale, bias, row_valid, column_valid, positives, chunk_size):
  chunked, starts = _chunks(rows, chunk_size, row_valid)

  def body(total, chunk):
    rows_c, valid_c, start = chunk
    _, logits, positive, pairs = _pair_terms(rows_c, start, columns, scale, bias, valid_c, column_valid, positives)
    pair_loss = _softplus(jnp.where(positive, -logits, logits))
    return total + jnp.sum(jnp.where(pairs, pair_loss, 0.0)), None

  init = _vary((jnp.zeros((), jnp.float32),), _varying_axes(rows, columns))
  total, _ = jax.lax.scan(body, init[0], (*chunked, starts))
  return total


def _block_grads(ct, rows, columns, scale, bias, row_valid, column_valid, positives, chunk_size):
  """Gradients of ``ct · _block_sum`` w.r.t. rows, columns, scale and bias."""
  chunked, starts = _chunks(rows, chunk_size, row_valid)

  def body(carry, chunk):
    d_columns, d_scale, d_bias = carry
    rows_c, valid_c, start = chunk
    dots, logits, positive, pairs = _pair_terms(rows_c, start, columns, scale, bias, valid_c, column_valid, positives)
    d_logits = jnp.where(pairs, ct * (jax.nn.sigmoid(logits) - positive), 0.0)
    d_columns = d_columns + scale * _transposed_product(d_logits, rows_c)
    carry = (d_columns, d_scale + jnp.sum(d_logits * dots), d_bias + jnp.sum(d_logits))
    return carry, scale * (d_logits @ columns)

  zero = jnp.zeros((), jnp.float32)
  init = _vary((jnp.zeros_like(columns), zero, zero), _varying_axes(rows, columns))
  (d_columns, d_scale, d_bias), d_rows = jax.lax.scan(body, init, (*chunked, starts))
  return _unchunk(d_rows, rows.shape[0]), d_columns, d_scale, d_bias


@functools.partial(jax.custom_vjp, nondiff_argnums=(6, 7))
def _sigmoid_ring(rows, columns, scale, bias, row_valid, column_valid, axis_name, chunk_size):
  return _sigmoid_ring_fwd(rows, columns, scale, bias, row_valid, column_valid, axis_name, chunk_size)[0]


def _sigmoid_ring_fwd(rows, columns, scale, bias, row_valid, column_valid, axis_name, chunk_size):
  block_sum = functools.partial(_block_sum, rows, scale=scale, bias=bias, row_valid=row_valid, chunk_size=chunk_size)
  total = block_sum(columns, column_valid=column_valid, positives=True)
  if axis_name is not None:

    def step(_, carry):
      total, block = carry
      block = _pass_on(block, axis_name)
      return total + block_sum(block[0], column_valid=block[1], positives=False), block

    total, _ = jax.lax.fori_loop(1, jax.lax.axis_size(axis_name), step, (total, (columns, column_valid)))
  return total, (rows, columns, scale, bias, row_valid, column_valid)


def _sigmoid_ring_bwd(axis_name, chunk_size, residuals, ct):
  rows, columns, scale, bias, row_valid, column_valid = residuals
  block_grads = functools.partial(
      _block_grads, ct, rows, scale=scale, bias=bias, row_valid=row_valid, chunk_size=chunk_size
  )
  d_rows, d_columns, d_scale, d_bias = block_grads(columns, column_valid=column_valid, positives=True)
  if axis_name is not None:

    def step(_, carry):
      sums, block = carry
      columns_k, valid_k, d_columns_k = _pass_on(block, axis_name)
      grads = block_grads(columns_k, column_valid=valid_k, positives=False)
      sums = jax.tree.map(jnp.add, sums, (grads[0], grads[2], grads[3]))
      return sums, (columns_k, valid_k, d_columns_k + grads[1])

    init = ((d_rows, d_scale, d_bias), (columns, column_valid, d_columns))
    (d_rows, d_scale, d_bias), (_, _, d_columns) = jax.lax.fori_loop(
        1, jax.lax.axis_size(axis_name), step, init
    )
    # After the last step each device holds the accumulator of the block one hop upstream;
    # one more hop brings every block's gradient home.
    d_columns = _pass_on(d_columns, axis_name)
  return d_rows, d_columns, d_scale, d_bias, None, None


_sigmoid_ring.defvjp(_sigmoid_ring_fwd, _sigmoid_ring_bwd)
