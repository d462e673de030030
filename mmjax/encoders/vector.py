"""Encoders for feature vectors (``float32[B, D]``, tabular data) and class labels (``int32[B]``).

Both are an MLP and a projection; the label encoder first embeds each class. Each sample is one
token: with ``return_tokens=True`` the tokens are the pooled vector as ``[B, 1, features]``.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.encoders import base
from mmjax.encoders import layers

ACTIVATIONS = {"gelu": nn.gelu, "relu": nn.relu, "silu": nn.silu, "tanh": nn.tanh}


class MLPBlock(nn.Module):
  """``dense → norm → activation → dropout``: one hidden layer of `MLP`."""

  width: int
  activation: str
  norm: str
  dropout_rate: float
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    x = linear.Dense(self.width, dtype=self.dtype, name="dense")(x)
    x = ACTIVATIONS[self.activation](layers.make_norm(self.norm, self.dtype, name="norm")(x))
    return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class MLP(nn.Module):
  """`depth` `MLPBlock`s of `width` units (the identity when `depth` is 0).

  Attributes:
    width: units of every hidden layer.
    depth: number of hidden layers.
    activation: a name in `ACTIVATIONS`.
    norm: a name in `layers.NORMS`.
    dropout_rate: dropout after every hidden layer, in training only (needs a ``"dropout"`` rng).
    remat: recompute each layer in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).

  >>> mlp = MLP(width=16, depth=2)
  >>> x = jnp.ones((3, 5))
  >>> mlp.apply(mlp.init(jax.random.key(0), x, train=False), x, train=False).shape
  (3, 16)
  """

  width: int
  depth: int
  activation: str = "gelu"
  norm: str = "layer"
  dropout_rate: float = 0.0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"Unknown activation {self.activation!r}; valid choices: {sorted(ACTIVATIONS)}.")
    if self.depth < 0:
      raise ValueError(f"MLP: expected depth >= 0, got {self.depth}.")
    block = nn.remat(MLPBlock, static_argnums=(2,)) if self.remat else MLPBlock
    for index in range(self.depth):
      x = block(self.width, self.activation, self.norm, self.dropout_rate, self.dtype, name=f"layer{index}")(x, train)
    return x


def _project_one_token(x: jax.Array, features: int, dtype: jnp.dtype, return_tokens: bool):
  """``projection(x)``; with `return_tokens` also as the single token of each sample."""
  pooled = linear.Dense(features, dtype=dtype, name="projection")(x)
  if not return_tokens:
    return pooled
  tokens = pooled[:, None, :]
  return base.Encoded(pooled, tokens, base.all_valid(tokens))


class MLPEncoder(nn.Module):
  """An MLP over feature vectors, then a linear projection.

  With ``event_rank > 1`` each sample's trailing dimensions are flattened first: an MLP image
  encoder (``event_rank=3``: ``[B, H, W, C]``), as in the MVAE and MMVAE MNIST architectures.

  Attributes:
    features: output dimension of the projection.
    width: units of every hidden layer.
    depth: number of hidden layers (0: the projection alone, a linear encoder).
    activation: a name in `ACTIVATIONS` (``"silu"`` is Swish, as in the MVAE/MoPoE MLPs).
    norm: a name in `layers.NORMS`.
    dropout_rate: dropout after every hidden layer, in training only (needs a ``"dropout"`` rng).
    event_rank: the rank of one sample (1: vectors; 3: images, flattened).
    modality: the modality's name, used in errors.
    remat: recompute each hidden layer in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).

  >>> encoder = MLPEncoder(features=8, width=32, depth=2)
  >>> vectors = jnp.ones((4, 10))
  >>> variables = encoder.init(jax.random.key(0), vectors)
  >>> encoder.apply(variables, vectors).shape
  (4, 8)
  >>> encoder.apply(variables, vectors, return_tokens=True).tokens.shape
  (4, 1, 8)
  """

  features: int
  width: int = 256
  depth: int = 2
  activation: str = "gelu"
  norm: str = "layer"
  dropout_rate: float = 0.0
  event_rank: int = 1
  modality: str = "vector"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, vectors: jax.Array, *, train: bool = False, return_tokens: bool = False):
    base.check_input("MLPEncoder", self.modality, vectors, (None,) * (1 + self.event_rank), "float")
    vectors = vectors.reshape(vectors.shape[0], -1)
    mlp = MLP(self.width, self.depth, self.activation, self.norm, self.dropout_rate, self.remat, self.dtype, name="mlp")
    return _project_one_token(mlp(vectors.astype(self.dtype), train), self.features, self.dtype, return_tokens)


class LabelEncoder(nn.Module):
  """A learned embedding per class, an optional MLP, then a linear projection.

  Labels outside ``0 … num_classes - 1`` (negative ones included, which plain indexing would wrap
  around) give NaN features: a bad label is never silently read as another class, and the
  trainer's non-finite guard stops or skips the step. Checking values needs the data, so this
  cannot be a `ValueError` under `jax.jit`.

  Attributes:
    features: output dimension of the projection.
    num_classes: number of classes (``ModalitySpec.num_classes``).
    width: embedding size and units of every hidden layer.
    depth: number of hidden layers after the embedding (0: embedding and projection only).
    activation: a name in `ACTIVATIONS`.
    norm: a name in `layers.NORMS`.
    dropout_rate: dropout after every hidden layer, in training only (needs a ``"dropout"`` rng).
    modality: the modality's name, used in errors.
    remat: recompute each hidden layer in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).

  >>> encoder = LabelEncoder(features=8, num_classes=10, width=16)
  >>> labels = jnp.array([3, 0, 9])
  >>> variables = encoder.init(jax.random.key(0), labels)
  >>> encoder.apply(variables, labels).shape
  (3, 8)
  >>> bool(jnp.isnan(encoder.apply(variables, jnp.array([10]))).all())  # out of range
  True
  """

  features: int
  num_classes: int
  width: int = 64
  depth: int = 0
  activation: str = "gelu"
  norm: str = "layer"
  dropout_rate: float = 0.0
  modality: str = "label"
  remat: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, labels: jax.Array, *, train: bool = False, return_tokens: bool = False):
    base.check_input("LabelEncoder", self.modality, labels, (None,), "int")
    x = nn.Embed(self.num_classes, self.width, dtype=self.dtype, name="embedding")(labels)
    in_range = (labels >= 0) & (labels < self.num_classes)
    x = jnp.where(in_range[:, None], x, jnp.nan)
    mlp = MLP(self.width, self.depth, self.activation, self.norm, self.dropout_rate, self.remat, self.dtype, name="mlp")
    return _project_one_token(mlp(x, train), self.features, self.dtype, return_tokens)
