"""Gated multimodal units against the paper's equations (two modalities, sigmoid gate) and the softmax
generalisation, in NumPy float64, with modalities missing."""

import chex
import numpy as np
from scipy.special import expit, softmax

from mmjax.fusion import GatedFusion, GatedMultimodalUnit
from tests.fusion.conftest import init_and_apply, make_batch


def _numpy_inputs(inputs, present):
  names = sorted(inputs)
  xs = [np.asarray(getattr(inputs[n], "pooled", inputs[n]), np.float64) for n in names]
  return names, xs, [np.asarray(present[n]) for n in names]


def _dense(params, x):
  return x @ np.asarray(params["kernel"], np.float64) + np.asarray(params["bias"], np.float64)


class AgainstNumpyTest(chex.TestCase):
  """Outputs against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_two_modality_unit_follows_arevalo_et_al(self):
    inputs, present = make_batch(4, ("audio", "image"))
    module = GatedMultimodalUnit(6)
    params, got = init_and_apply(module, inputs, present, self.variant, seed=0)
    chex.assert_shape(got, (5, 6))
    names, (x1, x2), (p1, p2) = _numpy_inputs(inputs, present)
    h1, h2 = (np.tanh(_dense(params[f"{n}_hidden"], x)) for n, x in zip(names, (x1, x2)))
    z = expit(_dense(params["gate"], np.concatenate([x1, x2], -1)))
    both = z * h1 + (1 - z) * h2
    want = np.where((p1 & p2)[:, None], both, np.where(p1[:, None], h1, np.where(p2[:, None], h2, 0)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert np.any(p1 ^ p2) and not np.all(p1 | p2)  # the batch has one- and no-modality samples

  @chex.variants(with_jit=True, without_jit=True)
  def test_n_modality_unit_gates_with_a_softmax_over_present_modalities(self):
    inputs, present = make_batch(5)
    module = GatedFusion(4)
    params, got = init_and_apply(module, inputs, present, self.variant, seed=1)
    chex.assert_shape(got, (5, 4))
    names, xs, here = _numpy_inputs(inputs, present)
    xs = [np.where(p[:, None], x, 0) for x, p in zip(xs, here)]  # absent inputs read as zeros
    hidden = np.stack([np.tanh(_dense(params[f"{n}_hidden"], x)) for n, x in zip(names, xs)], 1)  # [B, M, F]
    logits = _dense(params["gate"], np.concatenate(xs, -1)).reshape(len(xs[0]), len(names), 4)
    for b in range(len(got)):
      rows = [m for m in range(len(names)) if here[m][b]]
      want = np.sum(softmax(logits[b, rows], axis=0) * hidden[b, rows], 0) if rows else np.zeros(4)
      np.testing.assert_allclose(got[b], want, rtol=1e-5, atol=1e-6)


