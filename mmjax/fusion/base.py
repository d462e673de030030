"""The contract every fusion module honours, and the input handling they share.

A fusion is a linen module called as ``fusion(inputs, present=None, *, train=False) -> [B, features]``
(see `mmjax.fusion` for the whole contract). This module validates ``inputs`` and ``present`` once for
all fusions and hands each one its modalities in sorted name order, either pooled (`PooledInput`) or
as token sequences (`TokenInput`), with an absent modality's values already replaced by zeros: after
that replacement nothing a fusion computes can depend on them, and their gradient is exactly zero.
"""

from collections.abc import Mapping
from typing import ClassVar, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.encoders.base import Encoded

FusionInputs = Mapping[str, jax.Array | Encoded]
Presence = Mapping[str, jax.Array] | None


class PooledInput(NamedTuple):
  """One modality as a pooled fusion reads it.

  Attributes:
    name: the modality.
    features: ``[B, D]`` in the fusion's dtype, zero where the modality is absent.
    present: ``bool[B]``.
  """

  name: str
  features: jax.Array
  present: jax.Array


class TokenInput(NamedTuple):
  """One modality as a token fusion reads it.

  Attributes:
    name: the modality.
    tokens: ``[B, T, D]`` in the fusion's dtype, zero wherever `valid` is False.
    valid: ``bool[B, T]``: a real position of a present modality (padding and absent samples are False).
    present: ``bool[B]``.
  """

  name: str
  tokens: jax.Array
  valid: jax.Array
  present: jax.Array


def _check_presence_keys(where: str, names: list[str], present: Mapping) -> None:
  for name in names:
    if name not in present:
      raise ValueError(f"{where}: present has no entry for modality {name!r}; it needs one per input modality {names}.")
  extra = sorted(set(present) - set(names))
  if extra:
    raise ValueError(f"{where}: present names modalities {extra} that are not among the inputs {names}.")


def _check_modality(where: str, name: str, x, bindings: dict[str, int]) -> dict[str, int]:
  label = f"{where}: modality {name!r}"
  if isinstance(x, Encoded):
    bindings = checks.check_shape(f"{label} pooled", x.pooled, ("B", None), bindings)
    checks.check_dtype(f"{label} pooled", x.pooled, "float")
    bindings = checks.check_shape(f"{label} tokens", x.tokens, ("B", None, x.pooled.shape[1]), bindings)
    checks.check_dtype(f"{label} tokens", x.tokens, "float")
    checks.check_shape(f"{label} valid", x.valid, ("B", x.tokens.shape[1]), bindings)
    checks.check_dtype(f"{label} valid", x.valid, "bool")
    return bindings
  if jnp.ndim(x) == 3:
    raise ValueError(
        f"{label}: a token sequence must come as an Encoded (tokens with their validity mask); "
        f"got a bare array of shape {tuple(jnp.shape(x))}."
    )
  bindings = checks.check_shape(label, x, ("B", None), bindings)
  checks.check_dtype(label, x, "float")
  return bindings


def validate_inputs(where: str, inputs: FusionInputs, present: Presence) -> dict[str, jax.Array]:
  """Checks `inputs` and `present` against the fusion contract; returns ``bool[B]`` presence per modality.

  Args:
    where: the fusion's name, for errors.
    inputs: ``{modality: [B, D_m] array or Encoded}``.
    present: ``{modality: bool[B]}`` with the keys of `inputs`, or None (every modality present).

  Returns:
    ``{modality: bool[B]}`` in sorted modality order.

  Raises:
    ValueError: naming the modality and what is wrong with it (rank, batch size, dtype, a missing
      or extra presence entry).

  >>> import numpy as np
  >>> validate_inputs("SumFusion", {"image": np.zeros((4, 3), np.float32), "text": np.zeros((3, 5), np.float32)}, None)
  Traceback (most recent call last):
  ...
  ValueError: SumFusion: modality 'text': expected shape (B, ?) with B=4, got (3, 5).
  """
  if not isinstance(inputs, Mapping) or not inputs:
    raise ValueError(f"{where}: inputs must be a non-empty dict {{modality: features}}, got {inputs!r:.80}.")
  names = sorted(inputs)
  if present is not None:
    _check_presence_keys(where, names, present)
  bindings: dict[str, int] = {}
  for name in names:
    bindings = _check_modality(where, name, inputs[name], bindings)
  if present is None:
    return {name: jnp.ones((bindings["B"],), jnp.bool_) for name in names}
  for name in names:
    checks.check_shape(f"{where}: present[{name!r}]", present[name], ("B",), bindings)
    checks.check_dtype(f"{where}: present[{name!r}]", present[name], "bool")
  return {name: jnp.asarray(present[name]) for name in names}


def pooled_inputs(where: str, inputs: FusionInputs, present: Presence, dtype) -> list[PooledInput]:
  """Validated pooled features of every modality, sorted by name, absent rows zeroed.

  An `Encoded` contributes its ``pooled`` features.

  Args:
    where: the fusion's name, for errors.
    inputs: ``{modality: [B, D_m] array or Encoded}``.
    present: ``{modality: bool[B]}`` or None (all present).
    dtype: the dtype the features are cast to.

  Returns:
    One `PooledInput` per modality.

  >>> x = {"b": jnp.ones((2, 3)), "a": jnp.full((2, 1), 7.0)}
  >>> [(m.name, m.features.tolist()) for m in pooled_inputs("f", x, {"a": jnp.array([True, False]),
  ...                                                               "b": jnp.array([True, True])}, jnp.float32)]
  [('a', [[7.0], [0.0]]), ('b', [[1.0, 1.0, 1.0], [1.0, 1.0, 1.0]])]
  """
  presence = validate_inputs(where, inputs, present)
  modalities = []
  for name, here in presence.items():
    x = inputs[name].pooled if isinstance(inputs[name], Encoded) else inputs[name]
    modalities.append(PooledInput(name, jnp.where(here[:, None], jnp.asarray(x, dtype), 0), here))
  return modalities


def token_inputs(where: str, inputs: FusionInputs, present: Presence, dtype) -> list[TokenInput]:
  """Validated token sequences of every modality, sorted by name, padding and absent samples zeroed.

  A pooled ``[B, D]`` array counts as a sequence of one token.

  Args:
    where: the fusion's name, for errors.
    inputs: ``{modality: [B, D_m] array or Encoded}``.
    present: ``{modality: bool[B]}`` or None (all present).
    dtype: the dtype the tokens are cast to.

  Returns:
    One `TokenInput` per modality.

  >>> encoded = Encoded(jnp.ones((1, 2)), jnp.ones((1, 3, 2)), jnp.array([[True, True, False]]))
  >>> [(m.name, m.tokens.shape, m.valid.tolist()) for m in token_inputs("f", {"t": encoded, "v": jnp.ones((1, 4))},
  ...                                                                  None, jnp.float32)]
  [('t', (1, 3, 2), [[True, True, False]]), ('v', (1, 1, 4), [[True]])]
  """
  presence = validate_inputs(where, inputs, present)
  modalities = []
  for name, here in presence.items():
    x = inputs[name]
    tokens, valid = (x.tokens, x.valid) if isinstance(x, Encoded) else (x[:, None, :], jnp.ones((x.shape[0], 1), bool))
    valid = jnp.asarray(valid) & here[:, None]
    modalities.append(TokenInput(name, jnp.where(valid[..., None], jnp.asarray(tokens, dtype), 0), valid, here))
  return modalities


def masked_softmax(logits: jax.Array, valid: jax.Array, axis: int = 0) -> jax.Array:
  """Softmax of `logits` along `axis` over the entries where `valid` holds; exactly 0 elsewhere.

  Where no entry along `axis` is valid, every weight is 0 (nothing to attend to adds nothing).
  Gradients are finite everywhere, whatever the masked logits hold.

  >>> masked_softmax(jnp.array([1.0, 5.0, 1.0]), jnp.array([True, False, True])).tolist()
  [0.5, 0.0, 0.5]
  >>> masked_softmax(jnp.array([1.0, 5.0]), jnp.array([False, False])).tolist()
  [0.0, 0.0]
  """
  valid = jnp.broadcast_to(valid, logits.shape)
  weights = jax.nn.softmax(jnp.where(valid, logits, jnp.finfo(logits.dtype).min), axis=axis)
  return jnp.where(valid, weights, 0)


def mean_over_present(values: jax.Array, present: jax.Array) -> jax.Array:
  """Mean of ``values[M, B, ...]`` over the modalities ``m`` with ``present[m, b]``; 0 where none is.

  >>> mean_over_present(jnp.array([[2.0], [4.0]]), jnp.array([[True], [True]])).tolist()
  [3.0]
  >>> mean_over_present(jnp.array([[2.0], [4.0]]), jnp.array([[False], [False]])).tolist()
  [0.0]
  """
  weights = present.reshape(present.shape + (1,) * (values.ndim - present.ndim)).astype(values.dtype)
  return jnp.sum(jnp.where(weights > 0, values, 0), axis=0) / jnp.maximum(jnp.sum(weights, axis=0), 1)


def check_modality_count(where: str, names: list[str], minimum: int, maximum: int | None = None) -> None:
  """Raises a `ValueError` when a fusion gets fewer than `minimum` (or more than `maximum`) modalities."""
  if len(names) < minimum or (maximum is not None and len(names) > maximum):
    wanted = f"exactly {minimum}" if maximum == minimum else f"at least {minimum}"
    raise ValueError(f"{where}: needs {wanted} modalities, got {len(names)}: {names}.")


def check_heads(where: str, width: int, num_heads: int) -> None:
  """Raises a `ValueError` unless `width` divides into `num_heads` attention heads."""
  if num_heads < 1 or width % num_heads:
    raise ValueError(f"{where}: width {width} does not divide into num_heads={num_heads} heads.")


class AbsentEmbedding(nn.Module):
  """Replaces the features of absent samples by a learned vector, so that absence is distinguishable.

  Attributes:
    dtype: computation dtype (the embedding parameter stays float32).

  >>> layer = AbsentEmbedding()
  >>> x, present = jnp.ones((2, 3)), jnp.array([True, False])
  >>> variables = layer.init(jax.random.key(0), x, present)
  >>> out = layer.apply(variables, x, present)
  >>> bool((out[0] == 1).all()), bool((out[1] == variables["params"]["embedding"]).all())
  (True, True)
  """

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, present: jax.Array) -> jax.Array:
    # Small, like a learned token embedding: close to zero-filling at initialisation.
    embedding = self.param("embedding", nn.initializers.normal(0.02), (x.shape[-1],), jnp.float32)
    return jnp.where(present[:, None], x.astype(self.dtype), embedding.astype(self.dtype))


class Fusion(nn.Module):
  """Base class of the fusion modules (see `mmjax.fusion` for the contract).

  Subclasses declare ``features`` and ``dtype`` attributes and implement
  ``__call__(inputs, present=None, *, train=False) -> [B, features]``.

  Class attributes:
    needs_tokens: the fusion reads token sequences; a model asks its encoders for them
      (``return_tokens=True``) only then.
    outputs_predictions: the output is already combined class log-probabilities (``features`` is the
      number of classes), so a classifier puts no head on it.
    modality_count: the fewest and the most (None: any number) modalities it fuses; configs are
      checked against it before any data is read.
  """

  needs_tokens: ClassVar[bool] = False
  outputs_predictions: ClassVar[bool] = False
  modality_count: ClassVar[tuple[int, int | None]] = (1, None)

  def check_modality_count(self, names: list[str]) -> None:
    """Raises a `ValueError` unless `names` are as many modalities as ``modality_count`` allows."""
    check_modality_count(type(self).__name__, names, *self.modality_count)

  def pooled(self, inputs: FusionInputs, present: Presence) -> list[PooledInput]:
    """`pooled_inputs` for this fusion (its name in errors, its dtype)."""
    return pooled_inputs(type(self).__name__, inputs, present, self.dtype)

  def tokens(self, inputs: FusionInputs, present: Presence) -> list[TokenInput]:
    """`token_inputs` for this fusion (its name in errors, its dtype)."""
    return token_inputs(type(self).__name__, inputs, present, self.dtype)
