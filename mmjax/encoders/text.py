"""Text encoders over ``int32[B, L]`` token ids, padding marked by `pad_id` after the tokens.

Both follow the encoder contract of `mmjax.encoders.base`: ``encoder(tokens, train=…,
return_tokens=…)`` gives the pooled ``[B, features]`` vector, or an `Encoded` whose per-token
features go through the same output projection and whose ``valid`` mask is False at padding.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax import normalization
from mmjax.encoders import base, layers
from mmjax.encoders.transformer import TransformerBlock

# Recurrent cells by name. Flax's gate conventions (biases, gate order) are spelled out next to the
# NumPy reference implementation in tests/encoders/test_text.py.
CELLS: dict[str, type[nn.RNNCellBase]] = {"gru": nn.GRUCell, "lstm": nn.LSTMCell}
RECURRENT_POOLINGS = ("last", "mean")


def _check_tokens(encoder: nn.Module, tokens: jax.Array) -> None:
  base.check_input(type(encoder).__name__, encoder.modality, tokens, (None, None), "int")


def _outputs(
    projection: nn.Module, pooled: jax.Array, tokens: jax.Array, valid: jax.Array, return_tokens: bool
) -> jax.Array | base.Encoded:
  """The projected pooled vector, or with `return_tokens` an `Encoded` projected by the same layer."""
  if not return_tokens:
    return projection(pooled)
  return base.Encoded(projection(pooled), projection(tokens), valid)


class TransformerTextEncoder(nn.Module):
  """Token and learned position embeddings, pre-LN transformer blocks, pooling, projection.

  Attention is bidirectional by default; with `causal` each token attends only to itself and the
  tokens before it (combined with the padding mask), so token ``t``'s features depend on tokens
  ``≤ t`` only. Poolings that make sense with causal attention: ``"last"`` (the EOS token has seen
  the whole text: a GPT-style encoder) and ``"mean"``; ``"first"`` would see the BOS token alone,
  the same for every text, and is rejected.

  Attributes:
    features: output dimension.
    vocab_size: number of token ids.
    max_length: longest sequence (size of the position table).
    width: model width.
    depth: number of blocks.
    num_heads: attention heads per block.
    mlp_ratio: hidden width of the MLP relative to `width`.
    pooling: ``"mean"`` over non-padding tokens, ``"first"`` (BOS) or ``"last"`` (EOS).
    causal: causal (left-to-right) attention instead of bidirectional.
    dropout_rate: dropout in attention and residual branches (training only).
    pad_id: the padding token id; padding is masked out of attention and pooling.
    remat: recompute each block in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).
    modality: the modality named in errors.

  >>> encoder = TransformerTextEncoder(features=8, vocab_size=20, max_length=6, width=16, depth=1)
  >>> tokens = jnp.array([[1, 5, 6, 2, 0, 0]])
  >>> variables = encoder.init(jax.random.key(0), tokens)
  >>> encoder.apply(variables, tokens).shape
  (1, 8)
  >>> gpt_style = encoder.clone(causal=True, pooling="last")
  >>> encoded = gpt_style.apply(variables, tokens, return_tokens=True)
  >>> encoded.tokens.shape, encoded.valid.tolist()
  ((1, 6, 8), [[True, True, True, True, False, False]])
  """

  features: int
  vocab_size: int
  max_length: int
  width: int = 128
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  pooling: str = "mean"
  causal: bool = False
  dropout_rate: float = 0.0
  pad_id: int = 0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  modality: str = "text"

  @nn.compact
  def __call__(
      self, tokens: jax.Array, *, train: bool = False, return_tokens: bool = False
  ) -> jax.Array | base.Encoded:
    """Encodes token ids.

    Args:
      tokens: ``int[B, L]`` token ids, ``L ≤ max_length``, padding after the tokens.
      train: enables dropout (needs a ``"dropout"`` PRNG key when `dropout_rate` > 0).
      return_tokens: also return the per-token features and their validity mask.

    Returns:
      ``[B, features]``, or an `Encoded` with tokens ``[B, L, features]`` and valid ``bool[B, L]``.
    """
    _check_tokens(self, tokens)
    where = f"{type(self).__name__}: modality {self.modality!r}"
    pool = layers.pooling(self.pooling)
    if self.causal and self.pooling == "first":
      raise ValueError(
          f"{where}: pooling 'first' with causal attention sees only the first token; use 'last' or 'mean'."
      )
    if tokens.shape[1] > self.max_length:
      raise ValueError(f"{where}: tokens have length {tokens.shape[1]}, more than max_length {self.max_length}.")
    valid = tokens != self.pad_id
    x = nn.Embed(self.vocab_size, self.width, name="token_embedding")(tokens).astype(self.dtype)
    positions = self.param(
        "position_embedding", nn.initializers.normal(0.02), (self.max_length, self.width), jnp.float32
    )
    x = x + positions[: tokens.shape[1]].astype(self.dtype)
    attention_mask = nn.make_attention_mask(valid, valid)
    if self.causal:
      attention_mask = nn.combine_masks(attention_mask, nn.make_causal_mask(tokens))
    block = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat else TransformerBlock
    for index in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, self.dropout_rate, self.dtype, name=f"block{index}")(
          x, attention_mask, train
      )
    x = normalization.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    projection = linear.Dense(self.features, dtype=self.dtype, name="projection")
    return _outputs(projection, pool(x, valid), x, valid, return_tokens)


class RecurrentTextEncoder(nn.Module):
  """Token embeddings, stacked GRU or LSTM layers (optionally bidirectional), pooling, projection.

  Padding is handled with sequence lengths (``nn.RNN(seq_lengths=…)``): a padding position never
  updates the state, and the backward direction of a bidirectional layer starts at each row's last
  real token. The top layer's outputs are zeroed at padding, so a row without tokens pools to zeros
  rather than to a state computed from padding.

  Attributes:
    features: output dimension.
    vocab_size: number of token ids.
    cell: ``"gru"`` or ``"lstm"`` (see `CELLS`).
    width: embedding and hidden size (per direction).
    depth: number of stacked recurrent layers.
    bidirectional: run every layer in both directions and concatenate.
    pooling: ``"last"``, the final state (bidirectional: the forward state at the last real token
      and the backward state at the first token, concatenated), or ``"mean"`` over real tokens.
    dropout_rate: dropout on the inputs of every layer but the first (training only).
    pad_id: the padding token id; padding must come after the tokens.
    remat: recompute each layer in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters and the recurrent state stay float32).
    modality: the modality named in errors.

  >>> encoder = RecurrentTextEncoder(features=8, vocab_size=20, cell="lstm", width=16, bidirectional=True)
  >>> tokens = jnp.array([[1, 5, 6, 2, 0, 0]])
  >>> variables = encoder.init(jax.random.key(0), tokens)
  >>> encoder.apply(variables, tokens).shape
  (1, 8)
  >>> encoded = encoder.apply(variables, tokens, return_tokens=True)
  >>> encoded.tokens.shape, encoded.valid.tolist()
  ((1, 6, 8), [[True, True, True, True, False, False]])
  """

  features: int
  vocab_size: int
  cell: str = "gru"
  width: int = 128
  depth: int = 1
  bidirectional: bool = False
  pooling: str = "last"
  dropout_rate: float = 0.0
  pad_id: int = 0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  modality: str = "text"

  @nn.compact
  def __call__(
      self, tokens: jax.Array, *, train: bool = False, return_tokens: bool = False
  ) -> jax.Array | base.Encoded:
    """Encodes token ids.

    Args:
      tokens: ``int[B, L]`` token ids, padding after the tokens.
      train: enables dropout between layers (needs a ``"dropout"`` PRNG key when `dropout_rate` > 0).
      return_tokens: also return the top layer's per-token states (both directions concatenated),
        projected, and their validity mask.

    Returns:
      ``[B, features]``, or an `Encoded` with tokens ``[B, L, features]`` and valid ``bool[B, L]``.
    """
    _check_tokens(self, tokens)
    where = f"{type(self).__name__}: modality {self.modality!r}"
    if self.cell not in CELLS:
      raise ValueError(f"{where}: unknown cell {self.cell!r}; valid choices: {sorted(CELLS)}.")
    if self.pooling not in RECURRENT_POOLINGS:
      raise ValueError(f"{where}: unknown pooling {self.pooling!r}; valid choices: {list(RECURRENT_POOLINGS)}.")
    valid = tokens != self.pad_id
    lengths = jnp.sum(valid, axis=1)
    x = nn.Embed(self.vocab_size, self.width, name="token_embedding")(tokens).astype(self.dtype)
    rnn = nn.remat(nn.RNN) if self.remat else nn.RNN
    make_cell = functools.partial(CELLS[self.cell], self.width, dtype=self.dtype)
    for index in range(self.depth):
      if index:
        x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
      # Cells are created in this scope, so their parameters are named GRUCell_k / LSTMCell_k in
      # creation order (forward before backward), whatever the RNN wrappers are called.
      if self.bidirectional:
        forward = rnn(make_cell(), name=f"forward{index}")(x, seq_lengths=lengths)
        backward_rnn = rnn(make_cell(), reverse=True, keep_order=True, name=f"backward{index}")
        backward = backward_rnn(x, seq_lengths=lengths)
        x = jnp.concatenate([forward, backward], axis=-1)
      else:
        x = rnn(make_cell(), name=f"{self.cell}{index}")(x, seq_lengths=lengths)
    x = jnp.where(valid[..., None], x, 0)
    if self.pooling == "mean":
      pooled = layers.masked_mean(x, valid)
    elif self.bidirectional:
      # keep_order puts the backward state after the whole row (read right to left) at position 0.
      last_forward = layers.last_valid_position(x[..., : self.width], valid)
      pooled = jnp.concatenate([last_forward, x[:, 0, self.width :]], axis=-1)
    else:
      pooled = layers.last_valid_position(x, valid)
    projection = linear.Dense(self.features, dtype=self.dtype, name="projection")
    return _outputs(projection, pooled, x, valid, return_tokens)
