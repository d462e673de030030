"""Property-based tests (hypothesis) of the GAN and alignment losses: random shapes, masks and extreme
but finite values give finite losses and gradients; penalties stay finite through their double
backward pass; masked rows receive no gradient.
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from mmjax import losses

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
# A few batch sizes (1 included): every new shape costs a compilation, the values vary freely.
sizes = st.sampled_from([1, 2, 5])
extreme = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)
NAMES = sorted(losses.GAN_LOSSES)


@functools.lru_cache(maxsize=None)
def _discriminator_step(name):
  return jax.jit(jax.value_and_grad(
      lambda r, f, rm, fm: losses.gan_loss(name).discriminator(r, f, real_mask=rm, fake_mask=fm), argnums=(0, 1)
  ))


@functools.lru_cache(maxsize=None)
def _generator_step(name):
  return jax.jit(jax.value_and_grad(lambda f, m: losses.gan_loss(name).generator(f, mask=m)))


@SETTINGS
@given(name=st.sampled_from(NAMES), real_size=sizes, fake_size=sizes, data=st.data())
def test_gan_losses_are_finite_on_extreme_logits(name, real_size, fake_size, data):
  real = data.draw(hnp.arrays(np.float32, (real_size,), elements=extreme), label="real")
  fake = data.draw(hnp.arrays(np.float32, (fake_size,), elements=extreme), label="fake")
  real_mask = data.draw(hnp.arrays(np.bool_, (real_size,)), label="real_mask")  # all-False included
  fake_mask = data.draw(hnp.arrays(np.bool_, (fake_size,)), label="fake_mask")
  value, (grad_real, grad_fake) = _discriminator_step(name)(real, fake, real_mask, fake_mask)
  assert np.isfinite(value) and np.all(np.isfinite(grad_real)) and np.all(np.isfinite(grad_fake)), name
  assert not np.any(np.asarray(grad_real)[~real_mask]) and not np.any(np.asarray(grad_fake)[~fake_mask])
  if name in ("minimax", "non_saturating", "hinge", "least_squares"):
    assert value >= 0, (name, value)
  g_value, g_grad = _generator_step(name)(fake, fake_mask)
  assert np.isfinite(g_value) and np.all(np.isfinite(g_grad)), name
  assert not np.any(np.asarray(g_grad)[~fake_mask])
  if name == "minimax":
    assert g_value <= 0


def _mlp_critic(params, x):
  hidden = jnp.tanh(x.reshape(x.shape[0], -1) @ params["w1"])
  return hidden @ params["w2"] + jnp.sum(x.reshape(x.shape[0], -1), axis=1) * params["skip"]


@functools.lru_cache(maxsize=None)
def _penalty_step(kind):
  def penalty(params, real, fake, mask, key):
    critic = functools.partial(_mlp_critic, params)
    if kind == "gp":
      return losses.gradient_penalty(critic, key, real, fake, mask=mask)
    return losses.r1_penalty(critic, real, mask=mask)

  return jax.jit(jax.value_and_grad(penalty))


@SETTINGS
@given(
    kind=st.sampled_from(["gp", "r1"]),
    batch=sizes,
    event=st.sampled_from([(1,), (3,), (2, 2, 1)]),
    skip=st.sampled_from([0.0, 1.0]),
    data=st.data(),
)
def test_penalties_are_finite_with_finite_double_gradients(kind, batch, event, skip, data):
  real = data.draw(hnp.arrays(np.float32, (batch, *event), elements=extreme), label="real")
  fake = data.draw(hnp.arrays(np.float32, (batch, *event), elements=extreme), label="fake")
  mask = data.draw(hnp.arrays(np.bool_, (batch,)), label="mask")
  size = int(np.prod(event))
  # Saturated tanh units (huge inputs) and skip=0 give exactly zero input gradients: the WGAN-GP
  # norm's square root must not turn them into NaN gradients.
  params = {"w1": jnp.full((size, 4), 0.5), "w2": jnp.float32([1.0, -1.0, 0.5, 2.0]), "skip": jnp.float32(skip)}
  value, grads = _penalty_step(kind)(params, real, fake, mask, jax.random.key(batch))
  assert np.isfinite(value) and value >= 0, value
  for grad in jax.tree.leaves(grads):
    assert np.all(np.isfinite(grad)), kind


@functools.lru_cache(maxsize=None)
def _lazy(every):
  return jax.jit(lambda x, step: losses.lazy_r1_penalty(lambda x: jnp.sum(jnp.sin(x), axis=1), x, step, every=every))


@SETTINGS
@given(every=st.integers(1, 5), step=st.integers(0, 2**20), batch=st.integers(1, 4))
def test_lazy_r1_is_scaled_on_due_steps_only(every, step, batch):
  x = np.linspace(-1, 1, batch * 2, dtype=np.float32).reshape(batch, 2)
  got = _lazy(every)(x, np.int32(step))
  full = losses.r1_penalty(lambda x: jnp.sum(jnp.sin(x), axis=1), x)
  np.testing.assert_allclose(got, every * full if step % every == 0 else 0.0, rtol=1e-6)


@functools.lru_cache(maxsize=None)
def _cycle_step(distance):
  return jax.jit(jax.value_and_grad(
      lambda a, ac, b, bc, am, bm: losses.cycle_consistency_loss(a, ac, b, bc, distance=distance, first_mask=am, second_mask=bm),
      argnums=(1, 3),
  ))


@SETTINGS
@given(
    distance=st.sampled_from(["l1", "l2"]),
    first_shape=st.sampled_from([(1, 1), (3, 2), (2, 2, 2, 1)]),
    second_shape=st.sampled_from([(1, 4), (5, 3)]),
    data=st.data(),
)
def test_cycle_consistency_is_finite_and_nonnegative(distance, first_shape, second_shape, data):
  arrays = [data.draw(hnp.arrays(np.float32, shape, elements=extreme)) for shape in (first_shape, first_shape, second_shape, second_shape)]
  masks = [data.draw(hnp.arrays(np.bool_, (shape[0],))) for shape in (first_shape, second_shape)]
  value, grads = _cycle_step(distance)(*arrays, *masks)
  assert np.isfinite(value) and value >= 0
  for grad, mask in zip(grads, masks):
    assert np.all(np.isfinite(grad)) and not np.any(np.asarray(grad)[~mask])


@functools.lru_cache(maxsize=None)
def _adversarial_step():
  def loss(first, second, weights, scale, first_mask, second_mask):
    return losses.domain_adversarial_loss(
        lambda e: e @ weights, first, second, scale=scale, first_mask=first_mask, second_mask=second_mask
    )

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))


@SETTINGS
@given(first_size=sizes, second_size=sizes, dim=st.sampled_from([1, 4]), data=st.data())
def test_domain_adversarial_loss_is_finite_and_reverses_exactly(first_size, second_size, dim, data):
  first = data.draw(hnp.arrays(np.float32, (first_size, dim), elements=extreme), label="first")
  second = data.draw(hnp.arrays(np.float32, (second_size, dim), elements=extreme), label="second")
  weights = data.draw(hnp.arrays(np.float32, (dim,), elements=st.floats(-10, 10, width=32)), label="weights")
  masks = (data.draw(hnp.arrays(np.bool_, (first_size,))), data.draw(hnp.arrays(np.bool_, (second_size,))))
  scale = np.float32(data.draw(st.floats(0, 10)))
  value, (grad_first, grad_second, grad_weights) = _adversarial_step()(first, second, weights, scale, *masks)
  assert np.isfinite(value) and value >= 0
  for grad in (grad_first, grad_second, grad_weights):
    assert np.all(np.isfinite(grad))
  assert not np.any(np.asarray(grad_first)[~masks[0]]) and not np.any(np.asarray(grad_second)[~masks[1]])
  # Without the reversal (scale −1 flips it back) the embeddings get the plain gradient, opposite in sign.
  _, (plain_first, _, _) = _adversarial_step()(first, second, weights, np.float32(-1.0), *masks)
  np.testing.assert_allclose(grad_first, -scale * np.asarray(plain_first), rtol=1e-5, atol=1e-30)
