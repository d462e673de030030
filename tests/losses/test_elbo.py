"""ELBO, IWAE, DReG and MMVAE's looser bound against independent computations on linear-Gaussian
models, where log p(x), the posterior and (by quadrature) the expected bounds are known exactly."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.polynomial import hermite_e
from scipy import special, stats

from mmjax import losses
from mmjax.losses import DiagonalGaussian
from tests.losses.conftest import raises_exactly

# p(z) = N(0, I₂), p(x|z) = N(W z + b, s² I₃). W's columns are orthogonal, so the exact posterior
# is a diagonal Gaussian: a diagonal q can match it.
WEIGHT = np.array([[1.0, 0.5], [-0.5, 1.0], [0.0, 0.0]])
BIAS = np.array([0.3, -0.2, 0.1])
NOISE = 0.8
X = np.array([[1.0, -0.5, 0.2], [-0.3, 0.8, 0.0]])  # B = 2 observations


def _log_normal(x, mean, variance):
  return -0.5 * (jnp.square(x - mean) / variance + jnp.log(2 * math.pi * variance))


def log_likelihood(z, x=X, weight=WEIGHT):
  """``log p(x|z)`` for z ``[..., B, 2]`` -> ``[..., B]`` (float32, written without the library)."""
  mean = jnp.einsum("od,...bd->...bo", jnp.asarray(weight, jnp.float32), z) + jnp.asarray(BIAS, jnp.float32)
  return jnp.sum(_log_normal(jnp.asarray(x, jnp.float32), mean, NOISE**2), -1)


def log_prior(z):
  return jnp.sum(_log_normal(z, 0.0, 1.0), -1)


def log_joint(z, x=X, weight=WEIGHT):
  return log_prior(z) + log_likelihood(z, x, weight)


def log_marginal(x=X):
  covariance = WEIGHT @ WEIGHT.T + NOISE**2 * np.eye(3)
  return stats.multivariate_normal(BIAS, covariance).logpdf(x)


def posterior(x=X):
  covariance = np.linalg.inv(np.eye(2) + WEIGHT.T @ WEIGHT / NOISE**2)
  mean = (x - BIAS) @ WEIGHT @ covariance.T / NOISE**2
  return mean, np.diag(covariance)


def _q(mean, variance):
  variance = np.broadcast_to(variance, np.shape(mean))
  return DiagonalGaussian(jnp.asarray(mean, jnp.float32), jnp.log(jnp.asarray(variance, jnp.float32)))


def _mismatched_q():
  mean, variance = posterior()
  return _q(mean + 0.3, variance * 1.6)


def _iwae_log_weights(q, key, num_samples):
  z = q.sample(key, num_samples)
  return log_joint(z) - q.log_prob(z), z


def test_elbo_value_and_shapes():
  log_likelihood, kl = jnp.array([[-2.0, -4.0], [-3.0, -6.0]]), jnp.array([0.5, 1.0])
  np.testing.assert_allclose(losses.elbo(log_likelihood, kl, beta=2.0), [-3.5, -7.0])
  np.testing.assert_allclose(losses.elbo(log_likelihood[0], kl), [-2.5, -5.0])
  np.testing.assert_allclose(losses.elbo(log_likelihood, jnp.array([[1.0, 0.0], [3.0, 2.0]])), [-4.5, -6.0])


def test_iwae_with_one_sample_equals_the_elbo_on_the_same_samples():
  q = _mismatched_q()
  z = q.sample(jax.random.key(0), 1)
  monte_carlo_kl = q.log_prob(z) - log_prior(z)
  log_weights = log_joint(z) - q.log_prob(z)
  np.testing.assert_allclose(losses.iwae_bound(log_weights), losses.elbo(log_likelihood(z), monte_carlo_kl), rtol=1e-6)
  # With K samples the ELBO estimate is their mean log-weight, below the IWAE bound (Jensen).
  log_weights, _ = _iwae_log_weights(q, jax.random.key(1), 8)
  assert np.all(np.asarray(losses.iwae_bound(log_weights)) >= np.asarray(jnp.mean(log_weights, 0)))


class AgainstReferenceTest(chex.TestCase):
  """Values against closed forms and NumPy, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_elbo_with_analytic_kl_matches_the_closed_form(self):
    mean, variance = posterior()
    mean, variance = mean + 0.3, variance * 1.6
    # E_q[log p(x|z)] for q = N(m, diag v): −(‖x − W m − b‖² + tr(W diag(v) Wᵀ))/(2s²) − (3/2) log 2πs².
    residual = X - mean @ WEIGHT.T - BIAS
    expected_log_likelihood = -(np.sum(residual**2, 1) + np.sum(WEIGHT**2 * variance, axis=(0, 1))) / (2 * NOISE**2)
    expected_log_likelihood -= 1.5 * np.log(2 * np.pi * NOISE**2)
    kl = 0.5 * np.sum(mean**2 + variance - 1 - np.log(variance), 1)
    q = _q(mean, variance)
    z = q.sample(jax.random.key(2), 100_000)
    got = self.variant(losses.elbo)(log_likelihood(z), q.kl_to_standard_normal())
    chex.assert_shape(got, (len(X),))
    np.testing.assert_allclose(got, expected_log_likelihood - kl, rtol=2e-3)
    assert np.all(np.asarray(got) < log_marginal())

  @chex.variants(with_jit=True, without_jit=True)
  def test_mmvae_looser_bound_against_numpy_and_below_the_joint_iwae(self):
    posteriors = _unimodal_posteriors()
    z = jax.vmap(lambda q, key: q.sample(key, 6))(posteriors, jax.random.split(jax.random.key(8), 2))  # [M, K, B, D]
    log_weights = _mmvae_log_weights(posteriors, z, None)
    got = self.variant(losses.mmvae_looser_bound)(log_weights)
    # NumPy: the mixture density written with scipy, each modality's log-mean-exp, their average.
    zs = np.asarray(z, np.float64)
    means, stds = np.asarray(posteriors.mean, np.float64), np.asarray(posteriors.scale, np.float64)
    mixture = special.logsumexp([stats.norm.logpdf(zs, means[n], stds[n]).sum(-1) for n in range(2)], axis=0) - np.log(2)
    log_p = stats.multivariate_normal(np.zeros(2), np.eye(2)).logpdf(zs)
    log_p = log_p + stats.norm.logpdf(X, zs @ WEIGHT.T + BIAS, NOISE).sum(-1)
    numpy_weights = log_p - mixture
    want = np.mean(special.logsumexp(numpy_weights, axis=1) - np.log(6), axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # Jensen: the average over modalities outside the log is below the IWAE of all M·K samples.
    tighter = losses.iwae_bound(log_weights.reshape(12, 2))
    assert np.all(np.asarray(got) <= np.asarray(tighter) + 1e-6)
    # One modality: the looser bound is the IWAE bound.
    np.testing.assert_allclose(losses.mmvae_looser_bound(log_weights[:1]), losses.iwae_bound(log_weights[0]), rtol=1e-6)


def test_iwae_increases_with_k_and_approaches_the_log_likelihood():
  q = _mismatched_q()
  replicates, ks = 20_000, (1, 4, 16, 64)

  @jax.jit
  def nested_bounds(key):
    # One draw of 64 samples per replicate; IWAE_K uses its first K: the increments are paired.
    log_weights, _ = _iwae_log_weights(q, key, ks[-1])
    return jnp.stack([losses.iwae_bound(log_weights[:k]) for k in ks])

  bounds = np.asarray(jax.vmap(nested_bounds)(jax.random.split(jax.random.key(1), replicates)), np.float64)
  bounds = bounds.transpose(1, 0, 2)  # [K choices, replicates, B]
  increments = bounds[1:] - bounds[:-1]  # [3, replicates, B]
  assert np.all(increments.mean(1) > 4 * increments.std(1) / np.sqrt(replicates)), increments.mean(1)
  gaps = log_marginal() - bounds.mean(1)  # [4, B]
  assert np.all(gaps > -3 * bounds.std(1) / np.sqrt(replicates))
  assert np.all(gaps[-1] < 0.1 * gaps[0]), gaps


def test_iwae_log_likelihood_with_one_sample_is_its_log_weight_in_float32():
  """K = 1 (one chunk of one sample) is the single log-weight; float64 log-weights (under
  jax_enable_x64) are reduced in float32 like any other."""
  log_weights = np.random.default_rng(3).normal(size=(1, 5))
  got = losses.iwae_log_likelihood(lambda key: jnp.float32(log_weights), jax.random.key(0), num_samples=1, chunk_size=1)
  np.testing.assert_array_equal(got, np.float32(log_weights[0]))
  many = np.random.default_rng(4).normal(size=(6, 5))
  want = losses.iwae_log_likelihood(lambda key: jnp.float32(many[:3]), jax.random.key(0), num_samples=6, chunk_size=3)
  with jax.enable_x64(True):
    got = losses.iwae_log_likelihood(lambda key: jnp.asarray(np.float32(many[:3]), jnp.float64), jax.random.key(0), num_samples=6, chunk_size=3)
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, want)


def test_chunked_iwae_log_likelihood_equals_the_dense_bound_and_approaches_log_p():
  q = _mismatched_q()
  chunk_size, num_samples = 100, 4000

  def log_weights_fn(key):
    return _iwae_log_weights(q, key, chunk_size)[0]

  key = jax.random.key(3)
  estimate = functools.partial(losses.iwae_log_likelihood, log_weights_fn, num_samples=num_samples, chunk_size=chunk_size)
  chunked = jax.jit(estimate)(key)
  log_weights = jnp.concatenate([log_weights_fn(k) for k in jax.random.split(key, num_samples // chunk_size)])
  np.testing.assert_allclose(chunked, losses.iwae_bound(log_weights), rtol=1e-5)
  # Differentiable too: the gradient through the scan is that of the dense bound.
  def chunked_mean(mean):
    def chunk(key):
      q_ = DiagonalGaussian(mean, q.log_variance)
      return _iwae_log_weights(q_, key, chunk_size)[0]

    return jnp.sum(losses.iwae_log_likelihood(chunk, key, num_samples=400, chunk_size=chunk_size))

  def dense_mean(mean):
    q_ = DiagonalGaussian(mean, q.log_variance)
    keys = jax.random.split(key, 400 // chunk_size)
    return jnp.sum(losses.iwae_bound(jnp.concatenate([_iwae_log_weights(q_, k, chunk_size)[0] for k in keys])))

  np.testing.assert_allclose(jax.jit(jax.grad(chunked_mean))(q.mean), jax.jit(jax.grad(dense_mean))(q.mean), rtol=1e-4)
  # The estimate of p(x) is a mean of K weights: its relative standard error gives the tolerance.
  weights = np.exp(np.asarray(log_weights, np.float64) - log_marginal())
  relative_error = weights.std(0) / np.sqrt(num_samples)
  assert np.all(np.abs(np.asarray(chunked) - log_marginal()) < 4 * relative_error), (chunked, log_marginal(), relative_error)
  assert np.all(relative_error < 0.02)


def test_chunked_iwae_memory_does_not_grow_with_the_number_of_samples():
  def log_weights_fn(key):
    return jax.random.normal(key, (256, 4))

  def temp_bytes(fn):
    return jax.jit(fn).lower(jax.random.key(0)).compile().memory_analysis().temp_size_in_bytes

  small = temp_bytes(lambda key: losses.iwae_log_likelihood(log_weights_fn, key, num_samples=2**12, chunk_size=256))
  large = temp_bytes(lambda key: losses.iwae_log_likelihood(log_weights_fn, key, num_samples=2**16, chunk_size=256))
  dense = temp_bytes(lambda key: losses.iwae_bound(jax.random.normal(key, (2**16, 4))))
  assert large < 2 * small and large < dense / 20, (small, large, dense)


def _dreg_reference_gradients(mean, log_variance, weight, key, num_samples, outer):
  """DReG by hand: w̃² on the encoder path (q's parameters stopped inside log q, the generative model
  stopped), w̃ on the generative model (z stopped)."""

  def encoder_surrogate(mean, log_variance):
    q = DiagonalGaussian(mean, log_variance)
    z = q.sample(key, num_samples)
    log_weights = log_joint(z, weight=jax.lax.stop_gradient(weight)) - q.stop_gradient().log_prob(z)
    squared = jax.lax.stop_gradient(jnp.square(jax.nn.softmax(log_weights, axis=0)))
    return jnp.sum(outer * jnp.sum(squared * log_weights, 0))

  def model_surrogate(weight):
    q = DiagonalGaussian(mean, log_variance)
    z = jax.lax.stop_gradient(q.sample(key, num_samples))
    return jnp.sum(outer * losses.iwae_bound(log_joint(z, weight=weight) - q.log_prob(z)))

  return (*jax.grad(encoder_surrogate, argnums=(0, 1))(mean, log_variance), jax.grad(model_surrogate)(weight))


def test_dreg_gradients_equal_the_stop_gradient_reference():
  q = _mismatched_q()
  weight = jnp.asarray(WEIGHT, jnp.float32)
  outer = jnp.array([0.7, -1.3])  # any cotangent of the bounds, not just a mean
  key, num_samples = jax.random.key(4), 5

  def loss(mean, log_variance, weight):
    q = DiagonalGaussian(mean, log_variance)
    z = q.sample(key, num_samples)
    bounds = losses.dreg_iwae_surrogate(lambda z: log_joint(z, weight=weight) - q.stop_gradient().log_prob(z), z)
    return jnp.sum(outer * bounds), bounds

  (_, bounds), grads = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True))(q.mean, q.log_variance, weight)
  np.testing.assert_allclose(bounds, losses.iwae_bound(_iwae_log_weights(q, key, num_samples)[0]), rtol=1e-6)
  reference = jax.jit(_dreg_reference_gradients, static_argnums=4)(q.mean, q.log_variance, weight, key, num_samples, outer)
  for got, want in zip(grads, reference):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    assert np.all(np.asarray(got)[:2] != 0)


def test_dreg_encoder_gradient_vanishes_at_the_exact_posterior():
  mean, variance = posterior()
  keys = jax.random.split(jax.random.key(5), 16)

  def gradients(mean, log_variance, key, dreg):
    q = DiagonalGaussian(mean, log_variance)
    z = q.sample(key, 4)
    if dreg:
      return jnp.sum(losses.dreg_iwae_surrogate(lambda z: log_joint(z) - q.stop_gradient().log_prob(z), z))
    return jnp.sum(losses.iwae_bound(log_joint(z) - q.log_prob(z)))

  q = _q(mean, variance)
  for dreg, vanishes in ((True, True), (False, False)):
    grads = jax.vmap(jax.grad(gradients, argnums=(0, 1)), in_axes=(None, None, 0, None))(q.mean, q.log_variance, keys, dreg)
    largest = max(float(jnp.max(jnp.abs(g))) for g in grads)
    # Every log-weight is log p(x): the DReG estimate is exactly 0 (zero variance), the IWAE one is not.
    assert (largest < 1e-4) == vanishes, (dreg, largest)


# A 1-D model for which the expected IWAE bound with K = 1 or 2 is computed by Gauss–Hermite
# quadrature: p(z) = N(0, 1), p(x|z) = N(a·z + c, s²), q = N(m, v).
X1, C1, S1 = 0.9, 0.3, 0.8
NODES, NODE_WEIGHTS = hermite_e.hermegauss(80)
NODE_WEIGHTS = NODE_WEIGHTS / np.sqrt(2 * np.pi)


def _expected_iwae_by_quadrature(mean, log_variance, slope, num_samples):
  std = np.exp(0.5 * log_variance)

  def log_weight(z):
    return stats.norm.logpdf(z) + stats.norm.logpdf(X1, slope * z + C1, S1) - stats.norm.logpdf(z, mean, std)

  grids = np.meshgrid(*[NODES] * num_samples, indexing="ij")
  weights = np.prod(np.meshgrid(*[NODE_WEIGHTS] * num_samples, indexing="ij"), axis=0)
  log_weights = np.stack([log_weight(mean + std * g) for g in grids])
  return np.sum(weights * (special.logsumexp(log_weights, axis=0) - np.log(num_samples)))


@pytest.mark.parametrize("num_samples", [1, 2])
def test_dreg_and_iwae_gradients_are_unbiased_for_the_exact_gradient(num_samples):
  params = {"mean": 0.2, "log_variance": np.log(0.5), "slope": 1.2}
  eps = 1e-5
  truth = {}
  for name in params:
    plus, minus = dict(params), dict(params)
    plus[name] += eps
    minus[name] -= eps
    difference = _expected_iwae_by_quadrature(**plus, num_samples=num_samples) - _expected_iwae_by_quadrature(
        **minus, num_samples=num_samples
    )
    truth[name] = difference / (2 * eps)
  if num_samples == 1:  # the quadrature against the ELBO's closed form
    mean, variance, slope = params["mean"], np.exp(params["log_variance"]), params["slope"]
    closed_form = {
        "mean": slope * (X1 - slope * mean - C1) / S1**2 - mean,
        "log_variance": variance * (-(slope**2) / (2 * S1**2) - 0.5) + 0.5,
        "slope": ((X1 - slope * mean - C1) * mean - slope * variance) / S1**2,
    }
    for name in params:
      np.testing.assert_allclose(truth[name], closed_form[name], rtol=1e-6)

  def surrogate(params, key, dreg):
    q = DiagonalGaussian(params["mean"].reshape(1, 1), params["log_variance"].reshape(1, 1))
    z = q.sample(key, num_samples)

    def log_weights(z, q):
      return jnp.sum(_log_normal(z, 0.0, 1.0) + _log_normal(X1, params["slope"] * z + C1, S1**2), -1) - q.log_prob(z)

    if dreg:
      return losses.dreg_iwae_surrogate(lambda z: log_weights(z, q.stop_gradient()), z)[0]
    return losses.iwae_bound(log_weights(z, q))[0]

  replicates = 40_000
  keys = jax.random.split(jax.random.key(6), replicates)
  jax_params = {name: jnp.float32(value) for name, value in params.items()}
  for dreg in (True, False):
    grads = jax.jit(jax.vmap(jax.grad(surrogate), in_axes=(None, 0, None)), static_argnums=2)(jax_params, keys, dreg)
    for name in params:
      samples = np.asarray(grads[name], np.float64)
      error = samples.std() / np.sqrt(replicates)
      assert abs(samples.mean() - truth[name]) < 5 * error + 1e-3, (dreg, name, samples.mean(), truth[name], error)


def test_dreg_under_vmap_over_independent_problems():
  q = _mismatched_q()
  keys = jax.random.split(jax.random.key(7), 3)

  def loss(mean, key):
    q_ = DiagonalGaussian(mean, q.log_variance)
    z = q_.sample(key, 4)
    return jnp.mean(losses.dreg_iwae_surrogate(lambda z: log_joint(z) - q_.stop_gradient().log_prob(z), z))

  batched = jax.jit(jax.vmap(jax.value_and_grad(loss), in_axes=(None, 0)))(q.mean, keys)
  single_fn = jax.jit(jax.value_and_grad(loss))
  for index, key in enumerate(keys):
    single = single_fn(q.mean, key)
    np.testing.assert_allclose(batched[0][index], single[0], rtol=1e-6)
    np.testing.assert_allclose(batched[1][index], single[1], rtol=1e-5, atol=1e-7)


# MMVAE: the same model seen as two modalities (x's first two coordinates and its last), each with
# its own posterior q_m; p(x|z) is the likelihood of both.


def _unimodal_posteriors():
  mean, variance = posterior()
  return DiagonalGaussian(
      jnp.asarray(np.stack([mean + 0.3, mean - 0.5]), jnp.float32),
      jnp.log(jnp.asarray(np.stack([np.tile(variance * 2, (2, 1)), np.tile(variance * 0.7, (2, 1))]), jnp.float32)),
  )


def _mmvae_log_weights(posteriors, z, present, weight=WEIGHT):
  mixture = losses.mixture_log_prob(posteriors, z, present)
  return log_joint(z, weight=weight) - mixture


def test_mmvae_looser_bound_averages_over_present_modalities_only():
  log_weights = jnp.asarray(np.random.default_rng(9).normal(size=(3, 4, 2)), jnp.float32)
  present = jnp.array([[True, False], [False, False], [True, True]])
  garbage = log_weights.at[1].set(1e30).at[0, :, 1].set(-1e30)
  got = losses.mmvae_looser_bound(garbage, present)
  per_modality = special.logsumexp(np.asarray(log_weights), axis=1) - np.log(4)
  np.testing.assert_allclose(got, [per_modality[[0, 2], 0].mean(), per_modality[2, 1]], rtol=1e-5)
  grad = jax.grad(lambda w: losses.mmvae_looser_bound(w, present).sum())(garbage)
  assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[1] == 0) and np.all(np.asarray(grad)[0, :, 1] == 0)


@pytest.mark.parametrize("with_presence", [False, True])
def test_dreg_looser_gradients_equal_the_stop_gradient_reference(with_presence):
  posteriors = _unimodal_posteriors()
  weight = jnp.asarray(WEIGHT, jnp.float32)
  present = jnp.array([[True, True], [True, False]]) if with_presence else None
  keys = jax.random.split(jax.random.key(10), 2)
  outer = jnp.array([1.1, -0.6])

  def sample(posteriors):
    return jax.vmap(lambda q, key: q.sample(key, 5))(posteriors, keys)

  def loss(posteriors, weight):
    z = sample(posteriors)
    log_weights = lambda z: _mmvae_log_weights(posteriors.stop_gradient(), z, present, weight=weight)
    return jnp.sum(outer * losses.dreg_mmvae_looser_surrogate(log_weights, z, present))

  def modality_mean(per_modality):  # [M, B] -> [B] over the present modalities
    mask = jnp.ones((2, 2), bool) if present is None else present
    return jnp.sum(jnp.where(mask, per_modality, 0.0), 0) / jnp.sum(mask, 0)

  def encoder_reference(posteriors):
    z = sample(posteriors)
    log_weights = _mmvae_log_weights(posteriors.stop_gradient(), z, present, weight=jax.lax.stop_gradient(weight))
    squared = jax.lax.stop_gradient(jnp.square(jax.nn.softmax(log_weights, axis=1)))
    return jnp.sum(outer * modality_mean(jnp.sum(squared * log_weights, 1)))

  def model_reference(weight):
    z = jax.lax.stop_gradient(sample(posteriors))
    return jnp.sum(outer * losses.mmvae_looser_bound(_mmvae_log_weights(posteriors, z, present, weight=weight), present))

  got = jax.jit(jax.grad(loss, argnums=(0, 1)))(posteriors, weight)
  want = jax.jit(lambda p, w: (jax.grad(encoder_reference)(p), jax.grad(model_reference)(w)))(posteriors, weight)
  chex.assert_trees_all_close(got, want, rtol=1e-4, atol=1e-6)
  encoder_grads = np.asarray(got[0].mean)
  if with_presence:
    # The absent modality's posterior (modality 1 of sample 1) draws no sample that counts.
    assert np.all(encoder_grads[1, 1] == 0) and np.all(encoder_grads[0] != 0) and np.all(encoder_grads[1, 0] != 0)
  else:
    assert np.all(encoder_grads != 0)
  def value_and_bound(posteriors, weight):
    bound = losses.mmvae_looser_bound(_mmvae_log_weights(posteriors, sample(posteriors), present), present)
    return loss(posteriors, weight), bound

  value, bound = jax.jit(value_and_bound)(posteriors, weight)
  np.testing.assert_allclose(value, jnp.sum(outer * bound), rtol=1e-6)


def test_kl_warmup_is_linear_jit_able_and_matches_mvae():
  steps = jnp.arange(12)
  weights = jax.jit(jax.vmap(lambda step: losses.kl_warmup(step, 8, beta=2.0)))(steps)
  np.testing.assert_allclose(weights, 2.0 * np.minimum((np.arange(12) + 1) / 8, 1.0), rtol=1e-6)
  # MVAE's annealing factor within its annealing epochs (epochs from 1, N batches each).
  annealing_epochs, batches = 3, 5
  for epoch in (1, 2):
    for batch_idx in range(batches):
      mvae = float(batch_idx + (epoch - 1) * batches + 1) / float(annealing_epochs * batches)
      step = (epoch - 1) * batches + batch_idx
      np.testing.assert_allclose(losses.kl_warmup(jnp.int32(step), annealing_epochs * batches), mvae, rtol=1e-6)
  assert float(losses.kl_warmup(0, 0, beta=0.5)) == 0.5
  assert float(losses.kl_warmup(-5, 8, beta=2.0)) == 0.0  # before the first step: no KL, never a negative weight


def test_elbo_is_float32_even_from_64_bit_inputs():
  log_likelihood, kl = np.array([[-3.0, -5.5], [-4.0, -6.5]]), np.array([[0.5, 1.0], [1.5, 0.25]])
  with jax.enable_x64(True):
    bounds = losses.elbo(jnp.asarray(log_likelihood), jnp.asarray(kl), beta=jnp.float64(0.5))
    assert bounds.dtype == jnp.float32
  np.testing.assert_allclose(bounds, np.mean(log_likelihood - 0.5 * kl, axis=0), rtol=1e-6)


def test_dreg_gives_an_absent_modality_s_samples_no_gradient_even_through_a_batch_coupled_model():
  """Log-weights that mix every sample (a decoder with batch statistics): an absent modality's
  samples still influence the present ones' log-weights, but their bounds count for nothing, so
  DReG's reweighting leaves their z with exactly zero gradient, as for independent samples."""
  z = jnp.asarray(np.random.default_rng(4).normal(size=(2, 3, 2, 1)), jnp.float32)  # M, K, B, D
  present = jnp.array([[True, True], [True, False]])

  def log_weights(z):
    return -0.5 * jnp.square(z[..., 0]) + 0.3 * jnp.mean(z[..., 0])

  grad = np.asarray(jax.grad(lambda z: jnp.sum(losses.dreg_mmvae_looser_surrogate(log_weights, z, present)))(z))
  assert np.all(grad[1, :, 1] == 0)
  assert np.all(grad[0] != 0) and np.all(grad[1, :, 0] != 0)


def test_bounds_and_dreg_surrogates_are_float32_from_64_bit_log_weights_and_keep_z_s_dtype():
  """Under jax_enable_x64, float64 log-weights give the float32 bounds of the same values bit for
  bit; a bfloat16 ``z`` gets a bfloat16 gradient through the DReG surrogates."""
  log_weights = np.float32(np.random.default_rng(5).normal(size=(2, 3, 4)))
  z = np.float32(np.random.default_rng(6).normal(size=(2, 3, 4, 2)))
  surrogates = {
      "iwae": lambda fn, z: losses.dreg_iwae_surrogate(fn, z[0]),
      "mmvae": lambda fn, z: losses.dreg_mmvae_looser_surrogate(fn, z),
  }
  weights_of = lambda z: jnp.sum(z * z, -1)
  want = {name: surrogate(weights_of, jnp.asarray(z)) for name, surrogate in surrogates.items()}
  bounds = {"mmvae_looser_bound": losses.mmvae_looser_bound, "iwae_bound": lambda w: losses.iwae_bound(w[0])}
  want_bound = {name: bound(jnp.asarray(log_weights)) for name, bound in bounds.items()}
  with jax.enable_x64(True):
    got_bound = {name: bound(jnp.asarray(log_weights, jnp.float64)) for name, bound in bounds.items()}
    got = {name: surrogate(lambda z: weights_of(z).astype(jnp.float64), jnp.asarray(z)) for name, surrogate in surrogates.items()}
  for name in bounds:
    assert got_bound[name].dtype == jnp.float32, name
    np.testing.assert_array_equal(got_bound[name], want_bound[name], err_msg=name)
  for name in surrogates:
    assert got[name].dtype == jnp.float32, name
    np.testing.assert_array_equal(got[name], want[name], err_msg=name)
  for name, surrogate in surrogates.items():
    grad = jax.grad(lambda z: jnp.sum(surrogate(lambda z: weights_of(z.astype(jnp.float32)), z)))(jnp.asarray(z, jnp.bfloat16))
    assert grad.dtype == jnp.bfloat16, name


def test_kl_warmup_is_float32_even_from_64_bit_inputs():
  with jax.enable_x64(True):
    weight = losses.kl_warmup(jnp.int64(2), jnp.int64(8), beta=jnp.float64(0.5))
    assert weight.dtype == jnp.float32 and float(weight) == 0.5 * 3 / 8
    assert losses.kl_warmup(2, 8, beta=0.5).dtype == jnp.float32
    # Steps and warm-up lengths given as floats (nothing requires ints) still give float32.
    assert losses.kl_warmup(jnp.float64(2.0), jnp.float64(8.0), beta=0.5).dtype == jnp.float32


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: losses.iwae_bound(jnp.zeros((4,))), "iwae_bound: log_weights: expected shape (K, B), got (4,)."),
        (lambda: losses.iwae_bound(jnp.zeros((4, 2), jnp.int32)), "iwae_bound: log_weights: expected a float array, got int32."),
        (lambda: losses.elbo(jnp.zeros((4, 2)), jnp.zeros((3,))), "elbo: kl: expected shape (B,) with B=2, got (3,)."),
        (lambda: losses.elbo(jnp.zeros((4, 2)), jnp.zeros((3, 2))), "elbo: kl (per sample): expected shape (4, 2), got (3, 2)."),
        (lambda: losses.kl_warmup(jnp.zeros(2), 10), "kl_warmup: step: expected shape (), got (2,)."),
        (lambda: losses.elbo(jnp.zeros(2, jnp.int32), jnp.zeros(2)), "elbo: log_likelihood: expected a float array, got int32."),
        (lambda: losses.elbo(jnp.zeros(2), jnp.zeros(2), beta=jnp.ones(2)), "elbo: beta: expected shape (), got (2,)."),
        (lambda: losses.elbo(jnp.zeros(2), jnp.zeros(2, jnp.int32)), "elbo: kl: expected a float array, got int32."),
        (lambda: losses.elbo(jnp.zeros((2, 3, 4)), jnp.zeros(3)), "elbo: log_likelihood: expected shape (B,), got (2, 3, 4)."),
        (lambda: losses.elbo(jnp.zeros(2), jnp.zeros(3)), "elbo: kl: expected shape (B,) with B=2, got (3,)."),
        (lambda: losses.dreg_mmvae_looser_surrogate(lambda z: z[..., 0, 0], jnp.zeros((2, 4, 3, 2))), "dreg_mmvae_looser_surrogate: log_weights_fn(z) (one log-weight per sample of z): expected shape (2, 4, 3), got (2, 4)."),
        (lambda: losses.dreg_mmvae_looser_surrogate(lambda z: z[..., 0], jnp.zeros((2, 4, 3, 2)), jnp.ones((2, 4), bool)), "dreg_mmvae_looser_surrogate: present: expected shape (2, 3), got (2, 4)."),
        (lambda: losses.kl_warmup(0, jnp.zeros(2)), "kl_warmup: warmup_steps: expected shape (), got (2,)."),
        (lambda: losses.kl_warmup(0, 10, beta=jnp.ones(3)), "kl_warmup: beta: expected shape (), got (3,)."),
        (lambda: losses.mmvae_looser_bound(jnp.zeros((2, 4, 3)), jnp.ones((3, 3), bool)), "mmvae_looser_bound: present: expected shape (2, 3), got (3, 3)."),
        (lambda: losses.dreg_iwae_surrogate(lambda z: z[..., 0, 0], jnp.zeros((4, 3, 2))), "dreg_iwae_surrogate: log_weights_fn(z) (one log-weight per sample of z): expected shape (4, 3), got (4,)."),
        (lambda: losses.dreg_mmvae_looser_surrogate(lambda z: z[..., 0], jnp.zeros((4, 3, 2))), "dreg_mmvae_looser_surrogate: z: expected shape (M, K, B, D), got (4, 3, 2)."),
        (lambda: losses.iwae_log_likelihood(lambda k: jnp.zeros((4, 2)), jax.random.key(0), num_samples=10, chunk_size=4), "iwae_log_likelihood: num_samples: expected a multiple of chunk_size=4, got 10."),
        (lambda: losses.iwae_log_likelihood(lambda k: jnp.zeros((3, 2)), jax.random.key(0), num_samples=8, chunk_size=4), "iwae_log_likelihood: log_weights_fn(key): expected shape (4, ?), got (3, 2)."),
        (lambda: losses.dreg_iwae_surrogate(lambda z: z[..., 0], jnp.zeros((4, 3))), "dreg_iwae_surrogate: z: expected shape (K, B, D), got (4, 3)."),
        (lambda: losses.iwae_log_likelihood(lambda k: jnp.zeros((4, 2)), jax.random.key(0), num_samples=0, chunk_size=4), "iwae_log_likelihood: num_samples: expected a positive Python int, got 0."),
        (lambda: losses.iwae_log_likelihood(lambda k: jnp.zeros((4, 2)), jax.random.key(0), num_samples=8.0, chunk_size=4), "iwae_log_likelihood: num_samples: expected a positive Python int, got 8.0."),
        (lambda: losses.iwae_log_likelihood(lambda k: jnp.zeros((4, 2)), jax.random.key(0), num_samples=8, chunk_size=0), "iwae_log_likelihood: chunk_size: expected a positive Python int, got 0."),
        (lambda: losses.iwae_log_likelihood(lambda k: jnp.zeros((4, 2)), jax.random.key(0), num_samples=8, chunk_size=4.0), "iwae_log_likelihood: chunk_size: expected a positive Python int, got 4.0."),
        (lambda: losses.iwae_log_likelihood(lambda k: jnp.zeros((4, 2), jnp.int32), jax.random.key(0), num_samples=8, chunk_size=4), "iwae_log_likelihood: log_weights_fn(key): expected a float array, got int32."),
        (lambda: losses.dreg_iwae_surrogate(lambda z: z[..., 0], jnp.zeros((4, 3, 2), jnp.int32)), "dreg_iwae_surrogate: z: expected a float array, got int32."),
        (lambda: losses.dreg_iwae_surrogate(lambda z: jnp.zeros((4, 3), jnp.int32), jnp.zeros((4, 3, 2))), "dreg_iwae_surrogate: log_weights_fn(z): expected a float array, got int32."),
        (lambda: losses.dreg_mmvae_looser_surrogate(lambda z: z[..., 0], jnp.zeros((2, 4, 3, 2), jnp.int32)), "dreg_mmvae_looser_surrogate: z: expected a float array, got int32."),
        (lambda: losses.dreg_mmvae_looser_surrogate(lambda z: jnp.zeros((2, 4, 3), jnp.int32), jnp.zeros((2, 4, 3, 2))), "dreg_mmvae_looser_surrogate: log_weights_fn(z): expected a float array, got int32."),
        (lambda: losses.dreg_mmvae_looser_surrogate(lambda z: z[..., 0], jnp.zeros((2, 4, 3, 2)), jnp.ones((2, 3))), "dreg_mmvae_looser_surrogate: present: expected a bool array, got float32."),
        (lambda: losses.mmvae_looser_bound(jnp.zeros((2, 3))), "mmvae_looser_bound: log_weights: expected shape (M, K, B), got (2, 3)."),
        (lambda: losses.mmvae_looser_bound(jnp.zeros((2, 4, 3), jnp.int32)), "mmvae_looser_bound: log_weights: expected a float array, got int32."),
        (lambda: losses.mmvae_looser_bound(jnp.zeros((2, 4, 3)), jnp.ones((2, 3))), "mmvae_looser_bound: present: expected a bool array, got float32."),
    ],
)
def test_bad_inputs_raise_the_whole_message(call, message):
  with raises_exactly(message):
    call()
