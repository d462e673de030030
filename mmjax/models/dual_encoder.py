"""Dual (two-tower) encoder: one encoder per modality into a shared, normalised embedding space."""

import math
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.numerics import l2_normalize


class DualEncoder(nn.Module):
  """Encodes a dict of modalities into L2-normalised embeddings of one shared size.

  Besides the encoders it holds the contrastive temperature as a learnable scalar
  ``log_scale`` and, when `init_bias` is given, a learnable logit ``bias`` (SigLIP).

  Attributes:
    encoders: one module per modality, each mapping its input to ``[B, D]`` features.
    input_shapes: optional per-example shape of every modality; inputs are checked against it.
    init_log_scale: initial logarithm of the logit scale (CLIP: ``log(1/0.07)``, SigLIP: ``log 10``).
    init_bias: initial logit bias (SigLIP: -10); None for no bias parameter.

  >>> from mmjax.encoders import ConvEncoder, RecurrentTextEncoder
  >>> model = DualEncoder(
  ...     encoders={"image": ConvEncoder(8, (4,), (1,)), "text": RecurrentTextEncoder(8, vocab_size=10, width=4)},
  ...     input_shapes={"image": (8, 8, 1), "text": (5,)})
  >>> inputs = {"image": jnp.zeros((2, 8, 8, 1)), "text": jnp.ones((2, 5), jnp.int32)}
  >>> variables = model.init(jax.random.key(0), inputs)
  >>> {k: v.shape for k, v in model.apply(variables, inputs).items()}
  {'image': (2, 8), 'text': (2, 8)}
  >>> try:
  ...   model.apply(variables, {"image": jnp.zeros((2, 8, 8))})
  ... except ValueError as error:
  ...   print(error)
  DualEncoder: modality 'image': expected shape (B, 8, 8, 1), got (2, 8, 8).
  """

  encoders: Mapping[str, nn.Module]
  input_shapes: Mapping[str, tuple[int, ...]] | None = None
  init_log_scale: float = math.log(1 / 0.07)
  init_bias: float | None = None

  def setup(self):
    self.log_scale = self.param("log_scale", nn.initializers.constant(self.init_log_scale), (), jnp.float32)
    if self.init_bias is not None:
      self.bias = self.param("bias", nn.initializers.constant(self.init_bias), (), jnp.float32)

  def encode(self, modality: str, x: jax.Array, *, train: bool = False) -> jax.Array:
    """``[B, D]`` unit-norm embeddings of one modality."""
    if modality not in self.encoders:
      raise ValueError(f"DualEncoder: unknown modality {modality!r}; valid modalities: {sorted(self.encoders)}.")
    if self.input_shapes is not None:
      checks.check_shape(f"DualEncoder: modality {modality!r}", x, ("B", *self.input_shapes[modality]))
    return l2_normalize(self.encoders[modality](x, train=train).astype(jnp.float32))

  def __call__(self, inputs: Mapping[str, jax.Array], *, train: bool = False) -> dict[str, jax.Array]:
    """Embeds every modality in `inputs` (a subset of the encoders' modalities is allowed)."""
    unknown = sorted(set(inputs) - set(self.encoders))
    if unknown:
      raise ValueError(f"DualEncoder: unknown modalities {unknown}; valid modalities: {sorted(self.encoders)}.")
    sizes = {modality: x.shape[0] if x.ndim else None for modality, x in inputs.items()}
    if len(set(sizes.values())) > 1:
      raise ValueError(f"DualEncoder: modalities disagree on the batch size: {sizes}.")
    return {modality: self.encode(modality, x, train=train) for modality, x in inputs.items()}
