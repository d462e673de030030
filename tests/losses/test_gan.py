"""GAN losses and penalties against independent float64 references (SciPy, closed forms, finite differences)."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy.special import expit, log_expit

from mmjax import losses
from tests.losses.conftest import raises_exactly


def _numerical_grad(fn, x, eps=1e-6):
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[index] = eps
    grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
  return grad


# Float64 references, written from the papers' formulas with SciPy's log-sigmoid.
DISCRIMINATOR_REFERENCES = {
    "minimax": lambda r, f: np.mean(-log_expit(r)) + np.mean(-log_expit(-f)),
    "non_saturating": lambda r, f: np.mean(-log_expit(r)) + np.mean(-log_expit(-f)),
    "hinge": lambda r, f: np.mean(np.maximum(0, 1 - r)) + np.mean(np.maximum(0, 1 + f)),
    "least_squares": lambda r, f: 0.5 * np.mean((r - 1) ** 2) + 0.5 * np.mean(f**2),
    "wasserstein": lambda r, f: np.mean(f) - np.mean(r),
}
GENERATOR_REFERENCES = {
    "minimax": lambda f: np.mean(np.log1p(-expit(f))),
    "non_saturating": lambda f: np.mean(-np.log(expit(f))),
    "hinge": lambda f: -np.mean(f),
    "least_squares": lambda f: 0.5 * np.mean((f - 1) ** 2),
    "wasserstein": lambda f: -np.mean(f),
}
# The generator references above lose precision at extreme logits; these are exact there.
STABLE_GENERATOR_REFERENCES = dict(
    GENERATOR_REFERENCES,
    minimax=lambda f: np.mean(log_expit(-f)),
    non_saturating=lambda f: np.mean(-log_expit(f)),
)
NAMES = sorted(losses.GAN_LOSSES)


def _logits(seed, size, scale=3.0):
  return np.random.default_rng(seed).normal(scale=scale, size=size)


class AgainstReferenceTest(chex.TestCase):
  """Values and gradients against the float64 references, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=NAMES, sizes=[(1, 1), (5, 3), (16, 16)])
  def test_discriminator_loss_matches_reference(self, name, sizes):
    real_size, fake_size = sizes
    real, fake = _logits(real_size, real_size), _logits(100 + fake_size, fake_size)
    got = self.variant(losses.gan_loss(name).discriminator)(jnp.float32(real), jnp.float32(fake))
    chex.assert_shape(got, ())
    chex.assert_type(got, jnp.float32)
    np.testing.assert_allclose(got, DISCRIMINATOR_REFERENCES[name](real, fake), rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=NAMES, size=[1, 7])
  def test_generator_loss_matches_reference(self, name, size):
    fake = _logits(size, size)
    got = self.variant(losses.gan_loss(name).generator)(jnp.float32(fake))
    np.testing.assert_allclose(got, GENERATOR_REFERENCES[name](fake), rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*NAMES)
  def test_gradients_match_finite_differences_of_reference(self, name):
    real, fake = _logits(0, 4), _logits(1, 3)
    discriminator, generator = losses.gan_loss(name)
    reference = DISCRIMINATOR_REFERENCES[name]
    chex.assert_trees_all_close(
        self.variant(jax.grad(discriminator, argnums=(0, 1)))(jnp.float32(real), jnp.float32(fake)),
        (_numerical_grad(lambda r: reference(r, fake), real), _numerical_grad(lambda f: reference(real, f), fake)),
        rtol=1e-4, atol=1e-6,
    )
    np.testing.assert_allclose(
        self.variant(jax.grad(generator))(jnp.float32(fake)), _numerical_grad(GENERATOR_REFERENCES[name], fake),
        rtol=1e-4, atol=1e-6,
    )


EXTREME = np.array([-1e4, -200.0, -90.0, -30.0, 0.0, 30.0, 90.0, 200.0, 1e4])


@pytest.mark.parametrize("name", NAMES)
def test_extreme_logits_give_exact_finite_values_and_gradients(name):
  discriminator, generator = losses.gan_loss(name)
  real, fake = EXTREME, EXTREME[::-1].copy()
  value, grads = jax.value_and_grad(discriminator, argnums=(0, 1))(jnp.float32(real), jnp.float32(fake))
  np.testing.assert_allclose(value, DISCRIMINATOR_REFERENCES[name](real, fake), rtol=1e-6)
  g_value, g_grad = jax.value_and_grad(generator)(jnp.float32(fake))
  np.testing.assert_allclose(g_value, STABLE_GENERATOR_REFERENCES[name](fake), rtol=1e-6)
  for grad in (*grads, g_grad):
    assert np.all(np.isfinite(grad)), name


def test_saturation_of_the_minimax_generator_and_its_remedy():
  # Samples the discriminator rejects confidently: the minimax gradient vanishes, the
  # non-saturating one is -1/B per sample (Goodfellow et al. 2014, section 3).
  fake = jnp.full((4,), -30.0)
  np.testing.assert_allclose(jax.grad(losses.minimax_generator_loss)(fake), -expit(-30.0) / 4 * np.ones(4), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(losses.non_saturating_generator_loss)(fake), -0.25 * np.ones(4), rtol=1e-6)


def test_least_squares_targets():
  real, fake = _logits(2, 5), _logits(3, 4)
  got = losses.least_squares_discriminator_loss(jnp.float32(real), jnp.float32(fake), real_target=1.0, fake_target=-1.0)
  np.testing.assert_allclose(got, 0.5 * np.mean((real - 1) ** 2) + 0.5 * np.mean((fake + 1) ** 2), rtol=1e-6)
  got = losses.least_squares_generator_loss(jnp.float32(fake), target=0.0)
  np.testing.assert_allclose(got, 0.5 * np.mean(fake**2), rtol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_masks_leave_out_padding_rows(name):
  discriminator, generator = losses.gan_loss(name)
  real, fake = _logits(4, 6), _logits(5, 5)
  real_keep, fake_keep = np.array([1, 0, 1, 1, 0, 1], bool), np.array([0, 1, 1, 0, 1], bool)
  real_padded, fake_padded = np.where(real_keep, real, 1e4), np.where(fake_keep, fake, -1e4)
  value, (grad_real, grad_fake) = jax.value_and_grad(discriminator, argnums=(0, 1))(
      jnp.float32(real_padded), jnp.float32(fake_padded), real_mask=jnp.asarray(real_keep), fake_mask=jnp.asarray(fake_keep)
  )
  np.testing.assert_allclose(value, DISCRIMINATOR_REFERENCES[name](real[real_keep], fake[fake_keep]), rtol=1e-5)
  assert np.all(np.asarray(grad_real)[~real_keep] == 0) and np.all(np.asarray(grad_fake)[~fake_keep] == 0)
  value = generator(jnp.float32(fake_padded), mask=jnp.asarray(fake_keep))
  np.testing.assert_allclose(value, GENERATOR_REFERENCES[name](fake[fake_keep]), rtol=1e-5)
  # No valid row: nothing to average, the loss is 0.
  none = jnp.zeros(5, bool)
  assert float(generator(jnp.float32(fake), mask=none)) == 0.0


@pytest.mark.parametrize("name", NAMES)
def test_vmap_over_independent_problems(name):
  discriminator, generator = losses.gan_loss(name)
  real, fake = _logits(6, (3, 5)), _logits(7, (3, 4))
  got = jax.vmap(discriminator)(jnp.float32(real), jnp.float32(fake))
  np.testing.assert_allclose(got, [DISCRIMINATOR_REFERENCES[name](r, f) for r, f in zip(real, fake)], rtol=1e-5)
  got = jax.vmap(generator)(jnp.float32(fake))
  np.testing.assert_allclose(got, [GENERATOR_REFERENCES[name](f) for f in fake], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", NAMES)
def test_bfloat16_logits_give_float32_losses(name):
  real, fake = _logits(8, 8, scale=1.0), _logits(9, 8, scale=1.0)
  got = losses.gan_loss(name).discriminator(jnp.asarray(real, jnp.bfloat16), jnp.asarray(fake, jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, DISCRIMINATOR_REFERENCES[name](real, fake), rtol=2e-2, atol=2e-2)


# ---- Penalties ----------------------------------------------------------------------------------

DIM = 3
A = np.array([[2.0, 0.5, 0.0], [0.5, 1.0, -0.3], [0.0, -0.3, 0.5]])  # symmetric
B_VEC = np.array([0.3, -0.2, 0.1])


def quadratic_critic(b):
  """``D(x) = ½ xᵀAx + bᵀx`` per row: its input gradient is ``Ax + b``."""
  return lambda x: 0.5 * jnp.einsum("ni,ij,nj->n", x, jnp.float32(A), x) + x @ b


def _rows(seed, size, dim=DIM):
  return np.random.default_rng(seed).normal(size=(size, dim))


def _epsilon(key, size):
  # The interpolation coefficients, as `gradient_penalty` documents drawing them.
  return np.asarray(jax.random.uniform(key, (size,), jnp.float32), np.float64)


def test_gradient_penalty_of_quadratic_critic_matches_closed_form():
  real, fake, key = _rows(0, 6), _rows(1, 6), jax.random.key(3)
  epsilon = _epsilon(key, 6)[:, None]
  gradients = (epsilon * real + (1 - epsilon) * fake) @ A + B_VEC
  norms = np.linalg.norm(gradients, axis=1)
  expected = 7.0 * np.mean((norms - 1) ** 2)

  def penalty(b):
    return losses.gradient_penalty(quadratic_critic(b), key, jnp.float32(real), jnp.float32(fake), weight=7.0)

  value, grad_b = jax.jit(jax.value_and_grad(penalty))(jnp.float32(B_VEC))
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  # d/db of λ·mean((‖g‖ − 1)²) with ∂g/∂b = I.
  expected_grad = 7.0 * np.mean(2 * (norms - 1)[:, None] * gradients / norms[:, None], axis=0)
  np.testing.assert_allclose(grad_b, expected_grad, rtol=1e-4, atol=1e-6)


def test_r1_penalty_of_quadratic_critic_matches_closed_form():
  real = _rows(2, 5)
  gradients = real @ A + B_VEC

  def penalty(b):
    return losses.r1_penalty(quadratic_critic(b), jnp.float32(real), gamma=3.0)

  value, grad_b = jax.jit(jax.value_and_grad(penalty))(jnp.float32(B_VEC))
  np.testing.assert_allclose(value, 1.5 * np.mean(np.sum(gradients**2, axis=1)), rtol=1e-5)
  np.testing.assert_allclose(grad_b, 3.0 * np.mean(gradients, axis=0), rtol=1e-5)


# A small tanh MLP critic over a pair of modalities, in JAX and independently in NumPy float64.
RNG = np.random.default_rng(42)
W1, B1, W2 = RNG.normal(size=(4 + DIM, 5)) * 0.7, RNG.normal(size=5) * 0.1, RNG.normal(size=5)


def _flatten_pair(pair, xp):
  return xp.concatenate([pair["image"].reshape(pair["image"].shape[0], -1), pair["vector"]], axis=1)


def mlp_critic(pair):
  return jnp.tanh(_flatten_pair(pair, jnp) @ jnp.float32(W1) + jnp.float32(B1)) @ jnp.float32(W2)


def mlp_critic_row_numpy(flat_row):
  return np.tanh(flat_row @ W1 + B1) @ W2


def _pair(seed, size):
  rng = np.random.default_rng(seed)
  return {"image": rng.normal(size=(size, 2, 2, 1)), "vector": rng.normal(size=(size, DIM))}


def _row_gradients_numpy(pair):
  flat = _flatten_pair(pair, np)
  return np.stack([_numerical_grad(mlp_critic_row_numpy, row) for row in flat])


def _as_f32(tree):
  return jax.tree.map(jnp.float32, tree)


def test_gradient_penalty_of_mlp_critic_on_a_pair_matches_finite_differences():
  real, fake, key = _pair(0, 4), _pair(1, 4), jax.random.key(7)
  epsilon = _epsilon(key, 4)
  # One coefficient per row, shared by both modalities of the pair.
  mix = {k: epsilon.reshape((4,) + (1,) * (v.ndim - 1)) for k, v in real.items()}
  interpolates = {k: mix[k] * real[k] + (1 - mix[k]) * fake[k] for k in real}
  norms = np.linalg.norm(_row_gradients_numpy(interpolates), axis=1)
  got = jax.jit(lambda r, f: losses.gradient_penalty(mlp_critic, key, r, f))(_as_f32(real), _as_f32(fake))
  np.testing.assert_allclose(got, 10.0 * np.mean((norms - 1) ** 2), rtol=1e-4)


def test_r1_penalty_of_mlp_critic_on_a_pair_matches_finite_differences():
  real = _pair(2, 5)
  squared = np.sum(_row_gradients_numpy(real) ** 2, axis=1)
  got = jax.jit(lambda x: losses.r1_penalty(mlp_critic, x, gamma=10.0))(_as_f32(real))
  np.testing.assert_allclose(got, 5.0 * np.mean(squared), rtol=1e-4)


def test_penalties_differentiate_twice_through_an_mlp_critic():
  # d(penalty)/d(W2) against finite differences of the NumPy penalty (float64 all the way).
  real = _rows(3, 4, dim=2)
  w1, b1 = RNG.normal(size=(2, 3)), RNG.normal(size=3) * 0.1

  def jax_penalty(w2):
    critic = lambda x: jnp.tanh(x @ jnp.float32(w1) + jnp.float32(b1)) @ w2
    return losses.r1_penalty(critic, jnp.float32(real), gamma=2.0)

  def numpy_penalty(w2):
    # ∇ₓ tanh(xW1 + b1)·w2 = W1 (w2 ⊙ (1 − tanh²)) in closed form.
    hidden = np.tanh(real @ w1 + b1)
    gradients = ((1 - hidden**2) * w2) @ w1.T
    return np.mean(np.sum(gradients**2, axis=1))

  w2 = RNG.normal(size=3)
  np.testing.assert_allclose(jax_penalty(jnp.float32(w2)), numpy_penalty(w2), rtol=1e-5)
  np.testing.assert_allclose(jax.grad(jax_penalty)(jnp.float32(w2)), _numerical_grad(numpy_penalty, w2), rtol=1e-4)


def test_gradient_penalty_is_finite_where_the_critic_is_flat():
  # relu(x·w − 100) is flat at these inputs: ‖∇‖ = 0, penalty λ, and its gradient 0, not NaN.
  critic = lambda w: (lambda x: jax.nn.relu(x @ w - 100.0))
  real, fake = jnp.float32(_rows(4, 3)), jnp.float32(_rows(5, 3))
  value, grad = jax.value_and_grad(lambda w: losses.gradient_penalty(critic(w), jax.random.key(0), real, fake))(
      jnp.ones(DIM)
  )
  assert float(value) == 10.0
  np.testing.assert_array_equal(grad, np.zeros(DIM))


def test_penalties_leave_out_masked_rows():
  real, fake, key = _rows(6, 5), _rows(7, 5), jax.random.key(1)
  keep = np.array([1, 1, 0, 1, 0], bool)
  garbage_real, garbage_fake = np.where(keep[:, None], real, 1e3), np.where(keep[:, None], fake, -1e3)
  critic = quadratic_critic(jnp.float32(B_VEC))
  got = losses.r1_penalty(critic, jnp.float32(garbage_real), mask=jnp.asarray(keep))
  np.testing.assert_allclose(got, losses.r1_penalty(critic, jnp.float32(real[keep])), rtol=1e-5)
  # The kept rows' coefficients are those of the full batch: compare with garbage-free inputs.
  got = losses.gradient_penalty(critic, key, jnp.float32(garbage_real), jnp.float32(garbage_fake), mask=jnp.asarray(keep))
  epsilon = _epsilon(key, 5)[:, None]
  norms = np.linalg.norm((epsilon * real + (1 - epsilon) * fake) @ A + B_VEC, axis=1)
  np.testing.assert_allclose(got, 10.0 * np.mean((norms[keep] - 1) ** 2), rtol=1e-5)
  assert float(losses.r1_penalty(critic, jnp.float32(real), mask=jnp.zeros(5, bool))) == 0.0


def test_masked_rows_whose_gradients_overflow_reach_neither_penalty_nor_its_gradient():
  """Masked rows take no part in the input gradients: a padding row of 1e30, whose squared gradient
  norm overflows float32, leaves the penalties and their parameter gradients those of the kept rows."""
  real, fake, key = _rows(13, 4), _rows(14, 4), jax.random.key(3)
  keep = np.array([1, 0, 1, 1], bool)
  garbage_real, garbage_fake = (jnp.float32(np.where(keep[:, None], x, 1e30)) for x in (real, fake))
  mask = jnp.asarray(keep)
  penalties = {
      "gradient_penalty": lambda b, r, f: losses.gradient_penalty(quadratic_critic(b), key, r, f, mask=mask),
      "r1_penalty": lambda b, r, f: losses.r1_penalty(quadratic_critic(b), r, mask=mask),
      "lazy_r1_penalty": lambda b, r, f: losses.lazy_r1_penalty(quadratic_critic(b), r, 0, every=2, mask=mask),
  }
  for name, penalty in penalties.items():
    value, grad = jax.value_and_grad(penalty)(jnp.float32(B_VEC), garbage_real, garbage_fake)
    want_value, want_grad = jax.value_and_grad(penalty)(jnp.float32(B_VEC), jnp.float32(real), jnp.float32(fake))
    np.testing.assert_allclose(value, want_value, rtol=1e-6, err_msg=name)
    np.testing.assert_allclose(grad, want_grad, rtol=1e-6, err_msg=name)


def test_a_batch_coupled_critic_s_masked_rows_add_nothing_to_the_kept_rows_gradients():
  """Score_k = x_k·w + Σ_i x_i·v (every row sees the whole batch, like a minibatch-stddev layer):
  the gradient of the kept rows' summed scores is w + n_kept·v at every kept row, whatever the
  masked rows hold."""
  w, v = jnp.float32([0.5, -1.0, 0.25]), jnp.float32([0.1, 0.2, -0.3])
  critic = lambda x: x @ w + jnp.sum(x @ v)  # noqa: E731
  keep = np.array([1, 1, 0, 1, 0], bool)
  real, fake = (jnp.float32(np.where(keep[:, None], _rows(seed, 5), 7.0)) for seed in (21, 22))
  mask = jnp.asarray(keep)
  squared_norm = float(jnp.sum(jnp.square(w + keep.sum() * v)))
  np.testing.assert_allclose(losses.r1_penalty(critic, real, gamma=4.0, mask=mask), 2.0 * squared_norm, rtol=1e-6)
  np.testing.assert_allclose(losses.lazy_r1_penalty(critic, real, 0, gamma=4.0, every=3, mask=mask), 6.0 * squared_norm, rtol=1e-6)
  np.testing.assert_allclose(
      losses.gradient_penalty(critic, jax.random.key(5), real, fake, mask=mask), 10.0 * (np.sqrt(squared_norm) - 1) ** 2, rtol=1e-5
  )


def test_gradient_penalty_draws_and_mixes_in_float32_and_hands_the_critic_the_inputs_dtype():
  """The interpolation coefficients are float32 draws whether or not jax_enable_x64 is on (the same
  penalty either way), and the critic sees interpolates in the dtype of the real batch."""
  real, fake, key = _rows(15, 4), _rows(16, 4), jax.random.key(4)
  critic = quadratic_critic(jnp.float32(B_VEC))
  want = losses.gradient_penalty(critic, key, jnp.float32(real), jnp.float32(fake))
  with jax.enable_x64(True):
    got = losses.gradient_penalty(critic, key, jnp.float32(real), jnp.float32(fake))
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, want)
  seen = []
  recording = lambda x: seen.append(x.dtype) or critic(x.astype(jnp.float32))
  losses.gradient_penalty(recording, key, jnp.asarray(real, jnp.bfloat16), jnp.asarray(fake, jnp.bfloat16))
  assert seen == [jnp.bfloat16]


def test_penalties_under_vmap_over_independent_problems():
  real, fake = jnp.float32(np.stack([_rows(8, 4), _rows(9, 4)])), jnp.float32(np.stack([_rows(10, 4), _rows(11, 4)]))
  keys = jax.random.split(jax.random.key(2), 2)
  critic = quadratic_critic(jnp.float32(B_VEC))
  got = jax.vmap(lambda k, r, f: losses.gradient_penalty(critic, k, r, f))(keys, real, fake)
  np.testing.assert_allclose(got, [losses.gradient_penalty(critic, k, r, f) for k, r, f in zip(keys, real, fake)], rtol=1e-6)
  got = jax.vmap(lambda r: losses.r1_penalty(critic, r))(real)
  np.testing.assert_allclose(got, [losses.r1_penalty(critic, r) for r in real], rtol=1e-6)


def test_lazy_r1_is_zero_off_schedule_and_scaled_on_it_with_one_compilation():
  real, every, traces = jnp.float32(_rows(12, 4)), 4, []

  def penalty_and_grad(b, step):
    traces.append(step)
    return jax.value_and_grad(lambda b: losses.lazy_r1_penalty(quadratic_critic(b), real, step, gamma=2.0, every=every))(b)

  compiled = jax.jit(penalty_and_grad)
  full_value, full_grad = jax.value_and_grad(lambda b: losses.r1_penalty(quadratic_critic(b), real, gamma=2.0))(jnp.float32(B_VEC))
  for step in range(2 * every + 1):
    value, grad = compiled(jnp.float32(B_VEC), jnp.int32(step))
    if step % every:
      assert float(value) == 0.0 and not np.any(grad)
    else:
      np.testing.assert_allclose(value, every * full_value, rtol=1e-6)
      np.testing.assert_allclose(grad, every * np.asarray(full_grad), rtol=1e-6)
  assert len(traces) == 1


def test_lazy_r1_defaults_to_stylegan2_every_16_steps_and_respects_the_mask():
  real = jnp.asarray(_rows(5, 4))
  mask = jnp.array([True, False, True, False])
  critic = quadratic_critic(jnp.ones(DIM, jnp.float32))
  due = [int(step) for step in range(34) if float(losses.lazy_r1_penalty(critic, real, step, gamma=2.0)) != 0.0]
  assert due == [0, 16, 32]
  # On a due step: 16 × the R1 penalty of the unmasked rows only, γ/2 · mean ‖∇D(x)‖².
  gradients = np.asarray(real, np.float64) @ A.T + 1.0
  want = 16 * 1.0 * np.mean(np.sum(gradients[[0, 2]] ** 2, axis=1))
  np.testing.assert_allclose(losses.lazy_r1_penalty(critic, real, 32, gamma=2.0, mask=mask), want, rtol=1e-5)


def test_lazy_r1_is_float32_on_and_off_schedule_even_with_64_bit_inputs():
  real = _rows(6, 4)
  with jax.enable_x64(True):
    critic = quadratic_critic(jnp.ones(DIM))
    penalties = [losses.lazy_r1_penalty(critic, jnp.asarray(real), jnp.int64(step), every=2) for step in (0, 1)]
    assert [penalty.dtype for penalty in penalties] == [jnp.float32, jnp.float32]
  assert float(penalties[1]) == 0.0 and float(penalties[0]) > 0.0


def test_lazy_r1_runs_the_discriminator_only_on_due_steps():
  calls = []

  def discriminator(x):
    jax.debug.callback(lambda: calls.append(1))
    return jnp.sum(x**2, axis=1)

  penalty = jax.jit(lambda step: losses.lazy_r1_penalty(discriminator, jnp.ones((2, 3)), step, every=3))
  for step in range(7):
    penalty(jnp.int32(step)).block_until_ready()
  jax.effects_barrier()
  assert len(calls) == 3  # steps 0, 3 and 6


_z, _i = jnp.zeros, lambda shape: jnp.zeros(shape, jnp.int32)


def _logit_cases(fn, name: str, mask_name: str, call) -> list:
  """The four checks of one logits argument and its mask; ``call(logits, mask)`` passes them."""
  return [
      (lambda: call(_z((4, 1)), None), f"{fn}: {name}: expected shape (B,), got (4, 1)."),
      (lambda: call(_i(4), None), f"{fn}: {name}: expected a float array, got int32."),
      (lambda: call(_z(4), jnp.ones(3, bool)), f"{fn}: {mask_name}: expected shape (B,) with B=4, got (3,)."),
      (lambda: call(_z(4), jnp.ones(4)), f"{fn}: {mask_name}: expected a bool array, got float32."),
  ]


def _loss_cases() -> list:
  cases = []
  for pair in losses.GAN_LOSSES.values():
    generator, discriminator = pair.generator, pair.discriminator
    cases += _logit_cases(generator.__name__, "fake_logits", "mask", lambda x, m, g=generator: g(x, mask=m))
    cases += _logit_cases(
        discriminator.__name__, "real_logits", "real_mask", lambda x, m, d=discriminator: d(x, _z(2), real_mask=m)
    )
    cases += _logit_cases(
        discriminator.__name__, "fake_logits", "fake_mask", lambda x, m, d=discriminator: d(_z(2), x, fake_mask=m)
    )
  return cases


def _first_column(x):
  return x[:, 0]


def _penalty_cases() -> list:
  """The input checks of the three penalties, each called as ``call(discriminator, real, mask)``."""
  penalties = {  # no JAX value is built at collection (see tools/mutation_pytest_plugin.py)
      "gradient_penalty": lambda d, real, mask: losses.gradient_penalty(d, jax.random.key(0), real, jax.tree.map(jnp.zeros_like, real), mask=mask),
      "r1_penalty": lambda d, real, mask: losses.r1_penalty(d, real, mask=mask),
      "lazy_r1_penalty": lambda d, real, mask: losses.lazy_r1_penalty(d, real, 0, mask=mask),
  }
  cases = []
  for fn, call in penalties.items():
    cases += [
        (lambda c=call: c(_first_column, {}, None), f"{fn}: real holds no array."),
        (lambda c=call: c(_first_column, _z(()), None), f"{fn}: real: expected shape (B,), got ()."),
        (lambda c=call: c(_first_column, _i((4, 3)), None), f"{fn}: real: expected a float array, got int32."),
        (lambda c=call: c(lambda x: x["a"][:, 0], {"a": _z((4, 3)), "b": _z((5, 3))}, None), f"{fn}: real['b']: expected shape (B, ?) with B=4, got (5, 3)."),
        (lambda c=call: c(_first_column, _z((4, 3)), jnp.ones(5, bool)), f"{fn}: mask: expected shape (B,) with B=4, got (5,)."),
        (lambda c=call: c(_first_column, _z((4, 3)), jnp.ones(4)), f"{fn}: mask: expected a bool array, got float32."),
        (lambda c=call: c(lambda x: x, _z((4, 3)), None), f"{fn}: discriminator output: expected shape (4,), got (4, 3)."),
        (lambda c=call: c(lambda x: jnp.concatenate([x[:, 0], x[:, 1]]), _z((4, 3)), None), f"{fn}: discriminator output: expected shape (4,), got (8,)."),
    ]
  return cases


@pytest.mark.parametrize(
    "call,message",
    _loss_cases()
    + _penalty_cases()
    + [
        (lambda: losses.gan_loss("wgan"), "Unknown GAN loss 'wgan'; valid choices: ['hinge', 'least_squares', 'minimax', 'non_saturating', 'wasserstein']."),
        (lambda: losses.gradient_penalty(_first_column, jax.random.key(0), _z((4, 3)), _z((4, 2))), "gradient_penalty: fake: expected shape (B, 3) with B=4, got (4, 2)."),
        (lambda: losses.gradient_penalty(_first_column, jax.random.key(0), _z((4, 3)), _z((5, 3))), "gradient_penalty: fake: expected shape (B, 3) with B=4, got (5, 3)."),
        (lambda: losses.gradient_penalty(_first_column, jax.random.key(0), _z((4, 3)), _i((4, 3))), "gradient_penalty: fake: expected a float array, got int32."),
        (lambda: losses.gradient_penalty(lambda x: x["a"][:, 0], jax.random.key(0), {"a": _z((4, 3))}, _z((4, 3))), "gradient_penalty: fake must have the structure of the real batch, PyTreeDef({'a': *}); got PyTreeDef(*)."),
        (lambda: losses.lazy_r1_penalty(_first_column, _z((4, 3)), 0, every=0), "lazy_r1_penalty: every must be a positive int, got 0."),
        (lambda: losses.lazy_r1_penalty(_first_column, _z((4, 3)), jnp.float32(0.0)), "lazy_r1_penalty: step: expected an int array, got float32."),
        (lambda: losses.lazy_r1_penalty(_first_column, _z((4, 3)), _i(2)), "lazy_r1_penalty: step: expected shape (), got (2,)."),
    ],
)
def test_bad_inputs_raise_the_whole_message(call, message):
  with raises_exactly(message):
    call()
