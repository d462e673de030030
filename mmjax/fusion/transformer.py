"""Transformers over the tokens of all modalities: one joint stream, or per-modality streams that share
a few bottleneck tokens.

Each modality's tokens are projected to the model width by a projection of their own. Positions
within a modality are the encoders' business (their tokens carry them); these modules add no
position embeddings, only, in the single stream, a learned embedding per modality.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax import normalization
from mmjax.encoders.transformer import TransformerBlock
from mmjax.fusion.base import Fusion, FusionInputs, Presence, check_heads, mean_over_present


def _learned_tokens(module: nn.Module, name: str, count: int, width: int, batch: int, dtype) -> jax.Array:
  """``[batch, count, width]``: `count` learned tokens shared by every sample (call in a compact module)."""
  tokens = module.param(name, nn.initializers.normal(0.02), (count, width), jnp.float32)
  return jnp.broadcast_to(tokens.astype(dtype), (batch, count, width))


def _self_attention_mask(valid: jax.Array) -> jax.Array:
  return nn.make_attention_mask(valid, valid)


class MultimodalTransformer(Fusion):
  """Single-stream multimodal transformer: a learned [CLS] token and the tokens of every modality,
  each with its modality's learned embedding, through pre-LN transformer blocks.

  Padding and absent modalities are masked out of attention, so they cannot reach the [CLS] token,
  whose final state (layer-normalised and projected) is the output.

  Attributes:
    features: output dimension.
    width: model width.
    depth: transformer blocks.
    num_heads: attention heads.
    mlp_ratio: hidden width of each block's MLP relative to `width`.
    dropout_rate: dropout in attention and residual branches (training only).
    dtype: computation dtype (parameters stay float32).

  References:
    MultiBench's early-fusion transformer (Liang et al. 2021); Li et al., "VisualBERT", 2019, and
    Chen et al., "UNITER", ECCV 2020 (single-stream models with modality/segment embeddings).

  >>> from mmjax.encoders.base import Encoded
  >>> fusion = MultimodalTransformer(features=4, width=8, depth=1, num_heads=2)
  >>> inputs = {"audio": Encoded(jnp.ones((2, 3)), jnp.ones((2, 7, 3)), jnp.ones((2, 7), bool)),
  ...           "label": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  needs_tokens = True

  features: int
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    check_heads("MultimodalTransformer", self.width, self.num_heads)
    modalities = self.tokens(inputs, present)
    batch = modalities[0].tokens.shape[0]
    # No projection bias: the modality embedding is each modality's offset.
    sequences = [_learned_tokens(self, "cls", 1, self.width, batch, self.dtype)]
    for m in modalities:
      embedding = self.param(f"{m.name}_embedding", nn.initializers.normal(0.02), (self.width,), jnp.float32)
      projected = linear.Dense(self.width, use_bias=False, dtype=self.dtype, name=f"{m.name}_projection")(m.tokens)
      sequences.append(projected + embedding.astype(self.dtype))
    x = jnp.concatenate(sequences, axis=1)
    mask = _self_attention_mask(jnp.concatenate([jnp.ones((batch, 1), bool)] + [m.valid for m in modalities], axis=1))
    for layer in range(self.depth):
      x = TransformerBlock(self.num_heads, self.mlp_ratio, self.dropout_rate, self.dtype, name=f"block{layer}")(
          x, mask, train
      )
    cls = normalization.LayerNorm(dtype=self.dtype, name="final_norm")(x[:, 0])
    return linear.Dense(self.features, dtype=self.dtype, name="projection")(cls)


class BottleneckFusion(Fusion):
  """Attention bottlenecks (MBT): per-modality transformer streams that exchange information only
  through a few shared fusion tokens, from layer `fusion_layer` on.

  Each stream is a learned [CLS] token and its modality's tokens, with blocks of its own. Before
  `fusion_layer` the streams are independent; from it on, every stream attends over its tokens and
  the ``num_bottlenecks`` shared tokens, and the shared tokens become the mean, over the present
  modalities, of the streams' updates of them (unchanged when none is present). The output is the
  mean over the present modalities of each stream's final [CLS] state (layer-normalised), projected.

  Attributes:
    features: output dimension.
    width: model width.
    depth: layers per stream.
    fusion_layer: the first layer (0-based) with bottleneck tokens; ``0 <= fusion_layer < depth``.
    num_bottlenecks: shared fusion tokens (4 in the paper).
    num_heads: attention heads.
    mlp_ratio: hidden width of each block's MLP relative to `width`.
    dropout_rate: dropout in attention and residual branches (training only).
    dtype: computation dtype (parameters stay float32).

  References:
    Nagrani, Yang, Arnab, Jansen, Schmid and Sun, "Attention Bottlenecks for Multimodal Fusion",
    NeurIPS 2021.

  >>> from mmjax.encoders.base import Encoded
  >>> fusion = BottleneckFusion(features=4, width=8, depth=2, fusion_layer=1, num_bottlenecks=2, num_heads=2)
  >>> inputs = {"audio": Encoded(jnp.ones((2, 3)), jnp.ones((2, 7, 3)), jnp.ones((2, 7), bool)),
  ...           "image": Encoded(jnp.ones((2, 5)), jnp.ones((2, 4, 5)), jnp.ones((2, 4), bool))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  needs_tokens = True

  features: int
  width: int = 64
  depth: int = 4
  fusion_layer: int = 2
  num_bottlenecks: int = 4
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    check_heads("BottleneckFusion", self.width, self.num_heads)
    if not 0 <= self.fusion_layer < self.depth:
      raise ValueError(f"BottleneckFusion: fusion_layer must be in [0, depth={self.depth}), got {self.fusion_layer}.")
    if self.num_bottlenecks < 1:
      raise ValueError(f"BottleneckFusion: num_bottlenecks must be at least 1, got {self.num_bottlenecks}.")
    modalities = self.tokens(inputs, present)
    batch = modalities[0].tokens.shape[0]
    here = jnp.stack([m.present for m in modalities])
    streams, valid = [], []
    for m in modalities:
      projected = linear.Dense(self.width, dtype=self.dtype, name=f"{m.name}_projection")(m.tokens)
      cls = _learned_tokens(self, f"{m.name}_cls", 1, self.width, batch, self.dtype)
      streams.append(jnp.concatenate([cls, projected], axis=1))
      valid.append(jnp.concatenate([jnp.ones((batch, 1), bool), m.valid], axis=1))
    bottleneck = _learned_tokens(self, "bottleneck", self.num_bottlenecks, self.width, batch, self.dtype)
    with_bottleneck = [
        _self_attention_mask(jnp.pad(v, ((0, 0), (0, self.num_bottlenecks)), constant_values=True)) for v in valid
    ]
    for layer in range(self.depth):
      blocks = [
          TransformerBlock(self.num_heads, self.mlp_ratio, self.dropout_rate, self.dtype, name=f"{m.name}_block{layer}")
          for m in modalities
      ]
      if layer < self.fusion_layer:
        streams = [block(x, _self_attention_mask(v), train) for block, x, v in zip(blocks, streams, valid)]
        continue
      joint = [
          block(jnp.concatenate([x, bottleneck], axis=1), mask, train)
          for block, x, mask in zip(blocks, streams, with_bottleneck)
      ]
      streams = [y[:, : -self.num_bottlenecks] for y in joint]
      updates = jnp.stack([y[:, -self.num_bottlenecks:] for y in joint])
      bottleneck = jnp.where(jnp.any(here, axis=0)[:, None, None], mean_over_present(updates, here), bottleneck)
    cls = jnp.stack(
        [normalization.LayerNorm(dtype=self.dtype, name=f"{m.name}_norm")(x[:, 0]) for m, x in zip(modalities, streams)]
    )
    return linear.Dense(self.features, dtype=self.dtype, name="projection")(mean_over_present(cls, here))
