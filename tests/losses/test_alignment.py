"""Cycle consistency, gradient reversal and domain-adversarial alignment against independent references."""

import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from scipy.special import log_expit

from mmjax import losses
from mmjax.losses.alignment import DISTANCES
from tests.losses.conftest import raises_exactly


def _normal(seed, shape):
  return np.random.default_rng(seed).normal(size=shape)


# ---- Gradient reversal --------------------------------------------------------------------------


def test_gradient_reversal_is_the_identity_forward():
  tree = {"a": jnp.float32(_normal(0, (3, 2))), "b": jnp.asarray(_normal(1, 4), jnp.bfloat16)}
  out = jax.jit(losses.gradient_reversal)(tree, 0.7)
  chex.assert_trees_all_equal_dtypes(out, tree)
  chex.assert_trees_all_equal(out, tree)


@pytest.mark.parametrize("scale", [0.0, 0.375, 1.0, 4.0])
def test_gradient_reversal_flips_and_scales_gradients_exactly(scale):
  x = jnp.float32(_normal(2, (3, 4)))
  weights = jnp.float32(_normal(3, (4, 2)))

  def head(features):
    return jnp.sum(jnp.tanh(features @ weights) ** 2)

  plain = jax.jit(jax.grad(head))(x)
  # The scale is traced (a schedule); 0.375 and powers of two make -scale * g exact in float32.
  reversed_grad, scale_grad = jax.jit(jax.grad(lambda x, s: head(losses.gradient_reversal(x, s)), argnums=(0, 1)))(
      x, jnp.float32(scale)
  )
  np.testing.assert_array_equal(reversed_grad, -scale * np.asarray(plain))
  assert float(scale_grad) == 0.0


def test_gradient_reversal_keeps_the_cotangent_dtype_and_works_under_vmap():
  x = jnp.asarray(_normal(4, (2, 3)), jnp.bfloat16)
  grad = jax.grad(lambda x: jnp.sum(losses.gradient_reversal(x, 2.0).astype(jnp.float32) * 3.0))(x)
  assert grad.dtype == jnp.bfloat16
  np.testing.assert_array_equal(grad, np.full((2, 3), -6.0))
  scales = jnp.float32([0.5, 1.0, 2.0])
  grads = jax.vmap(jax.grad(lambda x, s: jnp.sum(losses.gradient_reversal(x, s) ** 2)))(jnp.ones((3, 2)), scales)
  np.testing.assert_array_equal(grads, -2.0 * np.asarray(scales)[:, None] * np.ones((3, 2)))


def test_gradient_reversal_defaults_to_scale_one():
  weights = np.float32(_normal(20, (3, 4)))
  grad = jax.grad(lambda x: jnp.sum(losses.gradient_reversal(x) * weights))(jnp.ones((3, 4)))
  np.testing.assert_array_equal(grad, -weights)


def test_gradient_reversal_applies_the_scale_in_float32_under_x64():
  """A Python or float64 scale is taken as float32 whether or not jax_enable_x64 is on, so enabling
  it does not change the reversed gradient: ``-float32(0.1) · g`` rounded once in float32."""
  weights = np.float32(_normal(21, 64))
  want = -np.float32(0.1) * weights
  # 0.1 is not a float32: a float64 scale rounds some of these products differently.
  assert np.any(want != np.float32(-0.1 * weights.astype(np.float64)))
  for scale in (0.1, np.float64(0.1)):
    head = lambda x: jnp.sum(losses.gradient_reversal(x, scale) * weights)
    np.testing.assert_array_equal(jax.grad(head)(jnp.ones(64, jnp.float32)), want)
    with jax.enable_x64(True):
      got = jax.grad(head)(jnp.ones(64, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_array_equal(got, want, err_msg=repr(scale))


# ---- Cycle consistency --------------------------------------------------------------------------


def cycle_reference(a, a_cycled, b, b_cycled, power):
  # Each row's mean |difference|^power, then the mean over rows, written with explicit loops.
  def direction(x, y):
    return np.mean([np.abs(xr - yr).ravel() ** power for xr, yr in zip(x, y)], axis=1).mean()

  return direction(a, a_cycled) + direction(b, b_cycled)


class AgainstReferenceTest(chex.TestCase):
  """Values and gradients against the float64 references, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(("l1", 1), ("l2", 2))
  def test_cycle_consistency_matches_reference_on_unpaired_batches(self, distance, power):
    a, b = _normal(5, (4, 3, 3, 2)), _normal(6, (6, 5))
    a_cycled, b_cycled = a + _normal(7, a.shape), b + 0.1 * _normal(8, b.shape)
    got = self.variant(lambda *x: losses.cycle_consistency_loss(*x, distance=distance))(
        *map(jnp.float32, (a, a_cycled, b, b_cycled))
    )
    np.testing.assert_allclose(got, cycle_reference(a, a_cycled, b, b_cycled, power), rtol=1e-5)
    assert float(losses.cycle_consistency_loss(jnp.float32(a), jnp.float32(a), jnp.float32(b), jnp.float32(b))) == 0.0

  @chex.variants(with_jit=True, without_jit=True)
  def test_domain_adversarial_value_matches_numpy(self):
    encoders, classifier = _params(0)
    first, second = (np.asarray(e, np.float64) for e in _encode(encoders))
    hidden, out, bias = (np.asarray(classifier[k], np.float64) for k in ("hidden", "out", "bias"))
    logits_first, logits_second = np.tanh(first @ hidden) @ out + bias, np.tanh(second @ hidden) @ out + bias
    expected = 0.5 * (np.mean(-log_expit(logits_first)) + np.mean(-log_expit(-logits_second)))
    np.testing.assert_allclose(self.variant(_adversarial_loss)(encoders, classifier, 1.0), expected, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(0.5, 1.0, 3.0)
  def test_encoders_get_minus_scale_times_the_classifier_loss_gradient(self, scale):
    encoders, classifier = _params(1)
    enc_grad, cls_grad = self.variant(jax.grad(_adversarial_loss, argnums=(0, 1)))(encoders, classifier, jnp.float32(scale))
    plain_enc_grad, plain_cls_grad = jax.grad(classification_loss, argnums=(0, 1))(encoders, classifier)
    assert all(np.any(plain) for plain in jax.tree.leaves(plain_enc_grad))
    chex.assert_trees_all_close(enc_grad, jax.tree.map(lambda g: -scale * g, plain_enc_grad), rtol=1e-5, atol=1e-7)
    # The classifier itself is trained to separate, unaffected by the reversal.
    chex.assert_trees_all_close(cls_grad, plain_cls_grad, rtol=1e-5, atol=1e-7)


def test_cycle_consistency_gradient_pulls_reconstructions_back():
  a, b = np.zeros((2, 3)), np.zeros((1, 2))
  a_cycled, b_cycled = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]]), np.array([[2.0, -4.0]])
  grads = jax.grad(lambda x, y: losses.cycle_consistency_loss(jnp.float32(a), x, jnp.float32(b), y, distance="l2"), argnums=(0, 1))(
      jnp.float32(a_cycled), jnp.float32(b_cycled)
  )
  # d/dx of mean over rows of mean over elements of x²: 2x / (rows · elements).
  np.testing.assert_allclose(grads[0], 2 * a_cycled / 6, rtol=1e-6)
  np.testing.assert_allclose(grads[1], 2 * b_cycled / 2, rtol=1e-6)


def test_cycle_consistency_masks_and_vmap():
  a, b = _normal(9, (5, 4)), _normal(10, (3, 4))
  a_cycled, b_cycled = a + 1.0, b - 0.5
  keep = np.array([1, 0, 1, 1, 0], bool)
  garbage = np.where(keep[:, None], a_cycled, 1e6)
  got = losses.cycle_consistency_loss(
      jnp.float32(a), jnp.float32(garbage), jnp.float32(b), jnp.float32(b_cycled), first_mask=jnp.asarray(keep)
  )
  np.testing.assert_allclose(got, cycle_reference(a[keep], a_cycled[keep], b, b_cycled, 1), rtol=1e-6)
  stacked = [jnp.float32(np.stack([x, 2 * x])) for x in (a, a_cycled, b, b_cycled)]
  got = jax.vmap(losses.cycle_consistency_loss)(*stacked)
  np.testing.assert_allclose(got, [cycle_reference(a, a_cycled, b, b_cycled, 1), 2 * cycle_reference(a, a_cycled, b, b_cycled, 1)], rtol=1e-6)


def test_cycle_consistency_computes_float64_and_bfloat16_inputs_in_float32():
  """Under jax_enable_x64, float64 batches give the float32 loss of the same values bit for bit;
  so do bfloat16 ones, each operand cast separately."""
  a, b = _normal(15, (4, 3)), _normal(16, (2, 5))
  batches = (a, a + _normal(17, a.shape), b, b - _normal(18, b.shape))
  for distance in DISTANCES:
    want = losses.cycle_consistency_loss(*map(jnp.float32, batches), distance=distance)
    with jax.enable_x64(True):
      for cast in itertools.product((jnp.float32, jnp.float64), repeat=4):
        got = losses.cycle_consistency_loss(*(to(x) for to, x in zip(cast, map(jnp.float32, batches))), distance=distance)
        assert got.dtype == jnp.float32, (distance, cast)
        np.testing.assert_array_equal(got, want, err_msg=f"{distance} {cast}")
    rounded = [jnp.asarray(x, jnp.bfloat16) for x in batches]
    np.testing.assert_array_equal(
        losses.cycle_consistency_loss(*rounded, distance=distance),
        losses.cycle_consistency_loss(*(x.astype(jnp.float32) for x in rounded), distance=distance),
    )


# ---- Domain-adversarial alignment ---------------------------------------------------------------

X1, X2 = _normal(11, (5, 3)), _normal(12, (4, 2))  # two modalities, different input sizes


def _encode(encoders):
  return jnp.float32(X1) @ encoders["first"], jnp.float32(X2) @ encoders["second"]


def _classifier(params):
  return lambda e: jnp.tanh(e @ params["hidden"]) @ params["out"] + params["bias"]


def _params(seed):
  rng = np.random.default_rng(seed)
  encoders = {"first": jnp.float32(rng.normal(size=(3, 4))), "second": jnp.float32(rng.normal(size=(2, 4)))}
  classifier = {"hidden": jnp.float32(rng.normal(size=(4, 6))), "out": jnp.float32(rng.normal(size=6)), "bias": jnp.float32(0.3)}
  return encoders, classifier


def classification_loss(encoders, classifier):
  """The domain classifier's cross-entropy with no reversal, written with jnp.log(sigmoid)."""
  first, second = _encode(encoders)
  probability_first = jax.nn.sigmoid(_classifier(classifier)(jnp.concatenate([first, second])))
  return -0.5 * (jnp.mean(jnp.log(probability_first[:5])) + jnp.mean(jnp.log(1 - probability_first[5:])))


def _adversarial_loss(encoders, classifier, scale):
  first, second = _encode(encoders)
  return losses.domain_adversarial_loss(_classifier(classifier), first, second, scale=scale)


def test_domain_adversarial_reverses_at_scale_one_by_default():
  encoders, classifier = _params(2)
  got = jax.grad(lambda encoders: losses.domain_adversarial_loss(_classifier(classifier), *_encode(encoders)))(encoders)
  plain = jax.grad(classification_loss)(encoders, classifier)
  chex.assert_trees_all_close(got, jax.tree.map(jnp.negative, plain), rtol=1e-5, atol=1e-7)


def test_domain_adversarial_masks_and_vmap():
  classifier = lambda e: e[:, 0] - e[:, 1]
  first, second = _normal(13, (4, 2)), _normal(14, (3, 2))
  keep_first, keep_second = np.array([1, 0, 1, 1], bool), np.array([0, 1, 1], bool)
  got = losses.domain_adversarial_loss(
      classifier,
      jnp.float32(np.where(keep_first[:, None], first, 1e4)),
      jnp.float32(np.where(keep_second[:, None], second, -1e4)),
      first_mask=jnp.asarray(keep_first),
      second_mask=jnp.asarray(keep_second),
  )
  want = losses.domain_adversarial_loss(classifier, jnp.float32(first[keep_first]), jnp.float32(second[keep_second]))
  np.testing.assert_allclose(got, want, rtol=1e-6)
  stacked_first, stacked_second = jnp.float32(np.stack([first, -first])), jnp.float32(np.stack([second, 2 * second]))
  got = jax.vmap(lambda a, b: losses.domain_adversarial_loss(classifier, a, b))(stacked_first, stacked_second)
  want = [losses.domain_adversarial_loss(classifier, a, b) for a, b in zip(stacked_first, stacked_second)]
  np.testing.assert_allclose(got, want, rtol=1e-6)


def _first_column(embeddings):
  return embeddings[:, 0]


_z, _i = jnp.zeros, lambda shape: jnp.zeros(shape, jnp.int32)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: losses.cycle_consistency_loss(_z(()), _z(()), _z((1, 2)), _z((1, 2))), "cycle_consistency_loss: first: expected shape (B,), got ()."),
        (lambda: losses.cycle_consistency_loss(_z((2, 3)), _z((2, 4)), _z((1, 2)), _z((1, 2))), "cycle_consistency_loss: first_cycled: expected shape (2, 3), got (2, 4)."),
        (lambda: losses.cycle_consistency_loss(_i((2, 3)), _z((2, 3)), _z((1, 2)), _z((1, 2))), "cycle_consistency_loss: first: expected a float array, got int32."),
        (lambda: losses.cycle_consistency_loss(_z((2, 3)), _i((2, 3)), _z((1, 2)), _z((1, 2))), "cycle_consistency_loss: first_cycled: expected a float array, got int32."),
        (lambda: losses.cycle_consistency_loss(_z((2, 3)), _z((2, 3)), _z((1, 2)), _z((1, 2)), first_mask=jnp.ones(3, bool)), "cycle_consistency_loss: first_mask: expected shape (B,) with B=2, got (3,)."),
        (lambda: losses.cycle_consistency_loss(_z((2, 3)), _z((2, 3)), _z((1, 2)), _z((1, 2)), first_mask=jnp.ones(2)), "cycle_consistency_loss: first_mask: expected a bool array, got float32."),
        (lambda: losses.cycle_consistency_loss(_z((2, 3)), _z((2, 3)), _z((1, 2)), _z((2, 2))), "cycle_consistency_loss: second_cycled: expected shape (1, 2), got (2, 2)."),
        (lambda: losses.cycle_consistency_loss(_z((2, 3)), _z((2, 3)), _i((1, 2)), _z((1, 2))), "cycle_consistency_loss: second: expected a float array, got int32."),
        (lambda: losses.cycle_consistency_loss(_z((2, 3)), _z((2, 3)), _z((1, 2)), _z((1, 2)), second_mask=jnp.ones(2, bool)), "cycle_consistency_loss: second_mask: expected shape (B,) with B=1, got (2,)."),
        (lambda: losses.cycle_consistency_loss(_z((2,)), _z((2,)), _z((1,)), _z((1,)), distance="cosine"), "cycle_consistency_loss: unknown distance 'cosine'; valid choices: ['l1', 'l2']."),
        (lambda: losses.gradient_reversal(_z(3), jnp.ones(2)), "gradient_reversal: scale: expected shape (), got (2,)."),
        (lambda: losses.domain_adversarial_loss(_first_column, _z((2,)), _z((2, 3))), "domain_adversarial_loss: first_embeddings: expected shape (B1, D), got (2,)."),
        (lambda: losses.domain_adversarial_loss(_first_column, _z((2, 3)), _z((2, 4))), "domain_adversarial_loss: second_embeddings: expected shape (B2, D) with D=3, got (2, 4)."),
        (lambda: losses.domain_adversarial_loss(_first_column, _i((2, 3)), _z((2, 3))), "domain_adversarial_loss: first_embeddings: expected a float array, got int32."),
        (lambda: losses.domain_adversarial_loss(_first_column, _z((2, 3)), _i((2, 3))), "domain_adversarial_loss: second_embeddings: expected a float array, got int32."),
        (lambda: losses.domain_adversarial_loss(_first_column, _z((2, 3)), _z((4, 3)), first_mask=jnp.ones(4, bool)), "domain_adversarial_loss: first_mask: expected shape (B1,) with B1=2, got (4,)."),
        (lambda: losses.domain_adversarial_loss(_first_column, _z((2, 3)), _z((4, 3)), second_mask=jnp.ones(2, bool)), "domain_adversarial_loss: second_mask: expected shape (B2,) with B2=4, got (2,)."),
        (lambda: losses.domain_adversarial_loss(_first_column, _z((2, 3)), _z((2, 3)), first_mask=jnp.ones(2)), "domain_adversarial_loss: first_mask: expected a bool array, got float32."),
        (lambda: losses.domain_adversarial_loss(_first_column, _z((2, 3)), _z((2, 3)), second_mask=jnp.ones(2)), "domain_adversarial_loss: second_mask: expected a bool array, got float32."),
        (lambda: losses.domain_adversarial_loss(lambda e: e, _z((2, 3)), _z((2, 3))), "domain_adversarial_loss: domain_classifier output: expected shape (4,), got (4, 3)."),
    ],
)
def test_bad_inputs_raise_the_whole_message(call, message):
  with raises_exactly(message):
    call()
