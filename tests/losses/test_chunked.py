"""Chunked CLIP and SigLIP against the dense losses: same value and gradients, in O(B · chunk) memory."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import losses

# Each case: the dense loss and its chunked twin, with the scalar arguments they take.
CASES = {
    "clip": (losses.clip_loss, losses.chunked_clip_loss, (np.log(1 / 0.07),)),
    "siglip": (losses.siglip_loss, losses.chunked_siglip_loss, (np.log(10.0), -10.0)),
}


def _normalised(rng, shape):
  x = rng.normal(size=shape)
  return jnp.asarray(x / np.linalg.norm(x, axis=-1, keepdims=True), jnp.float32)


def _inputs(name, batch, dim=6, seed=0):
  rng = np.random.default_rng(seed)
  scalars = tuple(jnp.float32(value) for value in CASES[name][2])
  return (_normalised(rng, (batch, dim)), _normalised(rng, (batch, dim)), *scalars)


def _value_and_grads(loss, args, **kwargs):
  return jax.jit(jax.value_and_grad(functools.partial(loss, **kwargs), argnums=tuple(range(len(args)))))(*args)


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("batch,chunk_size", [(37, 8), (37, 1), (37, 64), (16, 16), (1, 4)])
def test_value_and_gradients_equal_dense(name, batch, chunk_size, assert_close):
  dense, chunked, _ = CASES[name]
  args = _inputs(name, batch)
  assert_close(_value_and_grads(chunked, args, chunk_size=chunk_size), _value_and_grads(dense, args))


@pytest.mark.parametrize("name", sorted(CASES))
@pytest.mark.parametrize("chunk_size", [3, 8])
def test_mask_matches_dense_and_ignores_padding_rows(name, chunk_size, assert_close):
  dense, chunked, _ = CASES[name]
  image, text, *scalars = _inputs(name, 20, seed=1)
  keep = np.random.default_rng(2).random(20) < 0.6
  # Masked rows hold garbage; it must reach neither the value nor the gradients.
  image, text = image.at[~keep].set(1e4), text.at[~keep].set(-1e4)
  args = (image, text, *scalars)
  got = _value_and_grads(chunked, args, chunk_size=chunk_size, mask=jnp.asarray(keep))
  assert_close(got, _value_and_grads(dense, args, mask=jnp.asarray(keep)))
  for grad in got[1][:2]:
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~keep] == 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_scale_beyond_clamp_has_zero_gradient_like_dense(name, assert_close):
  dense, chunked, _ = CASES[name]
  image, text, _, *bias = _inputs(name, 12)
  args = (image, text, jnp.float32(np.log(200.0)), *bias)
  got = _value_and_grads(chunked, args, chunk_size=5)
  assert_close(got, _value_and_grads(dense, args))
  assert float(got[1][2]) == 0.0


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_over_independent_problems(name, assert_close):
  dense, chunked, scalars = CASES[name]
  rng = np.random.default_rng(3)
  image, text = _normalised(rng, (3, 11, 5)), _normalised(rng, (3, 11, 5))
  scalars = tuple(jnp.full((3,), value, jnp.float32) for value in scalars)
  grad = lambda loss, **kwargs: jax.vmap(jax.value_and_grad(functools.partial(loss, **kwargs), argnums=(0, 1)))
  assert_close(grad(chunked, chunk_size=4)(image, text, *scalars), grad(dense)(image, text, *scalars))


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_inputs_give_float32_loss(name):
  dense, chunked, _ = CASES[name]
  image, text, *scalars = _inputs(name, 10)
  got = chunked(image.astype(jnp.bfloat16), text.astype(jnp.bfloat16), *scalars, chunk_size=4)
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, dense(image, text, *scalars), rtol=2e-2)


@pytest.mark.parametrize("name", sorted(CASES))
def test_memory_grows_with_chunk_not_with_batch_squared(name):
  dense, chunked, num_scalars = CASES[name][0], CASES[name][1], len(CASES[name][2])
  batch, chunk_size, dim = 2048, 64, 8
  shapes = (jax.ShapeDtypeStruct((batch, dim), jnp.float32),) * 2 + (jax.ShapeDtypeStruct((), jnp.float32),) * num_scalars

  def temp_bytes(loss):
    step = jax.jit(jax.value_and_grad(loss, argnums=tuple(range(len(shapes)))))
    return step.lower(*shapes).compile().memory_analysis().temp_size_in_bytes

  logits_bytes = batch * batch * 4
  assert temp_bytes(dense) >= logits_bytes
  # A handful of [chunk, B] float32 buffers, against at least one [B, B] for the dense loss.
  assert temp_bytes(functools.partial(chunked, chunk_size=chunk_size)) < 8 * chunk_size * batch * 4 < logits_bytes / 2


def _clip_reference(image, text, scale):
  """The CLIP loss in float64 NumPy, from the float32 embeddings: an independent reference."""
  logits = scale * np.asarray(image, np.float64) @ np.asarray(text, np.float64).T

  def log_softmax_diagonal(x):
    shifted = x - x.max(axis=1, keepdims=True)
    return np.diagonal(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))

  return -0.5 * (log_softmax_diagonal(logits).mean() + log_softmax_diagonal(logits.T).mean())


def _clip_value_and_grads(loss, image, text, scale, **kwargs):
  return _value_and_grads(functools.partial(loss, max_scale=None, **kwargs), (image, text, jnp.float32(np.log(scale))))


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e8])
@pytest.mark.parametrize("batch,chunk_size", [(2, 1), (5, 2), (8, 512)])
def test_all_equal_logits_give_log_batch_at_any_scale(scale, batch, chunk_size):
  """Every logit equal: each softmax is uniform, the loss is log B exactly and nothing moves it."""
  embeddings = jnp.full((batch, 4), 0.5, jnp.float32)
  value, grads = _clip_value_and_grads(losses.chunked_clip_loss, embeddings, embeddings, scale, chunk_size=chunk_size)
  dense_value, dense_grads = _clip_value_and_grads(losses.clip_loss, embeddings, embeddings, scale)
  np.testing.assert_allclose(value, np.log(batch), rtol=1e-6)
  np.testing.assert_allclose(dense_value, np.log(batch), rtol=1e-6)
  # The gradients vanish (a uniform softmax against identical columns); rounding leaves at most
  # a few ulps of the logits, scaled back by the scale.
  for got, want in zip(grads, dense_grads):
    np.testing.assert_allclose(got, 0.0, atol=1e-6 * scale)
    np.testing.assert_allclose(want, 0.0, atol=1e-6 * scale)


@pytest.mark.parametrize("scale", [1.0, 1e4, 1e8])
@pytest.mark.parametrize("chunk_size", [1, 8, 512])
def test_near_duplicate_pairs_equal_dense_and_float64_at_any_scale(scale, chunk_size, assert_close):
  """Issue 12's case: the chunked loss once gave 2e-4 and 2.75 at scales 1e4 and 1e8 where the
  dense one gives 0, from a maximum and a positive logit rounded apart."""
  rng = np.random.default_rng(0)
  image = _normalised(rng, (32, 16))
  text = _normalised(np.random.default_rng(1), (32, 16)) * 1e-3 + image
  text = text / jnp.linalg.norm(text, axis=1, keepdims=True)
  got = _clip_value_and_grads(losses.chunked_clip_loss, image, text, scale, chunk_size=chunk_size)
  dense = _clip_value_and_grads(losses.clip_loss, image, text, scale)
  reference = _clip_reference(image, text, scale)
  np.testing.assert_allclose(got[0], reference, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(dense[0], reference, rtol=1e-5, atol=1e-7)
  assert_close(got, dense)


@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_large_logits_a_few_units_apart_equal_float64(scale):
  """Every embedding within ~1/√scale of one direction, so the logits differ by a few units: a
  loss that is neither 0 nor log B, where a constant or a dropped term anywhere shows."""
  rng = np.random.default_rng(2)
  spread = scale**-0.5
  image = _normalised(rng, (12, 8)) * spread + jnp.ones(8, jnp.float32)
  text = image + jnp.asarray(rng.normal(size=(12, 8)) * spread * 0.3, jnp.float32)
  image, text = (x / jnp.linalg.norm(x, axis=1, keepdims=True) for x in (image, text))
  got = _clip_value_and_grads(losses.chunked_clip_loss, image, text, scale, chunk_size=5)
  reference = _clip_reference(image, text, scale)
  assert 0.05 < reference < np.log(12) - 0.05
  # float32 dot products of unit vectors are exact to ~1e-7, i.e. ~1e-3 of a logit at scale 1e4.
  np.testing.assert_allclose(got[0], reference, rtol=2e-3)
  # Against the dense loss, up to float32 sums of B terms taken in another order. The log-scale
  # gradient Σ ∂L/∂logit · logit sums terms of size ~scale that cancel (each row's ∂L/∂logit sums
  # to 0), so its float32 error is ~1e-7 · scale, not relative to its own size.
  dense = _clip_value_and_grads(losses.clip_loss, image, text, scale)
  np.testing.assert_allclose(got[0], dense[0], rtol=1e-4)
  for got_grad, dense_grad in zip(got[1][:2], dense[1][:2]):
    np.testing.assert_allclose(got_grad, dense_grad, rtol=1e-4, atol=1e-4 * np.max(np.abs(dense_grad)))
  np.testing.assert_allclose(got[1][2], dense[1][2], atol=1e-7 * scale)


@pytest.mark.parametrize("chunk_size", [1, 2, 512])
def test_huge_logits_keep_the_loss_and_gradients_finite(chunk_size):
  """Found by tests/test_properties.py: at logits ~2e9 the backward pass's recomputed logits
  differ from the forward pass's by more than exp can take."""
  image = np.full((2, 8), 7158.0, np.float32)
  text = np.concatenate([np.zeros((2, 1)), np.full((2, 7), 823.0)], axis=1).astype(np.float32)
  compute = lambda loss, **kwargs: jax.jit(
      jax.value_and_grad(lambda a, b, t: loss(a, b, t, **kwargs), argnums=(0, 1, 2))
  )(image, text, jnp.float32(4.0))
  value, grads = compute(losses.chunked_clip_loss, chunk_size=chunk_size)
  dense_value, dense_grads = compute(losses.clip_loss)
  # Every logit is the same ~2e9 number, so both softmaxes are uniform: log 2, as the dense loss.
  np.testing.assert_allclose(value, np.log(2.0), rtol=1e-6)
  np.testing.assert_allclose(dense_value, np.log(2.0), rtol=1e-6)
  for got, want in zip(grads, dense_grads):
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=1e-6 * max(1.0, float(np.max(np.abs(want)))))


class VariantsTest(chex.TestCase):
  """The same numbers traced and untraced: the chunked kernels' custom VJPs and scans must not
  depend on being compiled."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_clip_value_and_gradients_equal_float64(self):
    rng = np.random.default_rng(5)
    image, text = _normalised(rng, (9, 6)), _normalised(rng, (9, 6))
    loss = functools.partial(losses.chunked_clip_loss, chunk_size=4, max_scale=None)
    value, grads = self.variant(jax.value_and_grad(loss, argnums=(0, 1)))(image, text, jnp.float32(np.log(20.0)))
    chex.assert_shape(value, ())
    chex.assert_shape(grads, (9, 6))
    np.testing.assert_allclose(value, _clip_reference(image, text, 20.0), rtol=1e-5)
    chex.assert_trees_all_close(grads, jax.value_and_grad(losses.clip_loss, argnums=(0, 1))(image, text, jnp.float32(np.log(20.0)))[1], rtol=1e-5, atol=1e-7)


def test_recomputed_shifted_logits_are_capped_at_exp_0():
  """The backward pass's ``exp(logit − saved max)`` cannot exceed 1 even where the recomputed logit
  rounds above the maximum the forward pass saved (`blockwise._exp_at_most_1`)."""
  from mmjax.losses.blockwise import _exp_at_most_1

  shifted = jnp.float32([-50.0, -1.0, 0.0, 1e-6, 0.5, 3.0, 1e30])
  np.testing.assert_allclose(_exp_at_most_1(shifted), np.exp(np.minimum(np.float64(shifted), 0)), rtol=1e-6)
  assert np.all(np.asarray(_exp_at_most_1(shifted))[3:] == 1.0)


@pytest.mark.parametrize("name", ["clip", "siglip"])
@pytest.mark.parametrize("chunk_size,batch,steps", [(1, 5, 5), (2, 5, 3), (8, 5, 1)])
def test_rows_are_scanned_chunk_size_at_a_time(name, chunk_size, batch, steps):
  """The forward pass scans ``ceil(B / chunk)`` chunks of ``chunk = clip(chunk_size, 1, B)`` rows."""
  from tests.jaxprs import equations

  loss = {"clip": lambda a, b: losses.chunked_clip_loss(a, b, 0.0, chunk_size=chunk_size),
          "siglip": lambda a, b: losses.chunked_siglip_loss(a, b, 0.0, 0.0, chunk_size=chunk_size)}[name]
  embeddings = jnp.zeros((batch, 3))
  scans = [e for e in equations(jax.make_jaxpr(loss)(embeddings, embeddings).jaxpr) if e.primitive.name == "scan"]
  assert scans and {e.params["length"] for e in scans} == {steps}
