"""Graph fusion: modalities (or their tokens) as the nodes of a graph, fused by message passing.

Message passing is written with `jax.ops.segment_sum` (and `jax.ops.segment_max` for GAT's softmax)
over a static edge list ``(senders, receivers)``: the graph's structure is fixed at trace time, and
a per-sample ``bool[B, N]`` node mask switches nodes off. An edge takes part only when both its
ends are valid, so an absent node neither sends nor receives messages, and it is left out of the
readout. Every node has a self-loop.
"""

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import linear
from mmjax.encoders import layers
from mmjax.fusion.base import Fusion, FusionInputs, Presence, check_heads


def complete_graph(num_nodes: int) -> tuple[np.ndarray, np.ndarray]:
  """``(senders, receivers)`` of the complete directed graph on `num_nodes` nodes, self-loops included.

  >>> complete_graph(2)
  (array([0, 0, 1, 1], dtype=int32), array([0, 1, 0, 1], dtype=int32))
  """
  senders, receivers = np.meshgrid(np.arange(num_nodes), np.arange(num_nodes), indexing="ij")
  return senders.ravel().astype(np.int32), receivers.ravel().astype(np.int32)


def _edge_major(nodes: jax.Array, index: np.ndarray) -> jax.Array:
  """``nodes[B, N, ...]`` gathered at `index` along N, edges first: ``[E, B, ...]``."""
  return jnp.swapaxes(nodes, 0, 1)[index]


def _to_nodes(messages: jax.Array, receivers: np.ndarray, num_nodes: int) -> jax.Array:
  """Sums ``messages[E, B, ...]`` into their receivers: ``[B, N, ...]``."""
  return jnp.swapaxes(jax.ops.segment_sum(messages, receivers, num_nodes), 0, 1)


def _edge_valid(node_valid: jax.Array, senders: np.ndarray, receivers: np.ndarray) -> jax.Array:
  """``bool[E, B]``: both ends of the edge are valid."""
  return (node_valid[:, senders] & node_valid[:, receivers]).T


class GCNLayer(nn.Module):
  """Graph convolution: ``h'_i = Σ_{j→i} h_j W / sqrt(d_out(j) · d_in(i)) + b``.

  Degrees count the valid edges only (on an undirected graph with self-loops this is Kipf and
  Welling's ``D^-1/2 (A + I) D^-1/2 H W``). No nonlinearity: the caller chooses it.

  Attributes:
    features: output width.
    dtype: computation dtype (parameters stay float32).

  References:
    Kipf and Welling, "Semi-Supervised Classification with Graph Convolutional Networks", ICLR 2017.

  >>> layer = GCNLayer(features=4)
  >>> nodes, valid = jnp.ones((2, 3, 5)), jnp.array([[True, True, False], [True, True, True]])
  >>> senders, receivers = complete_graph(3)
  >>> variables = layer.init(jax.random.key(0), nodes, valid, senders, receivers)
  >>> layer.apply(variables, nodes, valid, senders, receivers).shape
  (2, 3, 4)
  """

  features: int
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, nodes: jax.Array, node_valid: jax.Array, senders: np.ndarray, receivers: np.ndarray) -> jax.Array:
    """Maps ``nodes[B, N, D]`` with ``node_valid bool[B, N]`` over edges ``senders[E] → receivers[E]``."""
    num_nodes = nodes.shape[1]
    h = linear.Dense(self.features, use_bias=False, dtype=self.dtype, name="linear")(nodes)
    weight = _edge_valid(node_valid, senders, receivers).astype(h.dtype)
    out_degree = jax.ops.segment_sum(weight, senders, num_nodes)[senders]
    in_degree = jax.ops.segment_sum(weight, receivers, num_nodes)[receivers]
    norm = weight * jax.lax.rsqrt(jnp.maximum(out_degree, 1) * jnp.maximum(in_degree, 1))
    aggregated = _to_nodes(_edge_major(h, senders) * norm[..., None], receivers, num_nodes)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return aggregated + bias.astype(self.dtype)


def _segment_softmax(logits: jax.Array, valid: jax.Array, receivers: np.ndarray, num_nodes: int) -> jax.Array:
  """Softmax of ``logits[E, ...]`` over each receiver's valid incoming edges (0 on invalid edges)."""
  masked = jnp.where(valid, logits, jnp.finfo(logits.dtype).min)
  # A receiver without incoming edges has maximum -inf; the floor keeps every difference finite.
  maxima = jnp.maximum(jax.ops.segment_max(masked, receivers, num_nodes), jnp.finfo(logits.dtype).min)
  shifted = jnp.where(valid, masked - jax.lax.stop_gradient(maxima)[receivers], 0)
  weights = jnp.where(valid, jnp.exp(shifted), 0)
  total = jax.ops.segment_sum(weights, receivers, num_nodes)[receivers]
  return weights / jnp.where(total > 0, total, 1)


class GATLayer(nn.Module):
  """Graph attention: ``h'_i = ‖_heads Σ_{j→i} α_ij W h_j + b`` with
  ``α_ij = softmax_j LeakyReLU(aᵀ [W h_i ‖ W h_j])`` over the valid edges into ``i``.

  Attributes:
    features: output width per head; heads are concatenated.
    num_heads: attention heads.
    negative_slope: slope of the LeakyReLU on the attention logits.
    dtype: computation dtype (parameters stay float32).

  References:
    Veličković, Cucurull, Casanova, Romero, Liò and Bengio, "Graph Attention Networks", ICLR 2018.

  >>> layer = GATLayer(features=4, num_heads=2)
  >>> nodes, valid = jnp.ones((2, 3, 5)), jnp.array([[True, True, False], [True, True, True]])
  >>> senders, receivers = complete_graph(3)
  >>> variables = layer.init(jax.random.key(0), nodes, valid, senders, receivers)
  >>> layer.apply(variables, nodes, valid, senders, receivers).shape
  (2, 3, 8)
  """

  features: int
  num_heads: int = 1
  negative_slope: float = 0.2
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, nodes: jax.Array, node_valid: jax.Array, senders: np.ndarray, receivers: np.ndarray) -> jax.Array:
    """Maps ``nodes[B, N, D]`` with ``node_valid bool[B, N]`` over edges ``senders[E] → receivers[E]``."""
    batch, num_nodes = nodes.shape[:2]
    h = linear.DenseGeneral((self.num_heads, self.features), use_bias=False, dtype=self.dtype, name="linear")(nodes)
    init = nn.initializers.lecun_normal(in_axis=1, out_axis=0)
    attend_sender = self.param("sender_attention", init, (self.num_heads, self.features), jnp.float32)
    attend_receiver = self.param("receiver_attention", init, (self.num_heads, self.features), jnp.float32)
    from_sender = jnp.einsum("bnhf,hf->bnh", h, attend_sender.astype(self.dtype))
    from_receiver = jnp.einsum("bnhf,hf->bnh", h, attend_receiver.astype(self.dtype))
    logits = nn.leaky_relu(
        _edge_major(from_sender, senders) + _edge_major(from_receiver, receivers), self.negative_slope
    )
    weights = _segment_softmax(logits, _edge_valid(node_valid, senders, receivers)[..., None], receivers, num_nodes)
    aggregated = _to_nodes(weights[..., None] * _edge_major(h, senders), receivers, num_nodes)
    bias = self.param("bias", nn.initializers.zeros, (self.num_heads * self.features,), jnp.float32)
    return aggregated.reshape(batch, num_nodes, -1) + bias.astype(self.dtype)


# Message-passing layers a graph fusion may name.
CONVOLUTIONS = ("gcn", "gat")


class MessagePassing(nn.Module):
  """`depth` residual message-passing layers ``h ← h + gelu(conv(h))`` of width `width`.

  Attributes:
    width: node width (input and output).
    depth: layers.
    conv: ``"gcn"`` (`GCNLayer`) or ``"gat"`` (`GATLayer` with `num_heads` heads of ``width / num_heads``).
    num_heads: GAT attention heads.
    dtype: computation dtype (parameters stay float32).

  >>> layer = MessagePassing(width=4, conv="gat", num_heads=2)
  >>> nodes, valid = jnp.ones((2, 3, 4)), jnp.ones((2, 3), bool)
  >>> variables = layer.init(jax.random.key(0), nodes, valid, *complete_graph(3))
  >>> layer.apply(variables, nodes, valid, *complete_graph(3)).shape
  (2, 3, 4)
  """

  width: int
  depth: int = 2
  conv: str = "gcn"
  num_heads: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, nodes: jax.Array, node_valid: jax.Array, senders: np.ndarray, receivers: np.ndarray) -> jax.Array:
    """Updates ``nodes[B, N, width]`` (``node_valid bool[B, N]``) over edges ``senders[E] → receivers[E]``."""
    if self.conv not in CONVOLUTIONS:
      raise ValueError(f"MessagePassing: unknown conv {self.conv!r}; valid choices: {list(CONVOLUTIONS)}.")
    if self.conv == "gat":
      check_heads("MessagePassing", self.width, self.num_heads)
    for layer in range(self.depth):
      if self.conv == "gcn":
        conv = GCNLayer(self.width, self.dtype, name=f"layer{layer}")
      else:
        conv = GATLayer(self.width // self.num_heads, self.num_heads, dtype=self.dtype, name=f"layer{layer}")
      nodes = nodes + nn.gelu(conv(nodes, node_valid, senders, receivers))
    return nodes


class GraphFusion(Fusion):
  """Modalities as the nodes of a graph: per-modality projections to `width`, message passing, then
  the mean over the present modalities' nodes, projected to ``features``.

  The default graph is complete, so the modalities are a set: relabelling them together with their
  projections leaves the output unchanged.

  Attributes:
    features: output dimension.
    width: node width.
    depth: message-passing layers.
    conv: ``"gcn"`` or ``"gat"`` (see `MessagePassing`).
    num_heads: GAT attention heads.
    edges: directed ``(sender, receiver)`` modality pairs; None for the complete graph. Self-loops
      are always added.
    dtype: computation dtype (parameters stay float32).

  References:
    Kipf and Welling 2017 (GCN); Veličković et al. 2018 (GAT); Yang et al., "MTAG: Modal-Temporal
    Attention Graph for Unaligned Human Multimodal Language Sequences", NAACL 2021.

  >>> fusion = GraphFusion(features=4, width=8, conv="gat", num_heads=2, edges=(("image", "text"),))
  >>> inputs = {"image": jnp.ones((2, 3)), "text": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  features: int
  width: int = 32
  depth: int = 2
  conv: str = "gcn"
  num_heads: int = 1
  edges: Sequence[tuple[str, str]] | None = None
  dtype: jnp.dtype = jnp.float32

  def graph(self, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``(senders, receivers)`` over the modalities `names` (node ``i`` is ``names[i]``)."""
    if self.edges is None:
      return complete_graph(len(names))
    index = {name: i for i, name in enumerate(names)}
    pairs = {(i, i) for i in range(len(names))}
    for edge in self.edges:
      for name in edge:
        if name not in index:
          raise ValueError(f"GraphFusion: edge {tuple(edge)} names modality {name!r}, not among the inputs {names}.")
      pairs.add((index[edge[0]], index[edge[1]]))
    senders, receivers = np.array(sorted(pairs), np.int32).T
    return senders, receivers

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    del train  # no dropout
    modalities = self.pooled(inputs, present)
    nodes = jnp.stack(
        [linear.Dense(self.width, dtype=self.dtype, name=f"{m.name}_projection")(m.features) for m in modalities], axis=1
    )
    node_valid = jnp.stack([m.present for m in modalities], axis=1)
    nodes = MessagePassing(self.width, self.depth, self.conv, self.num_heads, self.dtype, name="message_passing")(
        nodes, node_valid, *self.graph([m.name for m in modalities])
    )
    return linear.Dense(self.features, dtype=self.dtype, name="projection")(layers.masked_mean(nodes, node_valid))


class TokenGraphFusion(Fusion):
  """Tokens of all modalities as the nodes of one complete graph: per-modality projections to
  `width`, message passing, then the mean over the valid tokens of present modalities, projected.

  The graph has ``N²`` edges for ``N`` tokens in all: meant for short sequences (or pooled inputs,
  one token each).

  Attributes:
    features: output dimension.
    width: node width.
    depth: message-passing layers.
    conv: ``"gcn"`` or ``"gat"`` (see `MessagePassing`).
    num_heads: GAT attention heads.
    dtype: computation dtype (parameters stay float32).

  References:
    Yang et al., "MTAG: Modal-Temporal Attention Graph for Unaligned Human Multimodal Language
    Sequences", NAACL 2021 (token-level multimodal graphs).

  >>> from mmjax.encoders.base import Encoded
  >>> fusion = TokenGraphFusion(features=4, width=8)
  >>> inputs = {"audio": Encoded(jnp.ones((2, 3)), jnp.ones((2, 7, 3)), jnp.ones((2, 7), bool)),
  ...           "image": jnp.ones((2, 5))}
  >>> variables = fusion.init(jax.random.key(0), inputs)
  >>> fusion.apply(variables, inputs).shape
  (2, 4)
  """

  needs_tokens = True

  features: int
  width: int = 32
  depth: int = 2
  conv: str = "gcn"
  num_heads: int = 1
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: FusionInputs, present: Presence = None, *, train: bool = False) -> jax.Array:
    del train  # no dropout
    modalities = self.tokens(inputs, present)
    nodes = jnp.concatenate(
        [linear.Dense(self.width, dtype=self.dtype, name=f"{m.name}_projection")(m.tokens) for m in modalities], axis=1
    )
    node_valid = jnp.concatenate([m.valid for m in modalities], axis=1)
    nodes = MessagePassing(self.width, self.depth, self.conv, self.num_heads, self.dtype, name="message_passing")(
        nodes, node_valid, *complete_graph(nodes.shape[1])
    )
    return linear.Dense(self.features, dtype=self.dtype, name="projection")(layers.masked_mean(nodes, node_valid))
