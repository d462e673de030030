"""Gaussian and Laplace posteriors against scipy (densities, KL by quadrature and by Monte Carlo),
reparameterised sampling, the MMVAE scale, the mixture density with presence; jit, grad, vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy import integrate, special, stats

from mmjax import losses
from mmjax.losses import DiagonalGaussian, DiagonalLaplace
from tests.losses.conftest import raises_exactly

FAMILIES = {
    # name: (class, scipy distribution, scipy scale from the log parameter)
    "gaussian": (DiagonalGaussian, stats.norm, lambda log_param: np.exp(0.5 * log_param)),
    "laplace": (DiagonalLaplace, stats.laplace, np.exp),
}


def _random_distribution(family, rng, shape):
  cls = FAMILIES[family][0]
  loc, log_param = rng.normal(size=shape), rng.normal(scale=0.5, size=shape)
  return cls(jnp.asarray(loc, jnp.float32), jnp.asarray(log_param, jnp.float32)), loc, log_param


class AgainstScipyTest(chex.TestCase):
  """Densities against scipy in float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*sorted(FAMILIES))
  def test_log_prob_matches_scipy_with_leading_sample_axes(self, family):
    rng = np.random.default_rng(0)
    q, loc, log_param = _random_distribution(family, rng, (3, 4))
    z = rng.normal(size=(5, 3, 4))
    _, dist, scale = FAMILIES[family]
    got = self.variant(lambda q, z: q.log_prob(z))(q, jnp.asarray(z, jnp.float32))
    want = dist.logpdf(z, loc=loc, scale=scale(log_param)).sum(axis=-1)
    chex.assert_shape(got, (5, 3))
    np.testing.assert_allclose(got, want, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_samples_follow_the_distribution(family):
  rng = np.random.default_rng(1)
  q, loc, log_param = _random_distribution(family, rng, (2, 3))
  samples = np.asarray(jax.jit(lambda q, key: q.sample(key, 4000))(q, jax.random.key(0)))
  assert samples.shape == (4000, 2, 3)
  _, dist, scale = FAMILIES[family]
  for index in np.ndindex(2, 3):
    result = stats.kstest(samples[(slice(None), *index)], dist(loc=loc[index], scale=scale(log_param)[index]).cdf)
    assert result.pvalue > 1e-4, (index, result)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_samples_are_reparameterised(family):
  # E[z²] = loc² + variance: its Monte Carlo gradient through the samples approaches the exact one.
  cls = FAMILIES[family][0]
  loc, log_param = jnp.array([[0.7, -0.4]]), jnp.array([[0.2, -0.6]])

  def second_moment(loc, log_param):
    return jnp.mean(jnp.square(cls(loc, log_param).sample(jax.random.key(1), 200_000)), axis=0).sum()

  grad_loc, grad_log_param = jax.jit(jax.grad(second_moment, argnums=(0, 1)))(loc, log_param)
  np.testing.assert_allclose(grad_loc, 2 * loc, rtol=0.03)
  # variance = exp(log σ²) for the Gaussian, 2·exp(2 log b) for the Laplace.
  exact = np.exp(log_param) if family == "gaussian" else 4 * np.exp(2 * log_param)
  np.testing.assert_allclose(grad_log_param, exact, rtol=0.03)


def _kl_by_quadrature(p, q):
  # Over p's bulk (beyond it p's mass is < 1e-20), split at the Laplace densities' kinks.
  low, high = p.ppf(1e-20), p.isf(1e-20)
  kinks = [x for x in (p.median(), q.median()) if low < x < high]
  return integrate.quad(lambda x: p.pdf(x) * (p.logpdf(x) - q.logpdf(x)), low, high, points=kinks, limit=200)[0]


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_kl_to_standard_matches_quadrature_and_monte_carlo(family):
  rng = np.random.default_rng(2)
  q, loc, log_param = _random_distribution(family, rng, (2, 3))
  _, dist, scale = FAMILIES[family]
  kl = q.kl_to_standard_normal() if family == "gaussian" else q.kl_to_standard_laplace()
  quadrature = [
      sum(_kl_by_quadrature(dist(loc=loc[b, d], scale=scale(log_param)[b, d]), dist()) for d in range(3)) for b in range(2)
  ]
  np.testing.assert_allclose(kl, quadrature, rtol=1e-5, atol=1e-6)
  samples = np.asarray(q.sample(jax.random.key(3), 200_000), np.float64)
  monte_carlo = (dist.logpdf(samples, loc=loc, scale=scale(log_param)) - dist.logpdf(samples)).sum(-1).mean(0)
  np.testing.assert_allclose(kl, monte_carlo, rtol=0.02, atol=0.01)


def test_kl_gradients_reach_both_parameters_and_vanish_at_the_standard_distribution():
  for cls, kl in ((DiagonalGaussian, "kl_to_standard_normal"), (DiagonalLaplace, "kl_to_standard_laplace")):
    gradient = jax.grad(lambda a, b: getattr(cls(a, b), kl)().sum(), argnums=(0, 1))
    grads = gradient(jnp.full((2, 3), 0.5), jnp.full((2, 3), 0.5))
    assert all(np.all(np.asarray(g) != 0) for g in grads), cls
    at_zero = gradient(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
    np.testing.assert_allclose(jnp.stack(at_zero), 0.0, atol=1e-7)
    assert float(getattr(cls(jnp.zeros((1, 3)), jnp.zeros((1, 3))), kl)()[0]) == 0.0


def test_laplace_kl_is_finite_at_extreme_parameters():
  q = DiagonalLaplace(jnp.array([[0.0, 1e4, -1e4, 3.0]]), jnp.array([[-13.8, -13.8, 30.0, 30.0]]))
  value, grads = jax.value_and_grad(lambda q: q.kl_to_standard_laplace().sum())(q)
  assert np.isfinite(value) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))


@pytest.mark.parametrize("cls", [DiagonalGaussian, DiagonalLaplace])
def test_stop_gradient_keeps_values_and_cuts_parameter_gradients(cls):
  q = cls(jnp.array([[0.3, -0.2]]), jnp.array([[0.1, 0.4]]))
  z = jnp.array([[1.0, 2.0]])
  np.testing.assert_array_equal(q.stop_gradient().log_prob(z), q.log_prob(z))
  grads = jax.grad(lambda q, z: q.stop_gradient().log_prob(z).sum(), argnums=(0, 1))(q, z)
  assert all(np.all(np.asarray(g) == 0) for g in jax.tree.leaves(grads[0]))
  assert np.all(np.asarray(grads[1]) != 0)


# Per family: the posterior, its standard draws, its scale from the second parameter, SciPy's density.
_REPARAMETERISATIONS = {
    "gaussian": (DiagonalGaussian, jax.random.normal, lambda p: np.exp(0.5 * p), stats.norm.logpdf),
    "laplace": (DiagonalLaplace, jax.random.laplace, np.exp, stats.laplace.logpdf),
}


@pytest.mark.parametrize("family", sorted(_REPARAMETERISATIONS))
def test_samples_are_location_plus_scale_times_the_keys_standard_draws(family):
  """``sample`` is ``location + scale·ε`` of the key's own float32 draws ε (not ``−scale·ε``, which
  has the same distribution), float32 under jax_enable_x64 too; densities are float32 from 64-bit
  points, equal to SciPy's."""
  cls, draw, scale_of, logpdf = _REPARAMETERISATIONS[family]
  location, parameter = np.array([[0.5, -1.0, 2.0]], np.float32), np.array([[0.0, 1.0, -2.0]], np.float32)
  key = jax.random.key(3)
  noise = np.asarray(draw(key, (4, 1, 3), jnp.float32), np.float64)
  want = location + scale_of(parameter.astype(np.float64)) * noise
  np.testing.assert_allclose(cls(jnp.asarray(location), jnp.asarray(parameter)).sample(key, 4), want, rtol=1e-6)
  with jax.enable_x64(True):
    samples = cls(jnp.asarray(location, jnp.float64), jnp.asarray(parameter, jnp.float64)).sample(key, 4)
    assert samples.dtype == jnp.float32
    log_prob = cls(jnp.asarray(location), jnp.asarray(parameter)).log_prob(jnp.asarray(want[0]))
    assert log_prob.dtype == jnp.float32
  np.testing.assert_allclose(samples, want, rtol=1e-6)
  np.testing.assert_allclose(log_prob, logpdf(want[0], location, scale_of(parameter.astype(np.float64))).sum(-1), rtol=1e-5)


def test_accessors():
  gaussian = DiagonalGaussian(jnp.array([1.0]), jnp.log(jnp.array([4.0])))
  np.testing.assert_allclose([gaussian.scale[0], gaussian.variance[0]], [2.0, 4.0], rtol=1e-6)
  laplace = DiagonalLaplace(jnp.array([1.0]), jnp.log(jnp.array([3.0])))
  np.testing.assert_allclose([laplace.mean[0], laplace.scale[0], laplace.variance[0]], [1.0, 3.0, 18.0], rtol=1e-6)
  np.testing.assert_allclose(laplace.variance, stats.laplace(scale=3.0).var(), rtol=1e-6)


def test_mmvae_laplace_scale_is_softmax_over_latents_times_dimension_plus_floor():
  rng = np.random.default_rng(4)
  logits = rng.normal(scale=2.0, size=(3, 5))
  q = DiagonalLaplace.from_mmvae_logits(jnp.zeros((3, 5)), jnp.asarray(logits, jnp.float32))
  want = special.softmax(logits, axis=-1) * 5 + 1e-6
  np.testing.assert_allclose(q.scale, want, rtol=1e-5)
  np.testing.assert_allclose(np.asarray(q.scale).sum(-1), 5 * (1 + 1e-6), rtol=1e-5)
  # Its gradient reaches every logit, and the scale never falls below the floor.
  grad = jax.grad(lambda l: DiagonalLaplace.from_mmvae_logits(jnp.zeros((3, 5)), l).log_prob(jnp.ones((3, 5))).sum())(
      jnp.asarray(logits, jnp.float32)
  )
  assert np.all(np.asarray(grad) != 0)
  extreme = DiagonalLaplace.from_mmvae_logits(jnp.zeros((1, 3)), jnp.array([[0.0, -1e4, 1e4]]))
  np.testing.assert_allclose(extreme.scale, [[1e-6, 1e-6, 3 + 1e-6]], rtol=1e-4)
  # Any leading dimensions (here samples × batch): the softmax is over the last, of size D.
  stacked = rng.normal(scale=2.0, size=(2, 3, 4))
  q = DiagonalLaplace.from_mmvae_logits(jnp.zeros((2, 3, 4)), jnp.asarray(stacked, jnp.float32))
  np.testing.assert_allclose(q.scale, special.softmax(stacked, axis=-1) * 4 + 1e-6, rtol=1e-5)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_mixture_log_prob_matches_scipy_mixture_and_respects_presence(family):
  rng = np.random.default_rng(5)
  components, loc, log_param = _random_distribution(family, rng, (3, 4, 2))  # M = 3, B = 4, D = 2
  present = np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 1, 0]], bool)
  z = rng.normal(size=(6, 4, 2))
  _, dist, scale = FAMILIES[family]
  per_component = dist.logpdf(z[None], loc=loc[:, None], scale=scale(log_param)[:, None]).sum(-1)  # [M, K, B]
  want = np.zeros((6, 4))
  for b in range(3):
    kept = per_component[present[:, b], :, b]
    want[:, b] = special.logsumexp(kept, axis=0) - np.log(len(kept))
  # Absent components hold garbage: it changes neither the value nor (a zero) gradient.
  fill = 1e30 if family == "gaussian" else -1e4
  garbage = jax.tree.map(lambda p: jnp.where(jnp.asarray(present)[..., None], p, fill), components)

  def total(components, z):
    return losses.mixture_log_prob(components, z, jnp.asarray(present)).sum()

  value, grads = jax.jit(jax.value_and_grad(total, argnums=(0, 1)))(garbage, jnp.asarray(z, jnp.float32))
  got = losses.mixture_log_prob(garbage, jnp.asarray(z, jnp.float32), jnp.asarray(present))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  for leaf in jax.tree.leaves(grads[0]):
    assert np.all(np.isfinite(leaf)) and np.all(np.asarray(leaf)[~present] == 0)
    assert np.all(np.asarray(leaf)[present] != 0)
  assert np.all(np.isfinite(grads[1]))
  without_mask = losses.mixture_log_prob(components, jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(without_mask, special.logsumexp(per_component, axis=0) - np.log(3), rtol=1e-5)


def test_vmap_over_a_stack_of_distributions():
  rng = np.random.default_rng(6)
  q, loc, log_param = _random_distribution("gaussian", rng, (4, 2, 3))
  z = rng.normal(size=(4, 2, 3))
  got = jax.vmap(lambda q, z: q.log_prob(z))(q, jnp.asarray(z, jnp.float32))
  np.testing.assert_allclose(got, stats.norm.logpdf(z, loc, np.exp(0.5 * log_param)).sum(-1), rtol=1e-5)
  kl = jax.vmap(lambda q: q.kl_to_standard_normal())(q)
  np.testing.assert_allclose(kl, q.kl_to_standard_normal(), rtol=1e-6)


def _parameter_cases() -> list:
  """Each method of both posteriors checks both parameters by its own name: shapes, then dtypes."""
  methods = {
      DiagonalGaussian: {"sample": lambda q: q.sample(jax.random.key(0), 1), "log_prob": lambda q: q.log_prob(jnp.zeros((2, 3))),
                         "kl_to_standard_normal": lambda q: q.kl_to_standard_normal()},
      DiagonalLaplace: {"sample": lambda q: q.sample(jax.random.key(0), 1), "log_prob": lambda q: q.log_prob(jnp.zeros((2, 3))),
                        "kl_to_standard_laplace": lambda q: q.kl_to_standard_laplace()},
  }
  names = {DiagonalGaussian: ("mean", "log_variance"), DiagonalLaplace: ("loc", "log_scale")}
  cases = []
  for cls, calls in methods.items():
    first, second = names[cls]
    for method, call in calls.items():
      where = f"{cls.__name__}.{method}"
      cases += [
          (lambda c=call, k=cls: c(k(jnp.zeros((2, 3)), jnp.zeros((2, 4)))), f"{where}: {second}: expected shape (2, 3), got (2, 4)."),
          (lambda c=call, k=cls: c(k(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3)))), f"{where}: {first}: expected a float array, got int32."),
          (lambda c=call, k=cls: c(k(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32))), f"{where}: {second}: expected a float array, got int32."),
          (lambda c=call, k=cls: c(k(jnp.zeros(()), jnp.zeros(()))), f"{where}: {first}: expected shape (D,), got ()."),
      ]
  return cases


@pytest.mark.parametrize(
    "call,message",
    _parameter_cases()
    + [
        (lambda: DiagonalGaussian(jnp.zeros((2, 3)), jnp.zeros((2, 4))).log_prob(jnp.zeros((2, 3))), "DiagonalGaussian.log_prob: log_variance: expected shape (2, 3), got (2, 4)."),
        (lambda: DiagonalGaussian(jnp.zeros((2, 3)), jnp.zeros((2, 3))).log_prob(jnp.zeros((3, 3))), "DiagonalGaussian.log_prob: z: expected shape (2, 3), got (3, 3)."),
        (lambda: DiagonalLaplace(jnp.zeros((2, 3)), jnp.zeros((2, 3))).log_prob(jnp.zeros((5, 2, 4))), "DiagonalLaplace.log_prob: z: expected shape (?, 2, 3), got (5, 2, 4)."),
        (lambda: DiagonalLaplace(jnp.zeros((2, 3)), jnp.zeros((2, 3))).sample(jax.random.key(0), 0), "DiagonalLaplace.sample: num_samples: expected a positive Python int (a static shape), got 0."),
        (lambda: DiagonalLaplace(jnp.zeros((2, 3)), jnp.zeros((2, 4))).sample(jax.random.key(0), 1), "DiagonalLaplace.sample: log_scale: expected shape (2, 3), got (2, 4)."),
        (lambda: DiagonalLaplace(jnp.zeros((2, 3)), jnp.zeros((2, 4))).log_prob(jnp.zeros((2, 3))), "DiagonalLaplace.log_prob: log_scale: expected shape (2, 3), got (2, 4)."),
        (lambda: DiagonalLaplace(jnp.zeros((2, 3)), jnp.zeros((2, 4))).kl_to_standard_laplace(), "DiagonalLaplace.kl_to_standard_laplace: log_scale: expected shape (2, 3), got (2, 4)."),
        (lambda: DiagonalGaussian(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3))).kl_to_standard_normal(), "DiagonalGaussian.kl_to_standard_normal: mean: expected a float array, got int32."),
        (lambda: DiagonalLaplace.from_mmvae_logits(jnp.zeros((2, 3)), jnp.zeros((2, 2))), "DiagonalLaplace.from_mmvae_logits: logits: expected shape (2, 3), got (2, 2)."),
        (lambda: DiagonalLaplace.from_mmvae_logits(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3))), "DiagonalLaplace.from_mmvae_logits: loc: expected a float array, got int32."),
        (lambda: losses.mixture_log_prob(DiagonalGaussian(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3))), jnp.zeros((4, 3)), jnp.ones((3, 4), bool)), "mixture_log_prob: present: expected shape (M, B) with M=2, B=4, got (3, 4)."),
        (lambda: losses.mixture_log_prob(DiagonalGaussian(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3))), jnp.zeros((5, 3))), "mixture_log_prob: z: expected shape (4, 3), got (5, 3)."),
        (lambda: losses.mixture_log_prob(DiagonalGaussian(jnp.zeros((2, 4, 3)), jnp.zeros((2, 5, 3))), jnp.zeros((4, 3))), "mixture_log_prob: components.log_variance: expected shape (M, B, D) with M=2, B=4, D=3, got (2, 5, 3)."),
        (lambda: losses.mixture_log_prob(DiagonalGaussian(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3))), jnp.zeros((4, 3)), jnp.ones((2, 4))), "mixture_log_prob: present: expected a bool array, got float32."),
        (lambda: DiagonalGaussian(jnp.zeros((2, 3)), jnp.zeros((2, 3))).sample(jax.random.key(0), 0), "DiagonalGaussian.sample: num_samples: expected a positive Python int (a static shape), got 0."),
        (lambda: DiagonalGaussian(jnp.zeros((2, 3)), jnp.zeros((2, 3))).log_prob(jnp.zeros((2, 3), jnp.int32)), "DiagonalGaussian.log_prob: z: expected a float array, got int32."),
        (lambda: DiagonalLaplace(jnp.zeros((2, 3)), jnp.zeros((2, 3))).log_prob(jnp.zeros((2, 3), jnp.int32)), "DiagonalLaplace.log_prob: z: expected a float array, got int32."),
        (lambda: losses.mixture_log_prob(DiagonalGaussian(jnp.zeros((2, 4, 3)), jnp.zeros((2, 4, 3))), jnp.zeros((4, 3), jnp.int32)), "mixture_log_prob: z: expected a float array, got int32."),
    ],
)
def test_bad_inputs_raise_the_whole_message(call, message):
  with raises_exactly(message):
    call()
