"""Image encoder: shapes, norms, per-sample independence, dtypes and errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders import ConvEncoder
from mmjax.encoders import layers

IMAGES = jax.random.normal(jax.random.key(0), (3, 8, 8, 1))


@pytest.mark.parametrize("norm", sorted(layers.NORMS))
def test_every_norm_gives_per_sample_features(norm):
  encoder = ConvEncoder(features=6, channels=(8, 16), strides=(1, 2), norm=norm)
  variables = jax.jit(encoder.init)(jax.random.key(1), IMAGES)
  apply = jax.jit(encoder.apply)
  out = apply(variables, IMAGES)
  assert out.shape == (3, 6) and np.all(np.isfinite(out))
  # No statistic is shared across the batch: a sample's features do not depend on its neighbours.
  np.testing.assert_allclose(apply(variables, IMAGES[1:2])[0], out[1], atol=1e-5)


def test_strides_set_the_downsampling():
  encoder = ConvEncoder(features=4, channels=(4, 4, 4), strides=(2, 2, 2))
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  _, intermediates = jax.jit(lambda v, x: encoder.apply(v, x, capture_intermediates=True))(variables, IMAGES)
  assert intermediates["intermediates"]["stage2"]["conv"]["__call__"][0].shape == (3, 1, 1, 4)


def test_remat_changes_memory_not_results():
  plain = ConvEncoder(features=4, channels=(8, 8), strides=(1, 2))
  variables = jax.jit(plain.init)(jax.random.key(0), IMAGES)

  def grads(module):
    return jax.jit(jax.grad(lambda v: jnp.sum(module.apply(v, IMAGES) ** 2)))(variables)

  for a, b in zip(jax.tree.leaves(grads(plain)), jax.tree.leaves(grads(plain.clone(remat=True)))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_bfloat16_computation_keeps_float32_parameters():
  encoder = ConvEncoder(features=4, channels=(8,), strides=(1,), dtype=jnp.bfloat16)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  assert jax.jit(encoder.apply)(variables, IMAGES).dtype == jnp.bfloat16


def test_bad_configuration_and_input_raise_clear_errors():
  with pytest.raises(ValueError, match=r"channels \(8, 16\) and strides \(1,\) must have the same length"):
    ConvEncoder(features=4, channels=(8, 16), strides=(1,)).init(jax.random.key(0), IMAGES)
  with pytest.raises(ValueError, match=r"images: expected shape \(\?, \?, \?, \?\), got \(3, 8, 8\)"):
    ConvEncoder(features=4).init(jax.random.key(0), IMAGES[..., 0])
  with pytest.raises(ValueError, match=r"Unknown norm 'batch'; valid choices"):
    ConvEncoder(features=4, norm="batch").init(jax.random.key(0), IMAGES)
