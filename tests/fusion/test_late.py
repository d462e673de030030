"""Late fusion: each combination against NumPy float64, voting at inference only, bad combine."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy.special import log_softmax

from mmjax.fusion import LateFusion
from tests.fusion.conftest import make_batch


def reference(combine, params, inputs, present, train):
  params = jax.tree.map(lambda a: np.asarray(a, np.float64), params["params"])
  names = sorted(inputs)
  log_probs = {
      n: log_softmax(np.asarray(getattr(inputs[n], "pooled", inputs[n]), np.float64) @ params[f"{n}_head"]["kernel"]
                     + params[f"{n}_head"]["bias"], axis=-1)
      for n in names
  }
  batch, classes = log_probs[names[0]].shape
  out = np.zeros((batch, classes))
  for b in range(batch):
    here = [n for n in names if present[n][b]]
    if not here:
      out[b] = -np.log(classes)
      continue
    if combine == "learned":
      logits = np.array([params["combination_logits"][names.index(n)] for n in here])
      weights = np.exp(logits) / np.exp(logits).sum()
    else:
      weights = np.full(len(here), 1 / len(here))
    mean = log_softmax(sum(w * log_probs[n][b] for w, n in zip(weights, here)))
    if combine == "vote" and not train:
      votes = np.bincount([np.argmax(log_probs[n][b]) for n in here], minlength=classes)
      out[b] = np.log((votes + np.exp(mean)) / (len(here) + 1))
    else:
      out[b] = mean
  return out


class AgainstNumpyTest(chex.TestCase):
  """Outputs against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(combine=["mean", "learned", "vote"], train=[False, True])
  def test_against_numpy(self, combine, train):
    inputs, present = make_batch(2)
    module = LateFusion(5, combine=combine)
    variables = module.init(jax.random.key(0), inputs, present)
    if combine == "learned":  # unequal weights
      variables = {"params": {**variables["params"], "combination_logits": jnp.array([0.5, -1.0, 2.0])}}
    got = self.variant(lambda v, x, p: module.apply(v, x, p, train=train))(variables, inputs, present)
    want = reference(combine, variables, inputs, {n: np.asarray(p) for n, p in present.items()}, train)
    chex.assert_shape(got, (5, 5))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert module.outputs_predictions


def test_votes_outweigh_confidence_and_confidence_breaks_ties():
  module = LateFusion(2, combine="vote")
  names = ("a", "b", "c")
  inputs = {n: jnp.ones((1, 1)) for n in names}
  variables = module.init(jax.random.key(0), inputs)
  # a and b lean mildly to class 0, c is very sure of class 1: the mean favours 1, the vote 0.
  leaning = {"a": [0.2, 0.0], "b": [0.2, 0.0], "c": [0.0, 9.0]}
  params = {f"{n}_head": {"kernel": jnp.zeros((1, 2)), "bias": jnp.array(leaning[n])} for n in names}
  vote = module.apply({"params": params}, inputs)
  mean = module.apply({"params": params}, inputs, train=True)
  assert int(jnp.argmax(vote)) == 0 and int(jnp.argmax(mean)) == 1
  # With only a and c present the votes tie, and c's confidence decides.
  a_and_c = {"a": jnp.array([True]), "b": jnp.array([False]), "c": jnp.array([True])}
  tie = module.apply({"params": params}, inputs, a_and_c)
  assert int(jnp.argmax(tie)) == 1


def test_unknown_combination_is_rejected():
  message = r"LateFusion: unknown combine 'max'; valid choices: \['mean', 'learned', 'vote'\]"
  with pytest.raises(ValueError, match=message):
    LateFusion(3, combine="max").init(jax.random.key(0), {"a": jnp.ones((1, 2))})
