"""Gated multimodal units: per-modality hidden features mixed by gates computed from all modalities."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.fusion.base import Fusion, FusionInputs, PooledInput, Presence, masked_softmax


def _hidden(modalities: list[PooledInput], features: int, dtype) -> jax.Array:
  """``[M, B, features]``: ``h_m = tanh(W_m x_m + b_m)`` (call inside a compact module)."""
  return jnp.stack([
      jnp.tanh(linear.Dense(features, dtype=dtype, name=f"{m.name}_hidden")(m.features)) for m in modalities
  ])


def _gated_sum(hidden: jax.Array, gate_logits: jax.Array, present: jax.Array) -> jax.Array:
  """``Σ_m g_m ⊙ h_m`` with gates ``g = softmax_m(gate_logits)`` over the present modalities.

  A sample with one modality present takes that modality's ``h``; one with none gives zeros.
  """
  return jnp.sum(masked_softmax(gate_logits, present[..., None], axis=0) * hidden, axis=0)


class GatedMultimodalUnit(Fusion):
  """The gated multimodal unit (GMU) of two modalities.

  ``h_m = tanh(W_m x_m)``, ``z = σ(W_z [x_1; x_2])``, ``h = z ⊙ h_1 + (1 − z) ⊙ h_2``, modalities in
  sorted name order, biases included. When one modality is absent the gate opens fully to the other
  (``σ(a)`` is the softmax of ``(a, 0)``, masked to the present modalities); with both absent the
  output is zero.

  Attributes:
    features: output dimension.
    dtype: computation dtype (parameters stay float32).

  References:
    Arevalo, Solorio, Montes-y-Gómez and González, "Gated Multimodal Units for Information Fusion",
    ICLR workshop 2017.

  >>> fusion = GatedMultimodalUnit(features=4)
  >>> inputs = {"image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  modality_count = (2, 2)

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    del train  # no dropout
    modalities = self.pooled(inputs, present)
    self.check_modality_count([m.name for m in modalities])
    gate = linear.Dense(self.features, dtype=self.dtype, name="gate")(jnp.concatenate([m.features for m in modalities], -1))
    return _gated_sum(
        _hidden(modalities, self.features, self.dtype),
        jnp.stack([gate, jnp.zeros_like(gate)]),
        jnp.stack([m.present for m in modalities]),
    )


class GatedFusion(Fusion):
  """The gated multimodal unit generalised to N modalities with softmax gates over the modalities.

  ``h_m = tanh(W_m x_m)``, ``g = softmax_m(W_z [x_1; …; x_M])`` per output feature, taken over the
  present modalities, ``h = Σ_m g_m ⊙ h_m``. A sample with no modality present gives zeros.

  Attributes:
    features: output dimension.
    dtype: computation dtype (parameters stay float32).

  References:
    Arevalo, Solorio, Montes-y-Gómez and González, "Gated Multimodal Units for Information Fusion",
    ICLR workshop 2017 (the N-modality GMU, here with softmax instead of independent sigmoid gates,
    so the gates sum to one over the present modalities).

  >>> fusion = GatedFusion(features=4)
  >>> inputs = {"audio": jnp.ones((2, 2)), "image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    del train  # no dropout
    modalities = self.pooled(inputs, present)
    count = len(modalities)
    gates = linear.Dense(count * self.features, dtype=self.dtype, name="gate")(
        jnp.concatenate([m.features for m in modalities], -1)
    )
    gate_logits = jnp.moveaxis(gates.reshape(gates.shape[0], count, self.features), 1, 0)
    return _gated_sum(
        _hidden(modalities, self.features, self.dtype), gate_logits, jnp.stack([m.present for m in modalities])
    )
