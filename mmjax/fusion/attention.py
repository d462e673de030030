"""Cross-modal attention between token sequences: directional (MulT) and co-attention streams.

Every modality keeps its own stream of tokens. In each layer a stream's tokens query the tokens of
the other modalities (`CrossAttention`: queries from the target, keys and values from the source),
then attend to themselves (`mmjax.encoders.TransformerBlock`). Padding and absent modalities are
masked out of every attention; a stream whose sources are all absent is left unchanged by the
cross-attention. The fused vector is the mean, over the present modalities, of each stream's mean
over its valid tokens, projected to ``features``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax import normalization
from mmjax.encoders import layers
from mmjax.encoders.transformer import TransformerBlock
from mmjax.fusion.base import Fusion, FusionInputs, Presence, check_heads, mean_over_present


class CrossAttention(nn.Module):
  """Pre-LayerNorm residual cross-attention: ``target + attention(ln(target), ln(source))``.

  Queries come from `target`, keys and values from the valid positions of `source` (what padding
  holds never matters). Every target position is updated, padding included (a caller ignores its
  padding); a sample whose source has no valid position gets no update (rather than an average of
  padding).

  Attributes:
    num_heads: attention heads (the width must divide by it).
    dropout_rate: dropout on the attention weights and the residual branch (training only).
    dtype: computation dtype (parameters stay float32).

  >>> layer = CrossAttention(num_heads=2)
  >>> target, source, source_valid = jnp.ones((1, 5, 8)), jnp.ones((1, 3, 8)), jnp.array([[True, True, False]])
  >>> variables = layer.init(jax.random.key(0), target, source, source_valid)
  >>> out, state = layer.apply(variables, target, source, source_valid, sow_weights=True, mutable=["intermediates"])
  >>> out.shape, state["intermediates"]["attention"]["attention_weights"][0].shape  # [B, heads, T_target, T_source]
  ((1, 5, 8), (1, 2, 5, 3))
  """

  num_heads: int
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(
      self,
      target: jax.Array,
      source: jax.Array,
      source_valid: jax.Array,
      *,
      train: bool = False,
      sow_weights: bool = False,
  ) -> jax.Array:
    """Updates ``target[B, T, W]`` from ``source[B, S, W]`` whose valid positions are ``source_valid bool[B, S]``.

    With `sow_weights`, the attention weights ``[B, heads, T, S]`` are sown into the
    ``intermediates`` collection (``["attention"]["attention_weights"]``).
    """
    queries = normalization.LayerNorm(dtype=self.dtype, name="target_norm")(target)
    # Zeroed, because a masked weight of 0 times a non-finite value would still be NaN.
    keys = normalization.LayerNorm(dtype=self.dtype, name="source_norm")(jnp.where(source_valid[..., None], source, 0))
    update = linear.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, dropout_rate=self.dropout_rate, name="attention"
    )(queries, keys, mask=source_valid[:, None, None, :], deterministic=not train, sow_weights=sow_weights)
    update = jnp.where(jnp.any(source_valid, axis=-1)[:, None, None], update, 0)
    return target + nn.Dropout(self.dropout_rate)(update, deterministic=not train)


class _CrossStreamFusion(Fusion):
  """Per-modality streams updated by cross-attention to the other streams, then self-attention."""

  needs_tokens = True
  modality_count = (2, None)

  features: int
  width: int = 64
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout_rate: float = 0.0
  dtype: jnp.dtype = jnp.float32

  def key_streams(self, projected: list[jax.Array], current: list[jax.Array]) -> list[jax.Array]:
    """The tokens each layer's cross-attention reads keys and values from (one entry per modality)."""
    raise NotImplementedError

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    where = type(self).__name__
    check_heads(where, self.width, self.num_heads)
    modalities = self.tokens(inputs, present)
    self.check_modality_count([m.name for m in modalities])
    projected = [linear.Dense(self.width, dtype=self.dtype, name=f"{m.name}_projection")(m.tokens) for m in modalities]
    streams = projected
    for layer in range(self.depth):
      sources = self.key_streams(projected, streams)
      updated = []
      for index, modality in enumerate(modalities):
        others = [j for j in range(len(modalities)) if j != index]
        x = CrossAttention(self.num_heads, self.dropout_rate, self.dtype, name=f"{modality.name}_cross{layer}")(
            streams[index],
            jnp.concatenate([sources[j] for j in others], axis=1),
            jnp.concatenate([modalities[j].valid for j in others], axis=1),
            train=train,
        )
        block = TransformerBlock(
            self.num_heads, self.mlp_ratio, self.dropout_rate, self.dtype, name=f"{modality.name}_self{layer}"
        )
        updated.append(block(x, nn.make_attention_mask(modality.valid, modality.valid), train))
      streams = updated
    pooled = jnp.stack([
        layers.masked_mean(normalization.LayerNorm(dtype=self.dtype, name=f"{m.name}_norm")(x), m.valid)
        for m, x in zip(modalities, streams)
    ])
    fused = mean_over_present(pooled, jnp.stack([m.present for m in modalities]))
    return linear.Dense(self.features, dtype=self.dtype, name="projection")(fused)


class CrossModalTransformer(_CrossStreamFusion):
  """Directional cross-modal transformer (MulT): every layer of a modality's stream attends to the
  other modalities' input tokens (after their projection to `width`), then to itself.

  Keys and values stay the sources' low-level features at every layer, as in MulT, so each target
  stream repeatedly re-reads the unprocessed sources. Where MulT runs one cross-modal stream per
  (source, target) pair, here each target attends to the concatenation of all other modalities'
  tokens (the same thing for two modalities).

  Attributes:
    features: output dimension.
    width: stream width.
    depth: layers (each a cross-attention and a self-attention block per stream).
    num_heads: attention heads.
    mlp_ratio: hidden width of each block's MLP relative to `width`.
    dropout_rate: dropout in attention and residual branches (training only).
    dtype: computation dtype (parameters stay float32).

  References:
    Tsai, Bai, Liang, Kolter, Morency and Salakhutdinov, "Multimodal Transformer for Unaligned
    Multimodal Language Sequences", ACL 2019.

  >>> from mmjax.encoders.base import Encoded
  >>> fusion = CrossModalTransformer(features=4, width=8, depth=1, num_heads=2)
  >>> text = Encoded(jnp.ones((2, 6)), jnp.ones((2, 5, 6)), jnp.array([[True] * 5, [True] * 2 + [False] * 3]))
  >>> inputs = {"audio": Encoded(jnp.ones((2, 3)), jnp.ones((2, 7, 3)), jnp.ones((2, 7), bool)), "text": text}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  def key_streams(self, projected: list[jax.Array], current: list[jax.Array]) -> list[jax.Array]:
    """The sources' projected input tokens, at every layer."""
    del current
    return projected


class CoAttentionFusion(_CrossStreamFusion):
  """Co-attention: in every layer each modality's stream attends to the other streams' current tokens,
  all streams updated in parallel, then to itself.

  Attributes:
    features: output dimension.
    width: stream width.
    depth: layers (each a cross-attention and a self-attention block per stream).
    num_heads: attention heads.
    mlp_ratio: hidden width of each block's MLP relative to `width`.
    dropout_rate: dropout in attention and residual branches (training only).
    dtype: computation dtype (parameters stay float32).

  References:
    Lu, Batra, Parikh and Lee, "ViLBERT: Pretraining Task-Agnostic Visiolinguistic Representations
    for Vision-and-Language Tasks", NeurIPS 2019 (co-attentional transformer layers).

  >>> from mmjax.encoders.base import Encoded
  >>> fusion = CoAttentionFusion(features=4, width=8, depth=1, num_heads=2)
  >>> inputs = {"audio": Encoded(jnp.ones((2, 3)), jnp.ones((2, 7, 3)), jnp.ones((2, 7), bool)),
  ...           "text": jnp.ones((2, 6))}  # a pooled input is one token
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  def key_streams(self, projected: list[jax.Array], current: list[jax.Array]) -> list[jax.Array]:
    """The other streams' tokens as the previous layer left them."""
    del projected
    return current
