"""Cross-modal attention: the residual cross-attention layer against NumPy float64 multi-head attention
with masks; MulT streams re-read the sources' inputs while co-attention streams read each other's
current states."""

import chex
import jax
import numpy as np
from scipy.special import softmax

from mmjax.fusion import CoAttentionFusion, CrossAttention, CrossModalTransformer


def _layer_norm(x, params, eps=1e-6):
  mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * params["scale"] + params["bias"]


def reference_cross_attention(params, target, source, source_valid):
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
  target, source = np.asarray(target, np.float64), np.asarray(source, np.float64)
  queries, keys = _layer_norm(target, p["target_norm"]), _layer_norm(source, p["source_norm"])
  attention = p["attention"]

  def heads(x, name):  # [B, T, H, Dh]
    return np.einsum("btw,whd->bthd", x, attention[name]["kernel"]) + attention[name]["bias"]

  q, k, v = heads(queries, "query"), heads(keys, "key"), heads(keys, "value")
  out = np.zeros_like(target)
  for b in range(len(target)):
    keep = np.flatnonzero(source_valid[b])
    if not keep.size:
      continue  # nothing to attend to: no update
    logits = np.einsum("thd,shd->hts", q[b], k[b, keep]) / np.sqrt(q.shape[-1])
    mixed = np.einsum("hts,shd->thd", softmax(logits, axis=-1), v[b, keep])
    out[b] = np.einsum("thd,hdw->tw", mixed, attention["out"]["kernel"]) + attention["out"]["bias"]
  return target + out


class AgainstNumpyTest(chex.TestCase):
  """Outputs against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_cross_attention_against_numpy(self):
    rng = np.random.default_rng(0)
    target, source = rng.normal(size=(3, 4, 8)).astype(np.float32), rng.normal(size=(3, 5, 8)).astype(np.float32)
    source_valid = np.array([[1, 1, 0, 0, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool)  # row 1: nothing to read
    layer = CrossAttention(num_heads=2)
    variables = layer.init(jax.random.key(0), target, source, source_valid)
    params = jax.tree.map(lambda a: a + 0.1 * jax.random.normal(jax.random.key(1), a.shape), variables)["params"]
    apply = self.variant(layer.apply)
    got = apply({"params": params}, target, source, source_valid)
    chex.assert_shape(got, target.shape)
    want = reference_cross_attention(params, target, source, source_valid)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    np.testing.assert_array_equal(got[1], target[1])
    garbage = np.where(source_valid[..., None], source, np.float32(1e30))
    np.testing.assert_allclose(apply({"params": params}, target, garbage, source_valid), got, rtol=1e-6, atol=1e-6)


def _audio_stream_after_two_layers(module, variables, inputs):
  _, state = module.apply(variables, inputs, capture_intermediates=True, mutable=["intermediates"])
  return state["intermediates"]["audio_cross1"]["__call__"][0]


def test_mult_streams_reread_the_sources_inputs_and_co_attention_streams_read_current_states(batch):
  inputs, _ = batch(0, ("audio", "text"))
  for module, reads_current_states in [
      (CrossModalTransformer(4, width=8, depth=2, num_heads=2), False),
      (CoAttentionFusion(4, width=8, depth=2, num_heads=2), True),
  ]:
    variables = module.init(jax.random.key(0), inputs)
    # Changing the text stream's first self-attention block changes the text stream's states only.
    changed = jax.tree.map(lambda a: a, variables)
    changed["params"]["text_self0"] = jax.tree.map(lambda a: a + 0.5, variables["params"]["text_self0"])
    before = _audio_stream_after_two_layers(module, variables, inputs)
    after = _audio_stream_after_two_layers(module, changed, inputs)
    assert np.allclose(before, after, atol=1e-6) != reads_current_states, type(module).__name__
    assert not np.allclose(module.apply(variables, inputs), module.apply(changed, inputs), atol=1e-6)
