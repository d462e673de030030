"""Late fusion: one classifier head per modality, their predictions combined over the present modalities."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.fusion.base import Fusion, FusionInputs, Presence, masked_softmax

# How the per-modality log-probabilities are combined.
COMBINATIONS = ("mean", "learned", "vote")


class LateFusion(Fusion):
  """Per-modality linear classifiers whose log-probabilities are combined over the present modalities.

  Its output holds class log-probabilities (`outputs_predictions`): ``features`` is the number of
  classes and a classifier puts no head on it; use the output as logits of a cross-entropy.

  ``combine`` chooses how the per-modality log-probabilities ``log p_m`` are combined:

  * ``"mean"``: their mean, renormalised (a normalised geometric mean of the predictions);
  * ``"learned"``: as ``"mean"`` with learned weights, a softmax over the present modalities of one
    learned logit per modality (equal weights at initialisation);
  * ``"vote"``: at inference (``train=False``), majority voting: each present modality votes for its
    most likely class, and the ``"mean"`` distribution adds one vote split over the classes, which
    breaks ties and keeps every log-probability finite: ``p = (votes + p_mean) / (present + 1)``.
    Votes have no gradient, so training (``train=True``) uses ``"mean"``.

  A sample with no modality present gets the uniform distribution.

  Attributes:
    features: the number of classes.
    combine: one of `COMBINATIONS`.
    dtype: computation dtype of the heads (parameters stay float32; combining is done in float32).

  References:
    Baltrušaitis, Ahuja and Morency, "Multimodal Machine Learning: A Survey and Taxonomy", 2018
    (late fusion); TorchMultimodal's ``LateFusion``.

  >>> fusion = LateFusion(features=3, combine="vote")
  >>> inputs = {"image": jnp.ones((2, 4)), "text": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> log_probs = fusion.apply(variables, inputs)
  >>> log_probs.shape, bool(jnp.allclose(jnp.exp(log_probs).sum(-1), 1.0))
  ((2, 3), True)
  """

  outputs_predictions = True

  features: int
  combine: str = "mean"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    if self.combine not in COMBINATIONS:
      raise ValueError(f"LateFusion: unknown combine {self.combine!r}; valid choices: {list(COMBINATIONS)}.")
    modalities = self.pooled(inputs, present)
    logits = [linear.Dense(self.features, dtype=self.dtype, name=f"{m.name}_head")(m.features) for m in modalities]
    log_probs = jax.nn.log_softmax(jnp.stack(logits).astype(jnp.float32))
    here = jnp.stack([m.present for m in modalities])
    if self.combine == "learned":
      logits = self.param("combination_logits", nn.initializers.zeros, (len(modalities),), jnp.float32)
      weights = masked_softmax(jnp.broadcast_to(logits[:, None], here.shape), here, axis=0)
    else:
      weights = here / jnp.maximum(jnp.sum(here, axis=0), 1)
    combined = jax.nn.log_softmax(jnp.sum(weights[..., None] * log_probs, axis=0))
    if self.combine == "vote" and not train:
      votes = jnp.sum(jnp.where(here[..., None], jax.nn.one_hot(jnp.argmax(log_probs, -1), self.features), 0), axis=0)
      # log((votes + p_mean) / (present + 1)), in log space: votes of 0 add nothing.
      combined = jnp.logaddexp(jnp.log(votes), combined) - jnp.log1p(jnp.sum(here, axis=0))[:, None]
    return combined.astype(self.dtype)
