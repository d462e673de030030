"""Contrastive losses against independent float64 NumPy references, with and without jit, under
grad and vmap."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mmjax import losses


def _log_softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def clip_reference(image, text, log_scale, max_scale=100.0):
  scale = min(np.exp(log_scale), max_scale)
  logits = scale * image @ text.T
  diag = np.arange(len(image))
  return -0.5 * (_log_softmax(logits, 1)[diag, diag].mean() + _log_softmax(logits, 0)[diag, diag].mean())


def siglip_reference(image, text, log_scale, bias, max_scale=100.0):
  logits = min(np.exp(log_scale), max_scale) * image @ text.T + bias
  labels = 2 * np.eye(len(image)) - 1
  return np.log1p(np.exp(-labels * logits)).sum() / len(image)


def nt_xent_reference(first, second, temperature):
  z = np.concatenate([first, second])
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = len(first)
  total = 0.0
  for i in range(2 * n):
    partner = (i + n) % (2 * n)
    sims = np.array([z[i] @ z[k] / temperature for k in range(2 * n) if k != i])
    positive = z[i] @ z[partner] / temperature
    total += -positive + np.log(np.exp(sims).sum())
  return total / (2 * n)


def _normalised(rng, shape):
  x = rng.normal(size=shape)
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _numerical_grad(fn, x, eps=1e-6):
  grad = np.zeros_like(x)
  for index in np.ndindex(x.shape):
    step = np.zeros_like(x)
    step[index] = eps
    grad[index] = (fn(x + step) - fn(x - step)) / (2 * eps)
  return grad


# Each case: the mmjax loss with its scalar parameters bound, and the matching reference.
CASES = {
    "clip": (
        lambda a, b, mask=None: losses.clip_loss(a, b, jnp.float32(np.log(1 / 0.07)), mask=mask),
        lambda a, b: clip_reference(a, b, np.log(1 / 0.07)),
    ),
    "siglip": (
        lambda a, b, mask=None: losses.siglip_loss(a, b, jnp.float32(np.log(10.0)), jnp.float32(-10.0), mask=mask),
        lambda a, b: siglip_reference(a, b, np.log(10.0), -10.0),
    ),
    "nt_xent": (
        lambda a, b, mask=None: losses.nt_xent_loss(a, b, 0.2, mask=mask),
        lambda a, b: nt_xent_reference(a, b, 0.2),
    ),
}


class AgainstReferenceTest(chex.TestCase):
  """Values and gradients against the float64 references, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.product(name=sorted(CASES), shape=[(1, 4), (7, 5), (16, 32)])
  def test_value_matches_reference(self, name, shape):
    loss, reference = CASES[name]
    rng = np.random.default_rng(shape[0] * 100 + shape[1])
    a, b = _normalised(rng, shape), _normalised(rng, shape)
    got = self.variant(loss)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    chex.assert_shape(got, ())
    np.testing.assert_allclose(got, reference(a, b), rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*sorted(CASES))
  def test_gradient_matches_finite_differences_of_reference(self, name):
    loss, reference = CASES[name]
    rng = np.random.default_rng(0)
    a, b = _normalised(rng, (5, 3)), _normalised(rng, (5, 3))
    grads = self.variant(jax.grad(loss, argnums=(0, 1)))(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    want = (_numerical_grad(lambda x: reference(x, b), a), _numerical_grad(lambda x: reference(a, x), b))
    chex.assert_trees_all_close(grads, want, rtol=1e-4, atol=1e-5)


def test_scale_gradient_matches_reference_and_stops_at_clamp():
  rng = np.random.default_rng(1)
  a, b = _normalised(rng, (6, 4)), _normalised(rng, (6, 4))
  grad = jax.grad(lambda t: losses.clip_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), t))
  expected = _numerical_grad(lambda t: clip_reference(a, b, t[()]), np.array(1.5))
  np.testing.assert_allclose(grad(jnp.float32(1.5)), expected, rtol=1e-4)
  assert float(grad(jnp.float32(np.log(200.0)))) == 0.0
  # Far beyond the clamp the loss stays finite (the unclamped CLIP bug overflows here).
  assert np.isfinite(float(losses.clip_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.float32(500.0))))


def test_siglip_bias_gradient_matches_reference():
  rng = np.random.default_rng(2)
  a, b = _normalised(rng, (6, 4)), _normalised(rng, (6, 4))
  grad = jax.grad(losses.siglip_loss, argnums=3)(
      jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), jnp.float32(np.log(10.0)), jnp.float32(-3.0)
  )
  expected = _numerical_grad(lambda bias: siglip_reference(a, b, np.log(10.0), bias[()]), np.array(-3.0))
  np.testing.assert_allclose(grad, expected, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(CASES))
def test_vmap_over_independent_problems(name):
  loss, reference = CASES[name]
  rng = np.random.default_rng(3)
  a, b = _normalised(rng, (4, 6, 8)), _normalised(rng, (4, 6, 8))
  got = jax.vmap(loss)(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(got, [reference(x, y) for x, y in zip(a, b)], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", sorted(CASES))
def test_mask_equals_loss_on_kept_rows(name):
  loss, reference = CASES[name]
  rng = np.random.default_rng(4)
  a, b = _normalised(rng, (8, 5)), _normalised(rng, (8, 5))
  keep = np.array([1, 0, 1, 1, 0, 1, 1, 0], bool)
  # Padding rows hold garbage; it must not reach the value or the gradient.
  a_padded, b_padded = a.copy(), b.copy()
  a_padded[~keep], b_padded[~keep] = 1e4, -1e4
  value, grads = jax.value_and_grad(loss, argnums=(0, 1))(
      jnp.asarray(a_padded, jnp.float32), jnp.asarray(b_padded, jnp.float32), mask=jnp.asarray(keep)
  )
  np.testing.assert_allclose(value, reference(a[keep], b[keep]), rtol=1e-5)
  for grad in grads:
    assert np.all(np.isfinite(grad)) and np.all(np.asarray(grad)[~keep] == 0)


@pytest.mark.parametrize("name", sorted(CASES))
def test_bfloat16_inputs_give_float32_loss(name):
  loss, reference = CASES[name]
  rng = np.random.default_rng(5)
  a, b = _normalised(rng, (8, 16)), _normalised(rng, (8, 16))
  got = loss(jnp.asarray(a, jnp.bfloat16), jnp.asarray(b, jnp.bfloat16))
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, reference(a, b), rtol=2e-2)


# Every public contrastive loss: its name in errors, its embeddings' names and its scalar
# arguments, each bound to a valid value.
PUBLIC = {
    "clip_loss": (losses.clip_loss, ("image", "text"), {"log_scale": 0.0}),
    "siglip_loss": (losses.siglip_loss, ("image", "text"), {"log_scale": 0.0, "bias": 0.0}),
    "nt_xent_loss": (losses.nt_xent_loss, ("first", "second"), {"temperature": 0.1}),
    "chunked_clip_loss": (losses.chunked_clip_loss, ("image", "text"), {"log_scale": 0.0}),
    "chunked_siglip_loss": (losses.chunked_siglip_loss, ("image", "text"), {"log_scale": 0.0, "bias": 0.0}),
}
_BAD_INPUTS = {
    # broken input -> (first, second, mask, scalar overrides), expected message after "<fn>: "
    "second's width": (lambda f, s: ((4, 8), (4, 6), None, {}), r"'{1}' embeddings: expected shape \(B, D\) with B=4, D=8, got \(4, 6\)\.$"),
    "second's rows": (lambda f, s: ((4, 8), (3, 8), None, {}), r"'{1}' embeddings: expected shape \(B, D\) with B=4, D=8, got \(3, 8\)\.$"),
    "first's rank": (lambda f, s: ((4,), (4, 8), None, {}), r"'{0}' embeddings: expected shape \(B, D\), got \(4,\)\.$"),
    "first's dtype": (lambda f, s: ((4, 8, "int32"), (4, 8), None, {}), r"'{0}' embeddings: expected a float array, got int32\.$"),
    "second's dtype": (lambda f, s: ((4, 8), (4, 8, "int32"), None, {}), r"'{1}' embeddings: expected a float array, got int32\.$"),
    "mask's shape": (lambda f, s: ((4, 8), (4, 8), jnp.ones(3, bool), {}), r"mask: expected shape \(B,\) with B=4, got \(3,\)\.$"),
    "mask's dtype": (lambda f, s: ((4, 8), (4, 8), jnp.ones(4), {}), r"mask: expected a bool array, got float32\.$"),
}


def _array(spec):
  *shape, dtype = spec if isinstance(spec[-1], str) else (*spec, "float32")
  return jnp.zeros(shape, dtype)


@pytest.mark.parametrize("case", sorted(_BAD_INPUTS))
@pytest.mark.parametrize("fn_name", sorted(PUBLIC))
def test_every_input_check_names_the_loss_and_the_argument(fn_name, case):
  """The whole message, anchored at both ends: a loss or argument name changed anywhere fails."""
  fn, names, scalars = PUBLIC[fn_name]
  build, message = _BAD_INPUTS[case]
  first, second, mask, overrides = build(*names)
  pattern = "^" + fn_name + ": " + message.format(*names)
  with pytest.raises(ValueError, match=pattern):
    fn(_array(first), _array(second), **{**scalars, **overrides}, mask=mask)


@pytest.mark.parametrize("fn_name,scalar", [(fn_name, scalar) for fn_name in sorted(PUBLIC) for scalar in PUBLIC[fn_name][2]])
def test_every_scalar_argument_must_be_a_scalar(fn_name, scalar):
  fn, _, scalars = PUBLIC[fn_name]
  with pytest.raises(ValueError, match=rf"^{fn_name}: {scalar}: expected shape \(\), got \(4,\)\.$"):
    fn(jnp.zeros((4, 8)), jnp.zeros((4, 8)), **{**scalars, scalar: jnp.zeros(4)})


@pytest.mark.parametrize("fn_name", sorted(PUBLIC))
def test_float64_inputs_give_the_float32_loss(fn_name):
  """Under jax_enable_x64, float64 embeddings and scalars are computed in float32 like any other
  dtype: the result is float32 and equals the loss of the float32-rounded inputs."""
  fn, _, scalars = PUBLIC[fn_name]
  rng = np.random.default_rng(6)
  a, b = _normalised(rng, (8, 16)), _normalised(rng, (8, 16))
  scalars = {name: value + 0.3 for name, value in scalars.items()}
  want = fn(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), **{k: jnp.float32(v) for k, v in scalars.items()})
  with jax.enable_x64(True):
    got = fn(jnp.asarray(a, jnp.float64), jnp.asarray(b, jnp.float64), **{k: jnp.float64(v) for k, v in scalars.items()})
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(got, want)  # computed in float32 throughout: bit for bit


def test_nt_xent_default_temperature_is_simclrs_0_1():
  rng = np.random.default_rng(7)
  a, b = _normalised(rng, (6, 5)), _normalised(rng, (6, 5))
  got = losses.nt_xent_loss(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
  np.testing.assert_allclose(got, nt_xent_reference(a, b, 0.1), rtol=1e-5)
