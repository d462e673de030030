"""Text encoders over ``int32[B, L]`` token ids, padding marked by `pad_id`."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.encoders import layers
from mmjax.encoders.transformer import TransformerBlock


def _check_tokens(where: str, tokens: jax.Array) -> None:
  checks.check_shape(f"{where}: tokens", tokens, (None, None))
  checks.check_dtype(f"{where}: tokens", tokens, "int")


class TransformerTextEncoder(nn.Module):
  """Token and learned position embeddings, pre-LN transformer blocks, pooling, projection.

  Attributes:
    features: output dimension.
    vocab_size: number of token ids.
    max_length: longest sequence (size of the position table).
    width: model width.
    depth: number of blocks.
    num_heads: attention heads per block.
    mlp_ratio: hidden width of the MLP relative to `width`.
    pooling: ``"mean"`` over non-padding tokens, ``"first"`` (BOS) or ``"last"`` (EOS).
    dropout_rate: dropout in attention and residual branches (training only).
    pad_id: the padding token id; padding is masked out of attention and pooling.
    remat: recompute each block in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).

  >>> encoder = TransformerTextEncoder(features=8, vocab_size=20, max_length=6, width=16, depth=1)
  >>> tokens = jnp.array([[1, 5, 6, 2, 0, 0]])
  >>> variables = encoder.init(jax.random.key(0), tokens)
  >>> encoder.apply(variables, tokens).shape
  (1, 8)
  """

  features: int
  vocab_size: int
  max_length: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  pooling: str = "mean"
  dropout_rate: float = 0.0
  pad_id: int = 0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    _check_tokens("TransformerTextEncoder", tokens)
    pool = layers.pooling(self.pooling)
    if tokens.shape[1] > self.max_length:
      raise ValueError(
          f"TransformerTextEncoder: tokens have length {tokens.shape[1]}, more than max_length {self.max_length}."
      )
    valid = tokens != self.pad_id
    x = nn.Embed(self.vocab_size, self.width, name="token_embedding")(tokens).astype(self.dtype)
    positions = self.param(
        "position_embedding", nn.initializers.normal(0.02), (self.max_length, self.width), jnp.float32
    )
    x = x + positions[: tokens.shape[1]].astype(self.dtype)
    attention_mask = nn.make_attention_mask(valid, valid)
    block = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat else TransformerBlock
    for index in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, self.dropout_rate, self.dtype, name=f"block{index}")(
          x, attention_mask, train
      )
    x = nn.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    return nn.Dense(self.features, dtype=self.dtype, name="projection")(pool(x, valid))


class GRUTextEncoder(nn.Module):
  """Token embeddings, stacked (optionally bidirectional) GRUs, pooling, projection.

  Padding is handled with sequence lengths, so the recurrence stops at each row's last token.

  Attributes:
    features: output dimension.
    vocab_size: number of token ids.
    width: embedding and hidden size.
    depth: number of stacked GRU layers.
    bidirectional: run every layer in both directions and concatenate.
    pooling: ``"last"`` (final hidden state) or ``"mean"`` over non-padding steps.
    pad_id: the padding token id; padding must come after the tokens.
    dtype: computation dtype (parameters stay float32).

  >>> encoder = GRUTextEncoder(features=8, vocab_size=20, width=16)
  >>> tokens = jnp.array([[1, 5, 6, 2, 0, 0]])
  >>> variables = encoder.init(jax.random.key(0), tokens)
  >>> encoder.apply(variables, tokens).shape
  (1, 8)
  """

  features: int
  vocab_size: int
  width: int = 128
  depth: int = 1
  bidirectional: bool = False
  pooling: str = "last"
  pad_id: int = 0
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array, *, train: bool = False) -> jax.Array:
    del train  # no dropout
    _check_tokens("GRUTextEncoder", tokens)
    if self.pooling not in ("last", "mean"):
      raise ValueError(f"GRUTextEncoder: unknown pooling {self.pooling!r}; valid choices: ['last', 'mean'].")
    valid = tokens != self.pad_id
    lengths = jnp.sum(valid, axis=1)
    x = nn.Embed(self.vocab_size, self.width, name="token_embedding")(tokens).astype(self.dtype)
    for index in range(self.depth):
      def rnn(name):
        return nn.RNN(nn.GRUCell(self.width, dtype=self.dtype), return_carry=True, name=name)
      if self.bidirectional:
        layer = nn.Bidirectional(rnn(f"forward{index}"), rnn(f"backward{index}"), return_carry=True)
      else:
        layer = rnn(f"gru{index}")
      carry, x = layer(x, seq_lengths=lengths)
    if self.pooling == "last":
      pooled = jnp.concatenate(carry, axis=-1) if self.bidirectional else carry
    else:
      pooled = layers.masked_mean(x, valid)
    return nn.Dense(self.features, dtype=self.dtype, name="projection")(pooled)
