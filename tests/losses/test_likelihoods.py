"""Log-likelihoods against scipy.stats in float64, with and without jit, under grad and vmap;
masks; bad inputs."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy import special, stats

from mmjax import losses
from tests.losses.conftest import raises_exactly

SHAPE = (3, 4, 2)  # a batch of 3 events of shape (4, 2)
LOG_SCALE_SHAPES = {"scalar": (), "per event element": SHAPE[1:], "per element": SHAPE}


def _per_sample(values):
  return np.asarray(values, np.float64).reshape(values.shape[0], -1).sum(axis=1)


class AgainstScipyTest(chex.TestCase):
  """Values against scipy in float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_bernoulli_matches_scipy_on_binary_targets(self):
    rng = np.random.default_rng(0)
    logits = rng.normal(scale=3.0, size=SHAPE)
    targets = (rng.uniform(size=SHAPE) < 0.5).astype(np.float64)
    got = self.variant(losses.bernoulli_log_likelihood)(jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32))
    want = _per_sample(stats.bernoulli.logpmf(targets, special.expit(logits)))
    chex.assert_shape(got, SHAPE[:1])
    np.testing.assert_allclose(got, want, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(family=["gaussian", "laplace"], scale_shape=sorted(LOG_SCALE_SHAPES))
  def test_gaussian_and_laplace_match_scipy(self, family, scale_shape):
    rng = np.random.default_rng(2)
    mean, targets = rng.normal(size=SHAPE), rng.normal(size=SHAPE)
    log_scale = rng.normal(scale=0.5, size=LOG_SCALE_SHAPES[scale_shape])
    fn = {"gaussian": losses.gaussian_log_likelihood, "laplace": losses.laplace_log_likelihood}[family]
    dist = {"gaussian": stats.norm, "laplace": stats.laplace}[family]
    got = self.variant(fn)(jnp.asarray(mean, jnp.float32), jnp.asarray(log_scale, jnp.float32), jnp.asarray(targets, jnp.float32))
    want = _per_sample(dist.logpdf(targets, loc=mean, scale=np.broadcast_to(np.exp(log_scale), SHAPE)))
    chex.assert_shape(got, SHAPE[:1])
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bernoulli_grey_targets_give_the_cross_entropy():
  rng = np.random.default_rng(1)
  logits, targets = rng.normal(size=SHAPE), rng.uniform(size=SHAPE)
  p = special.expit(logits)
  want = _per_sample(targets * np.log(p) + (1 - targets) * np.log1p(-p))
  got = losses.bernoulli_log_likelihood(jnp.asarray(logits, jnp.float32), jnp.asarray(targets, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  grad = jax.grad(lambda l: losses.bernoulli_log_likelihood(l, jnp.asarray(targets, jnp.float32)).sum())(
      jnp.asarray(logits, jnp.float32)
  )
  np.testing.assert_allclose(grad, targets - p, rtol=1e-4, atol=1e-6)  # d/dl of x·l − softplus(l)


def test_bernoulli_is_stable_for_huge_logits():
  logits = jnp.array([[1e4, -1e4, 80.0, -80.0]], jnp.float32)
  targets = jnp.array([[1.0, 0.0, 0.0, 1.0]], jnp.float32)
  value, grad = jax.value_and_grad(lambda l: losses.bernoulli_log_likelihood(l, targets)[0])(logits)
  np.testing.assert_allclose(value, -160.0, rtol=1e-6)  # the two confident wrong answers cost 80 each
  assert np.all(np.isfinite(grad))
  np.testing.assert_allclose(grad, [[0.0, 0.0, -1.0, 1.0]], atol=1e-6)


def test_fixed_python_scale_is_accepted_and_mmvae_laplace_scale():
  loc = jnp.zeros((1, 2))
  targets = jnp.array([[0.25, -0.5]])
  got = losses.laplace_log_likelihood(loc, math.log(0.75), targets)
  np.testing.assert_allclose(got, [stats.laplace.logpdf([0.25, -0.5], scale=0.75).sum()], rtol=1e-6)


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_gaussian_and_laplace_are_float32_whatever_the_input_dtype(family):
  """bfloat16 parameters and float64 ones (under jax_enable_x64) both give float32 values, equal
  to scipy's in float64 within float32 (bfloat16: its own) rounding."""
  rng = np.random.default_rng(7)
  mean, targets, log_scale = rng.normal(size=(2, 3)), rng.normal(size=(2, 3)), rng.normal(scale=0.3, size=(3,))
  fn = {"gaussian": losses.gaussian_log_likelihood, "laplace": losses.laplace_log_likelihood}[family]
  dist = {"gaussian": stats.norm, "laplace": stats.laplace}[family]
  as_bf16 = lambda x: np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)  # noqa: E731
  got = fn(jnp.asarray(mean, jnp.bfloat16), jnp.asarray(log_scale, jnp.bfloat16), jnp.asarray(targets, jnp.bfloat16))
  want = _per_sample(dist.logpdf(as_bf16(targets), loc=as_bf16(mean), scale=np.exp(as_bf16(log_scale))))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)
  with jax.enable_x64(True):
    got = fn(jnp.asarray(mean), jnp.asarray(log_scale), jnp.asarray(targets))
    assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, _per_sample(dist.logpdf(targets, loc=mean, scale=np.exp(log_scale))), rtol=1e-5)


def test_bernoulli_and_categorical_are_float32_from_64_bit_inputs():
  rng = np.random.default_rng(8)
  logits, binary = rng.normal(size=(2, 3)), rng.integers(0, 2, size=(2, 3)).astype(np.float64)
  class_logits, labels = rng.normal(size=(2, 3, 4)), rng.integers(0, 4, size=(2, 3))
  one_hot, mask = np.eye(4)[labels], np.array([[True, False, True], [True, True, False]])
  with jax.enable_x64(True):
    got = {
        "bernoulli": losses.bernoulli_log_likelihood(jnp.asarray(logits), jnp.asarray(binary)),
        "labels": losses.categorical_log_likelihood(jnp.asarray(class_logits), jnp.asarray(labels), mask=jnp.asarray(mask)),
        "one_hot": losses.categorical_log_likelihood(jnp.asarray(class_logits), jnp.asarray(one_hot), mask=jnp.asarray(mask)),
    }
    assert {name: value.dtype for name, value in got.items()} == dict.fromkeys(got, jnp.float32)
  np.testing.assert_allclose(got["bernoulli"], _per_sample(stats.bernoulli.logpmf(binary, special.expit(logits))), rtol=1e-5)
  log_probs = special.log_softmax(class_logits, axis=-1)
  want = np.sum(np.where(mask, np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0], 0.0), axis=1)
  np.testing.assert_allclose(got["labels"], want, rtol=1e-5)
  np.testing.assert_allclose(got["one_hot"], want, rtol=1e-5)


@pytest.mark.parametrize("family", ["gaussian", "laplace"])
def test_gradients_match_finite_differences_of_scipy(family):
  rng = np.random.default_rng(3)
  mean, targets = rng.normal(size=(2, 3)), rng.normal(size=(2, 3))
  log_scale = rng.normal(scale=0.3, size=(3,))
  fn = {"gaussian": losses.gaussian_log_likelihood, "laplace": losses.laplace_log_likelihood}[family]
  dist = {"gaussian": stats.norm, "laplace": stats.laplace}[family]

  def reference(m, s):
    return dist.logpdf(targets, loc=m, scale=np.exp(s)).sum()

  grads = jax.grad(lambda m, s: fn(m, s, jnp.asarray(targets, jnp.float32)).sum(), argnums=(0, 1))(
      jnp.asarray(mean, jnp.float32), jnp.asarray(log_scale, jnp.float32)
  )
  eps = 1e-6
  for argnum, (grad, x) in enumerate(zip(grads, (mean, log_scale))):
    numerical = np.zeros_like(x)
    for index in np.ndindex(x.shape):
      step = np.zeros_like(x)
      step[index] = eps
      args_plus = [mean, log_scale]
      args_minus = [mean, log_scale]
      args_plus[argnum], args_minus[argnum] = x + step, x - step
      numerical[index] = (reference(*args_plus) - reference(*args_minus)) / (2 * eps)
    np.testing.assert_allclose(grad, numerical, rtol=1e-4, atol=1e-5)
    assert np.all(np.asarray(grad) != 0)


def test_categorical_labels_and_one_hot_match_scipy():
  rng = np.random.default_rng(4)
  logits = rng.normal(scale=2.0, size=(3, 5, 7))
  labels = rng.integers(0, 7, size=(3, 5))
  log_probs = special.log_softmax(logits, axis=-1)
  want = np.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0].sum(axis=1)
  got = jax.jit(losses.categorical_log_likelihood)(jnp.asarray(logits, jnp.float32), jnp.asarray(labels, jnp.int32))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  one_hot = np.eye(7)[labels]
  got_one_hot = losses.categorical_log_likelihood(jnp.asarray(logits, jnp.float32), jnp.asarray(one_hot, jnp.float32))
  np.testing.assert_allclose(got_one_hot, want, rtol=1e-5)
  # A single label per sample (a label modality): logits [B, C], labels [B].
  single = losses.categorical_log_likelihood(jnp.asarray(logits[:, 0], jnp.float32), jnp.asarray(labels[:, 0], jnp.int32))
  want_single = [stats.multinomial.logpmf(np.eye(7)[l], 1, np.exp(lp)) for l, lp in zip(labels[:, 0], log_probs[:, 0])]
  np.testing.assert_allclose(single, want_single, rtol=1e-5)


def test_tokens_ignore_padding_whatever_it_holds():
  rng = np.random.default_rng(5)
  logits = rng.normal(size=(2, 6, 9))
  tokens = rng.integers(0, 9, size=(2, 6))
  lengths = np.array([4, 2])
  valid = np.arange(6)[None, :] < lengths[:, None]
  padded = np.where(valid, tokens, np.array([[-3, 99, 1000, -1, 50, 7]]))  # out-of-range ids in the padding
  log_probs = special.log_softmax(logits, axis=-1)
  want = [sum(log_probs[b, t, tokens[b, t]] for t in range(lengths[b])) for b in range(2)]

  def total(l):
    return losses.token_log_likelihood(l, jnp.asarray(padded, jnp.int32), jnp.asarray(valid)).sum()

  value, grad = jax.jit(jax.value_and_grad(total))(jnp.asarray(logits, jnp.float32))
  np.testing.assert_allclose(value, sum(want), rtol=1e-5)
  assert np.all(np.isfinite(grad))
  assert np.all(np.asarray(grad)[~valid] == 0) and np.all(np.abs(np.asarray(grad)[valid]).sum(-1) > 0)


def test_vmap_over_independent_problems():
  rng = np.random.default_rng(6)
  mean, targets = rng.normal(size=(4, *SHAPE)), rng.normal(size=(4, *SHAPE))
  got = jax.vmap(losses.gaussian_log_likelihood, in_axes=(0, None, 0))(
      jnp.asarray(mean, jnp.float32), jnp.float32(0.3), jnp.asarray(targets, jnp.float32)
  )
  want = [_per_sample(stats.norm.logpdf(t, loc=m, scale=np.exp(0.3))) for m, t in zip(mean, targets)]
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_bfloat16_inputs_give_float32():
  got = losses.bernoulli_log_likelihood(jnp.zeros(SHAPE, jnp.bfloat16), jnp.ones(SHAPE, jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, [8 * math.log(0.5)] * 3, rtol=1e-6)


def test_likelihood_rescaling_of_mmvae():
  weights = losses.likelihood_rescaling({"mnist": (28, 28, 1), "svhn": (32, 32, 3)}, reference="svhn")
  assert weights == {"mnist": 3 * 32 * 32 / 784, "svhn": 1.0}
  cub = losses.likelihood_rescaling({"image": (64, 64, 3), "sentence": (32,)}, reference="sentence")
  assert cub == {"image": 32 / (3 * 64 * 64), "sentence": 1.0}
  with pytest.raises(ValueError, match=r"reference modality 'text' is not one of \['mnist', 'svhn'\]"):
    losses.likelihood_rescaling({"mnist": (28, 28, 1), "svhn": (32, 32, 3)}, reference="text")
  with pytest.raises(ValueError, match=r"modality 'empty': expected a non-empty event shape, got \(0,\)"):
    losses.likelihood_rescaling({"empty": (0,), "svhn": (32, 32, 3)}, reference="svhn")
  # A one-element event (a scalar label) is an event like any other.
  assert losses.likelihood_rescaling({"label": (1,), "image": (2, 3)}, reference="image") == {"label": 6.0, "image": 1.0}


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: losses.bernoulli_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2, 4))), "bernoulli_log_likelihood: targets: expected shape (2, 3), got (2, 4)."),
        (lambda: losses.bernoulli_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2, 3), jnp.int32)), "bernoulli_log_likelihood: targets: expected a float array, got int32."),
        (lambda: losses.gaussian_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2,)), jnp.zeros((2, 3))), "gaussian_log_likelihood: log_scale: expected shape () (one scale), (3,) (one per event element) or (2, 3) (one per element of every sample), got (2,)."),
        (lambda: losses.laplace_log_likelihood(jnp.zeros(()), 0.0, jnp.zeros(())), "laplace_log_likelihood: loc: expected shape (B,), got ()."),
        (lambda: losses.gaussian_log_likelihood(jnp.zeros(()), 0.0, jnp.zeros(())), "gaussian_log_likelihood: mean: expected shape (B,), got ()."),
        (lambda: losses.gaussian_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((3,), jnp.int32), jnp.zeros((2, 3))), "gaussian_log_likelihood: log_scale: expected a float array, got int32."),
        (lambda: losses.bernoulli_log_likelihood(jnp.zeros(()), jnp.zeros(())), "bernoulli_log_likelihood: logits: expected shape (B,), got ()."),
        (lambda: losses.categorical_log_likelihood(jnp.zeros((5,)), jnp.zeros((5,), jnp.int32)), "categorical_log_likelihood: logits: expected shape (B, C), got (5,)."),
        (lambda: losses.categorical_log_likelihood(jnp.zeros((2, 5), jnp.int32), jnp.zeros((2,), jnp.int32)), "categorical_log_likelihood: logits: expected a float array, got int32."),
        (lambda: losses.categorical_log_likelihood(jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), mask=jnp.ones(3, bool)), "categorical_log_likelihood: mask: expected shape (2,), got (3,)."),
        (lambda: losses.categorical_log_likelihood(jnp.zeros((2, 5)), jnp.zeros((2, 5), jnp.bool_)), "categorical_log_likelihood: targets (one-hot): expected a float array, got bool."),
        (lambda: losses.token_log_likelihood(jnp.zeros((2, 6, 9)), jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 5), bool)), "token_log_likelihood: valid: expected shape (B, L) with B=2, L=6, got (2, 5)."),
        (lambda: losses.laplace_log_likelihood(jnp.zeros((2, 3)), jnp.zeros((2,)), jnp.zeros((2, 3))), "laplace_log_likelihood: log_scale: expected shape () (one scale), (3,) (one per event element) or (2, 3) (one per element of every sample), got (2,)."),
        (lambda: losses.token_log_likelihood(jnp.zeros((2, 6)), jnp.zeros((2, 6), jnp.int32), jnp.ones((2, 6), bool)), "token_log_likelihood: logits: expected shape (B, L, V), got (2, 6)."),
        (lambda: losses.categorical_log_likelihood(jnp.zeros((2, 5)), jnp.zeros((3,), jnp.int32)), "categorical_log_likelihood: targets (class indices): expected shape (2,), got (3,)."),
        (lambda: losses.categorical_log_likelihood(jnp.zeros((2, 5)), jnp.zeros((2, 4))), "categorical_log_likelihood: targets (one-hot): expected shape (2, 5), got (2, 4)."),
        (lambda: losses.categorical_log_likelihood(jnp.zeros((2, 5)), jnp.zeros((2,), jnp.int32), mask=jnp.ones(2)), "categorical_log_likelihood: mask: expected a bool array, got float32."),
        (lambda: losses.token_log_likelihood(jnp.zeros((2, 6, 9)), jnp.zeros((2, 5), jnp.int32), jnp.ones((2, 6), bool)), "token_log_likelihood: tokens: expected shape (B, L) with B=2, L=6, got (2, 5)."),
        (lambda: losses.token_log_likelihood(jnp.zeros((2, 6, 9)), jnp.zeros((2, 6)), jnp.ones((2, 6), bool)), "token_log_likelihood: tokens: expected an int array, got float32."),
        (lambda: losses.bernoulli_log_likelihood(jnp.zeros((2, 3), jnp.int32), jnp.zeros((2, 3))), "bernoulli_log_likelihood: logits: expected a float array, got int32."),
        (lambda: losses.gaussian_log_likelihood(jnp.zeros((2, 3), jnp.int32), 0.0, jnp.zeros((2, 3))), "gaussian_log_likelihood: mean: expected a float array, got int32."),
        (lambda: losses.gaussian_log_likelihood(jnp.zeros((2, 3)), 0.0, jnp.zeros((2, 3), jnp.int32)), "gaussian_log_likelihood: targets: expected a float array, got int32."),
        (lambda: losses.laplace_log_likelihood(jnp.zeros((2, 3), jnp.int32), 0.0, jnp.zeros((2, 3))), "laplace_log_likelihood: loc: expected a float array, got int32."),
        (lambda: losses.laplace_log_likelihood(jnp.zeros((2, 3)), 0.0, jnp.zeros((2, 3), jnp.int32)), "laplace_log_likelihood: targets: expected a float array, got int32."),
        (lambda: losses.laplace_log_likelihood(jnp.zeros((2, 3)), 0.0, jnp.zeros((2, 4))), "laplace_log_likelihood: targets: expected shape (2, 3), got (2, 4)."),
    ],
)
def test_bad_inputs_raise_the_whole_message(call, message):
  with raises_exactly(message):
    call()
