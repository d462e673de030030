"""Fusions of pooled features: concatenation (early fusion), sum and mean pooling, attention weights.

Sum, mean and attention fusion give every modality its own projection to a common width and then
treat the modalities as a set: relabelling the modalities together with their projections leaves
the output unchanged. Early fusion concatenates in sorted modality order.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.fusion.base import (
    AbsentEmbedding,
    Fusion,
    FusionInputs,
    PooledInput,
    Presence,
    masked_softmax,
    mean_over_present,
)


class EarlyFusion(Fusion):
  """Concatenation of every modality's features followed by a linear projection.

  An absent modality's features are replaced by a learned per-modality "absent" embedding (zeros
  would be indistinguishable from a real zero vector).

  Attributes:
    features: output dimension.
    dtype: computation dtype (parameters stay float32).

  References:
    Baltrušaitis, Ahuja and Morency, "Multimodal Machine Learning: A Survey and Taxonomy", 2018
    (early fusion); MultiBench's ``Concat`` (Liang et al. 2021).

  >>> fusion = EarlyFusion(features=4)
  >>> inputs = {"image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
  >>> present = {"image": jnp.array([True, True]), "text": jnp.array([True, False])}
  >>> variables = fusion.init(jax.random.key(0), inputs, present)
  >>> fusion.apply(variables, inputs, present).shape
  (2, 4)
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    del train  # no dropout
    filled = [
        AbsentEmbedding(self.dtype, name=f"{m.name}_absent")(m.features, m.present) for m in self.pooled(inputs, present)
    ]
    return linear.Dense(self.features, dtype=self.dtype, name="projection")(jnp.concatenate(filled, axis=-1))


def _project_each(modalities: list[PooledInput], features: int, dtype) -> jax.Array:
  """``[M, B, features]``: every modality through its own linear projection (call inside a compact module)."""
  return jnp.stack([linear.Dense(features, dtype=dtype, name=f"{m.name}_projection")(m.features) for m in modalities])


class SumFusion(Fusion):
  """Sum over the present modalities of per-modality linear projections to a common width.

  Attributes:
    features: output dimension (the common width).
    dtype: computation dtype (parameters stay float32).

  References:
    Zaheer et al., "Deep Sets", 2017 (sum pooling); TorchMultimodal's ``DeepsetFusionModule``.

  >>> fusion = SumFusion(features=4)
  >>> inputs = {"image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
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
    return self.reduce(_project_each(modalities, self.features, self.dtype), jnp.stack([m.present for m in modalities]))

  def reduce(self, projected: jax.Array, present: jax.Array) -> jax.Array:
    """Combines ``projected[M, B, F]`` over the modalities present (``present[M, B]``)."""
    return jnp.sum(jnp.where(present[..., None], projected, 0), axis=0)


class MeanFusion(SumFusion):
  """Mean over the present modalities of per-modality linear projections to a common width.

  A sample with no modality present gives zeros.

  Attributes:
    features: output dimension (the common width).
    dtype: computation dtype (parameters stay float32).

  References:
    Zaheer et al., "Deep Sets", 2017 (mean pooling); TorchMultimodal's ``DeepsetFusionModule``.

  >>> fusion = MeanFusion(features=4)
  >>> inputs = {"image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  def reduce(self, projected: jax.Array, present: jax.Array) -> jax.Array:
    """Averages ``projected[M, B, F]`` over the modalities present (``present[M, B]``)."""
    return mean_over_present(projected, present)


class AttentionFusion(Fusion):
  """Softmax-weighted sum of per-modality projections, the weights masked to the present modalities.

  Each modality's projection ``p_m`` is scored by one network shared by all modalities,
  ``s_m = vᵀ tanh(W p_m + b)``, so the weights depend on what the modalities say, not on their order;
  ``fused = Σ_m softmax(s)_m p_m`` over the present modalities (zeros when none is present).

  Attributes:
    features: output dimension (the common width).
    dtype: computation dtype (parameters stay float32).

  References:
    TorchMultimodal's ``AttentionFusionModule``; Bahdanau, Cho and Bengio 2015 (additive scores).

  >>> fusion = AttentionFusion(features=4)
  >>> inputs = {"image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
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
    projected = _project_each(modalities, self.features, self.dtype)
    hidden = jnp.tanh(linear.Dense(self.features, dtype=self.dtype, name="score_hidden")(projected))
    scores = linear.Dense(1, dtype=self.dtype, name="score")(hidden)[..., 0]
    weights = masked_softmax(scores, jnp.stack([m.present for m in modalities]), axis=0)
    return jnp.sum(weights[..., None] * projected, axis=0)
