"""Multiplicative interactions against NumPy float64 (the paper's zᵀ𝕎x + xᵀV + zᵀU + b and its diagonal
and scalar forms), chained over three modalities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.fusion import MultiplicativeFusion, MultiplicativeInteraction


def _np(a):
  return np.asarray(a, np.float64)


def interaction(form, params, x, z):
  """f(x, z) written out from the parameters."""
  u = _np(params["bias"]["kernel"])
  b = _np(params["bias"]["bias"])
  if form == "matrix":
    tensor = _np(params["weights"]["kernel"]).reshape(z.shape[1], x.shape[1], -1)  # 𝕎[z, x, f]
    v = _np(params["weights"]["bias"]).reshape(x.shape[1], -1)
    return np.einsum("bz,zxf,bx->bf", z, tensor, x) + x @ v + z @ u + b
  scale = z @ _np(params["scale"]["kernel"]) + _np(params["scale"]["bias"])  # [B, F] or [B, 1]
  return scale * (x @ _np(params["projection"]["kernel"])) + z @ u + b


@pytest.mark.parametrize("form", ["matrix", "vector", "scalar"])
def test_fusion_chains_interactions_in_sorted_order(form, batch):
  inputs, present = batch(6)
  module = MultiplicativeFusion(4, form=form)
  params = jax.jit(module.init)(jax.random.key(0), inputs, present)["params"]
  got = jax.jit(module.apply)({"params": params}, inputs, present)
  filled = {
      n: np.where(np.asarray(present[n])[:, None], _np(getattr(x, "pooled", x)), _np(params[f"{n}_absent"]["embedding"]))
      for n, x in inputs.items()
  }
  want = interaction(form, params["text_interaction"],
                     interaction(form, params["image_interaction"], filled["audio"], filled["image"]), filled["text"])
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_generated_weights_depend_on_the_context():
  """For a fixed z the layer is affine in x, and its slope changes with z (matrix form: a full matrix)."""
  layer = MultiplicativeInteraction(3)
  x, z = jnp.ones((1, 2)), jnp.ones((1, 4))
  variables = layer.init(jax.random.key(0), x, z)
  slope = jax.jacobian(lambda x, z: layer.apply(variables, x, z)[0], argnums=0)
  first, second = slope(x, z)[:, 0], slope(x, -z)[:, 0]
  assert first.shape == (3, 2) and not np.allclose(first, second)


def test_unknown_form_is_rejected():
  with pytest.raises(ValueError, match=r"MultiplicativeInteraction: unknown form 'tensor'; valid choices"):
    MultiplicativeFusion(4, form="tensor").init(jax.random.key(0), {"a": jnp.ones((1, 2)), "b": jnp.ones((1, 2))})
