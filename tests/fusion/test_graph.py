"""Graph layers against dense NumPy float64 formulas on a directed edge list with invalid nodes; graph
fusion over modality nodes is invariant to relabelling the modalities; edge lists are checked."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.special import softmax

from mmjax.fusion import GATLayer, GCNLayer, GraphFusion

SENDERS = np.array([0, 1, 2, 3, 0, 1, 3, 2, 0], np.int32)
RECEIVERS = np.array([0, 1, 2, 3, 1, 2, 1, 0, 3], np.int32)
VALID = np.array([[1, 1, 1, 1], [1, 0, 1, 1], [0, 0, 0, 0]], bool)  # node 1 of sample 1 is off; sample 2 is empty


def _nodes():
  return np.random.default_rng(0).normal(size=(3, 4, 5)).astype(np.float32)


def _adjacency(valid):
  """``A[r, s]``: number of valid edges s → r."""
  a = np.zeros((4, 4))
  for s, r in zip(SENDERS, RECEIVERS):
    a[r, s] += valid[s] and valid[r]
  return a


def _perturbed(variables):
  return jax.tree.map(lambda a: a + 0.3 * jax.random.normal(jax.random.key(2), a.shape), variables)["params"]


class AgainstNumpyTest(chex.TestCase):
  """Outputs against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_gcn_layer_against_dense_normalised_adjacency(self):
    layer = GCNLayer(3)
    nodes = _nodes()
    params = _perturbed(layer.init(jax.random.key(0), nodes, VALID, SENDERS, RECEIVERS))
    got = self.variant(lambda v, x, valid: layer.apply(v, x, valid, SENDERS, RECEIVERS))({"params": params}, nodes, VALID)
    chex.assert_shape(got, (3, 4, 3))
    kernel, bias = np.asarray(params["linear"]["kernel"], np.float64), np.asarray(params["bias"], np.float64)
    for b in range(3):
      a = _adjacency(VALID[b])
      d_in, d_out = np.maximum(a.sum(1), 1), np.maximum(a.sum(0), 1)
      want = (a / np.sqrt(np.outer(d_in, d_out))) @ (nodes[b] @ kernel) + bias
      np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_gat_layer_against_dense_masked_softmax(self):
    layer = GATLayer(3, num_heads=2)
    nodes = _nodes()
    params = _perturbed(layer.init(jax.random.key(0), nodes, VALID, SENDERS, RECEIVERS))
    got = self.variant(lambda v, x, valid: layer.apply(v, x, valid, SENDERS, RECEIVERS))({"params": params}, nodes, VALID)
    chex.assert_shape(got, (3, 4, 6))
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    for b in range(3):
      h = np.einsum("nd,dhf->nhf", nodes[b], p["linear"]["kernel"])  # [N, H, F]
      a = _adjacency(VALID[b])
      want = np.zeros((4, 2, 3))
      for r in range(4):
        senders = np.flatnonzero(a[r])
        if senders.size:
          from_senders = np.einsum("shf,hf->sh", h[senders], p["sender_attention"])
          logits = from_senders + np.einsum("hf,hf->h", h[r], p["receiver_attention"])
          logits = np.where(logits > 0, logits, 0.2 * logits)
          want[r] = np.einsum("sh,shf->hf", softmax(logits, axis=0), h[senders])
      np.testing.assert_allclose(got[b], want.reshape(4, 6) + p["bias"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("conv", ["gcn", "gat"])
def test_complete_graph_fusion_is_invariant_to_relabelling_modalities(conv, relabel):
  rng = np.random.default_rng(1)
  inputs = {name: jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) for name in ("a", "b", "c")}
  present = {"a": jnp.array([1, 1, 0], bool), "b": jnp.array([1, 0, 1], bool), "c": jnp.array([1, 1, 1], bool)}
  module = GraphFusion(2, width=8, conv=conv, num_heads=2)
  variables = module.init(jax.random.key(0), inputs, present)
  cycle = {"a": "b", "b": "c", "c": "a"}
  np.testing.assert_allclose(
      module.apply(relabel(variables, cycle), relabel(inputs, cycle), relabel(present, cycle)),
      module.apply(variables, inputs, present), rtol=1e-5, atol=1e-6,
  )


def test_edge_lists_name_modalities():
  module = GraphFusion(2, edges=(("audio", "text"), ("text", "audio"), ("image", "text")))
  senders, receivers = module.graph(["audio", "image", "text"])
  assert sorted(zip(senders.tolist(), receivers.tolist())) == [(0, 0), (0, 2), (1, 1), (1, 2), (2, 0), (2, 2)]
  inputs = {"audio": jnp.ones((1, 2)), "image": jnp.ones((1, 2)), "txt": jnp.ones((1, 2))}
  message = r"GraphFusion: edge \('audio', 'text'\) names modality 'text', not among the inputs"
  with pytest.raises(ValueError, match=message):
    module.init(jax.random.key(0), inputs)
  with pytest.raises(ValueError, match=r"MessagePassing: unknown conv 'sage'; valid choices: \['gcn', 'gat'\]"):
    GraphFusion(2, conv="sage").init(jax.random.key(0), inputs)


def test_a_directed_edge_carries_information_one_way():
  module = GraphFusion(2, width=4, depth=1, edges=(("audio", "text"),))
  inputs = {"audio": jnp.ones((1, 2)), "text": jnp.ones((1, 3))}
  variables = module.init(jax.random.key(0), inputs)

  def node_states(inputs):
    _, state = module.apply(variables, inputs, capture_intermediates=True, mutable=["intermediates"])
    return state["intermediates"]["message_passing"]["__call__"][0][0]  # [nodes, width]

  base = node_states(inputs)
  audio_changed = node_states({**inputs, "audio": -inputs["audio"]})
  text_changed = node_states({**inputs, "text": -inputs["text"]})
  assert not np.allclose(audio_changed[1], base[1])  # audio -> text
  np.testing.assert_allclose(text_changed[0], base[0])  # nothing reaches audio from text
