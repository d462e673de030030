"""Early, sum, mean and attention fusion against NumPy float64 formulas; set-like fusions are invariant
to relabelling the modalities (with their parameters), early fusion is not."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mmjax.fusion import AttentionFusion, EarlyFusion, MeanFusion, SumFusion
from tests.fusion.conftest import make_batch


def _numpy(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


def _pooled(inputs):
  return {name: np.asarray(getattr(x, "pooled", x), np.float64) for name, x in sorted(inputs.items())}


def _projections(params, inputs):
  return {name: x @ params[f"{name}_projection"]["kernel"] + params[f"{name}_projection"]["bias"]
          for name, x in inputs.items()}


def reference(kind, params, inputs, present):
  params, inputs = _numpy(params["params"]), _pooled(inputs)
  here = {name: np.asarray(p) for name, p in present.items()}
  if kind == "early":
    filled = [np.where(here[n][:, None], x, params[f"{n}_absent"]["embedding"]) for n, x in inputs.items()]
    return np.concatenate(filled, -1) @ params["projection"]["kernel"] + params["projection"]["bias"]
  projected = _projections(params, inputs)
  out = np.zeros_like(next(iter(projected.values())))
  for b in range(out.shape[0]):
    rows = [p[b] for n, p in projected.items() if here[n][b]]
    if not rows:
      continue
    if kind == "sum":
      out[b] = np.sum(rows, 0)
    elif kind == "mean":
      out[b] = np.mean(rows, 0)
    else:
      hidden = [np.tanh(r @ params["score_hidden"]["kernel"] + params["score_hidden"]["bias"]) for r in rows]
      scores = [h @ params["score"]["kernel"][:, 0] + params["score"]["bias"][0] for h in hidden]
      weights = np.exp(np.array(scores) - max(scores))
      out[b] = (weights / weights.sum()) @ np.array(rows)
  return out


MODULES = {"early": EarlyFusion(4), "sum": SumFusion(4), "mean": MeanFusion(4), "attention": AttentionFusion(4)}


class AgainstNumpyTest(chex.TestCase):
  """Outputs against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*MODULES)
  def test_against_numpy(self, kind):
    inputs, present = make_batch(3)
    module = MODULES[kind]
    variables = module.init(jax.random.key(1), inputs, present)
    got = self.variant(module.apply)(variables, inputs, present)
    chex.assert_shape(got, (5, 4))
    np.testing.assert_allclose(got, reference(kind, variables, inputs, present), rtol=1e-5, atol=1e-5)
    if kind != "early":
      np.testing.assert_array_equal(got[3], 0)  # no modality present


@pytest.mark.parametrize("kind", list(MODULES))
def test_relabelling_modalities_with_their_parameters(kind, relabel):
  rng = np.random.default_rng(0)
  inputs = {name: jnp.asarray(rng.normal(size=(3, 4)), jnp.float32) for name in ("left", "right")}
  present = {"left": jnp.array([True, False, True]), "right": jnp.array([True, True, False])}
  module = MODULES[kind]
  variables = module.init(jax.random.key(0), inputs, present)
  swap = {"left": "right", "right": "left"}
  out = module.apply(variables, inputs, present)
  swapped = module.apply(relabel(variables, swap), relabel(inputs, swap), relabel(present, swap))
  if kind == "early":
    # Concatenation is ordered by name: the relabelled modalities sit in each other's slots.
    assert not np.allclose(swapped, out, atol=1e-4)
  else:
    np.testing.assert_allclose(swapped, out, rtol=1e-6, atol=1e-6)


def test_attention_weights_follow_the_scores():
  """A modality whose projection scores far higher takes all the weight."""
  module = AttentionFusion(2)
  inputs = {"a": jnp.array([[1.0]]), "b": jnp.array([[1.0]])}
  variables = module.init(jax.random.key(0), inputs)
  params = jax.tree.map(jnp.zeros_like, variables["params"])
  params["a_projection"]["bias"] = jnp.array([5.0, 0.0])
  params["b_projection"]["bias"] = jnp.array([0.0, 7.0])
  params["score_hidden"]["kernel"] = jnp.eye(2)
  params["score"]["kernel"] = jnp.array([[100.0], [0.0]])  # scores the first feature: a wins
  np.testing.assert_allclose(module.apply({"params": params}, inputs), [[5.0, 0.0]], atol=1e-5)
  np.testing.assert_allclose(module.apply({"params": params}, inputs, {"a": jnp.array([False]), "b": jnp.array([True])}),
                             [[0.0, 7.0]], atol=1e-6)
