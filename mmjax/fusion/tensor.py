"""Tensor fusion (outer product of the ``[x_m; 1]`` vectors) and its low-rank factorisation.

Both append a constant 1 to every modality's features, so the fused tensor holds every
interaction order: each modality alone, every pair, …, all of them together. An absent modality's
features are replaced by a learned per-modality "absent" embedding.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.fusion.base import AbsentEmbedding, Fusion, FusionInputs, PooledInput, Presence


def _with_one(modality: PooledInput, dtype) -> jax.Array:
  """``[B, D + 1]``: the modality's features (absent ones replaced) with a 1 appended (call in a compact module)."""
  x = AbsentEmbedding(dtype, name=f"{modality.name}_absent")(modality.features, modality.present)
  return jnp.concatenate([x, jnp.ones((x.shape[0], 1), x.dtype)], axis=-1)


class TensorFusion(Fusion):
  """Tensor fusion network (TFN): the flattened outer product ``⊗_m [x_m; 1]``, then a projection.

  The outer product has ``Π_m (D_m + 1)`` entries (the first modality in sorted order varies
  slowest); its all-ones entry makes a separate bias redundant, so the projection has none. Keep the
  widths small: the projection has ``features · Π_m (D_m + 1)`` weights.

  Attributes:
    features: output dimension.
    dtype: computation dtype (parameters stay float32).

  References:
    Zadeh, Chen, Poria, Cambria and Morency, "Tensor Fusion Network for Multimodal Sentiment
    Analysis", EMNLP 2017.

  >>> fusion = TensorFusion(features=4)
  >>> inputs = {"image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape, variables["params"]["projection"]["kernel"].shape
  ((2, 4), (24, 4))
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    del train  # no dropout
    modalities = self.pooled(inputs, present)
    product = jnp.ones((modalities[0].features.shape[0], 1), self.dtype)
    for modality in modalities:
      augmented = _with_one(modality, self.dtype)
      product = (product[:, :, None] * augmented[:, None, :]).reshape(product.shape[0], -1)
    return linear.Dense(self.features, use_bias=False, dtype=self.dtype, name="projection")(product)


class LowRankFusion(Fusion):
  """Low-rank multimodal fusion (LMF): ``fused = Σ_r Π_m (W_m^r [x_m; 1])``.

  Equals `TensorFusion` whose projection weight tensor is the rank-`rank` sum
  ``W[i_1, …, i_M, f] = Σ_r Π_m W_m^r[i_m, f]``, at a cost linear rather than exponential in the
  number of modalities. Parameters: one ``[rank, D_m + 1, features]`` factor per modality.

  Attributes:
    features: output dimension.
    rank: number of rank-one terms (4 is typical).
    dtype: computation dtype (parameters stay float32).

  References:
    Liu, Shen, Lakshminarasimhan, Liang, Zadeh and Morency, "Efficient Low-rank Multimodal Fusion
    with Modality-Specific Factors", ACL 2018.

  >>> fusion = LowRankFusion(features=4, rank=2)
  >>> inputs = {"image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape, variables["params"]["text_factors"].shape
  ((2, 4), (2, 6, 4))
  """

  features: int
  rank: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    del train  # no dropout
    modalities = self.pooled(inputs, present)
    # Each factor's projection has unit variance, so their product does too, whatever the modality count.
    init = nn.initializers.lecun_normal(in_axis=1, out_axis=2, batch_axis=(0,))
    fused = jnp.ones((modalities[0].features.shape[0], self.rank, self.features), self.dtype)
    for modality in modalities:
      augmented = _with_one(modality, self.dtype)
      shape = (self.rank, augmented.shape[-1], self.features)
      factors = self.param(f"{modality.name}_factors", init, shape, jnp.float32)
      fused = fused * jnp.einsum("bd,rdf->brf", augmented, factors.astype(self.dtype))
    return jnp.sum(fused, axis=1)
