"""Property-based tests (hypothesis) of every public loss and of the modules that take modality
dicts: random shapes, masks and extreme but finite values give finite results and gradients;
wrong shapes, dtypes and missing modalities raise a ValueError naming what is wrong.

Cases tried per run: the Hypothesis profile's (docs/testing.md; ``pytest --hypothesis-show-statistics``
counts them).
"""

import functools

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from mmjax import losses
from mmjax.encoders import ConvEncoder, RecurrentTextEncoder, TransformerTextEncoder
from mmjax.models import DualEncoder

# Cases per test and their randomness come from the Hypothesis profile (tests/conftest.py): 150
# fixed cases in CI, 2,000 random ones with HYPOTHESIS_PROFILE=dev.
SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow])


def _loss(name, chunk_size=None):
  """``loss(first, second, log_scale, bias, mask)`` for every public loss."""
  chunk = {} if chunk_size is None else {"chunk_size": chunk_size}
  return {
      "clip_loss": lambda a, b, t, c, m: losses.clip_loss(a, b, t, mask=m),
      "siglip_loss": lambda a, b, t, c, m: losses.siglip_loss(a, b, t, c, mask=m),
      "nt_xent_loss": lambda a, b, t, c, m: losses.nt_xent_loss(a, b, jnp.exp(-t), mask=m),
      "chunked_clip_loss": lambda a, b, t, c, m: losses.chunked_clip_loss(a, b, t, mask=m, **chunk),
      "chunked_siglip_loss": lambda a, b, t, c, m: losses.chunked_siglip_loss(a, b, t, c, mask=m, **chunk),
  }[name]


LOSS_NAMES = ["clip_loss", "siglip_loss", "nt_xent_loss", "chunked_clip_loss", "chunked_siglip_loss"]
extreme = st.floats(-1e4, 1e4, width=32, allow_subnormal=False)


@functools.lru_cache(maxsize=None)
def _compiled(name, chunk_size):
  return jax.jit(jax.value_and_grad(_loss(name, chunk_size), argnums=(0, 1, 2, 3)))


def _gradient_term_sizes(first, second, log_scale) -> tuple[float, float, float, float]:
  """The largest terms summed into each gradient of a contrastive loss (first, second, log scale,
  bias): ``scale·|second|``, ``scale·|first|``, the largest logit, and 1 (probabilities)."""
  scale = float(np.exp(np.float64(log_scale)))
  largest = lambda x: float(np.max(np.abs(x), initial=0.0))
  logits = scale * largest(np.asarray(first, np.float64) @ np.asarray(second, np.float64).T)
  return scale * largest(second), scale * largest(first), logits, 1.0


def test_chunked_gradients_agree_with_dense_where_large_terms_cancel():
  """The case Hypothesis found: every text the same vector of 6100s, images zero, so every
  gradient is exactly 0 and what the two losses return is rounding of terms of size 6100."""
  first, second = np.zeros((5, 3), np.float32), np.full((5, 3), 6100.0, np.float32)
  mask = np.array([False, False, True, True, True])
  log_scale, bias = np.float32(0.0), np.float32(0.0)
  value, grads = _compiled("chunked_clip_loss", 1)(first, second, log_scale, bias, mask)
  dense_value, dense_grads = _compiled("clip_loss", None)(first, second, log_scale, bias, mask)
  np.testing.assert_allclose(value, dense_value, rtol=1e-6)
  np.testing.assert_allclose(value, np.log(3.0), rtol=1e-6)  # three equally likely partners
  for grad, dense_grad, cancelling in zip(grads, dense_grads, _gradient_term_sizes(first, second, log_scale)):
    bound = 4 * 5 * np.finfo(np.float32).eps * cancelling + 1e-6
    assert np.max(np.abs(np.asarray(grad))) <= bound and np.max(np.abs(np.asarray(dense_grad))) <= bound


@SETTINGS
@given(
    name=st.sampled_from(LOSS_NAMES),
    batch=st.integers(1, 9),
    dim=st.sampled_from([1, 3, 8]),
    chunk_size=st.integers(1, 10),
    data=st.data(),
)
def test_losses_and_gradients_are_finite_on_extreme_finite_inputs(name, batch, dim, chunk_size, data):
  first = data.draw(hnp.arrays(np.float32, (batch, dim), elements=extreme), label="first")
  second = data.draw(hnp.arrays(np.float32, (batch, dim), elements=extreme), label="second")
  mask = data.draw(hnp.arrays(np.bool_, (batch,)), label="mask")  # all-False included
  log_scale = np.float32(data.draw(st.floats(-5, 10), label="log_scale"))
  bias = np.float32(data.draw(st.floats(-50, 50), label="bias"))
  value, grads = _compiled(name, chunk_size if name.startswith("chunked") else None)(first, second, log_scale, bias, mask)
  assert np.isfinite(value), (name, value)
  assert value >= 0 or name == "nt_xent_loss" and value >= -1e-6
  for grad in grads:
    assert np.all(np.isfinite(grad)), name
  if name.startswith("chunked"):
    # Not only finite and ≥ 0: the value and gradients of the dense loss, at logits up to ~1e10.
    dense_value, dense_grads = _compiled(name.removeprefix("chunked_"), None)(first, second, log_scale, bias, mask)
    np.testing.assert_allclose(value, dense_value, rtol=1e-5, atol=1e-5)
    sizes = _gradient_term_sizes(first, second, log_scale)
    largest_logit = sizes[2]
    for grad, dense_grad, cancelling in zip(grads, dense_grads, sizes):
      # Float32 rounding, which the two summation orders make differently: a gradient is a sum of
      # B probability-weighted terms (all of `second` equal: exactly 0, and rounding of the terms
      # is all that is left), and each probability is only as exact as its logit, ε·|logit|.
      rounding = 4 * batch * np.finfo(np.float32).eps * cancelling * (1 + largest_logit)
      np.testing.assert_allclose(grad, dense_grad, rtol=1e-4, atol=1e-4 * max(1.0, float(np.max(np.abs(dense_grad)))) + rounding)
  # Masked-out rows neither contribute nor receive gradient.
  assert not np.any(np.asarray(grads[0])[~mask])


def _wrong_shape(batch, dim):
  """Strategies for a `[B, D]` array's shape that is not (batch, dim)."""
  return st.one_of(
      st.tuples(st.integers(1, 6), st.integers(1, 6)).filter(lambda s: s != (batch, dim)),
      st.tuples(st.integers(1, 6)),
      st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 4)),
  )


@SETTINGS
@given(name=st.sampled_from(LOSS_NAMES), batch=st.integers(1, 6), dim=st.integers(1, 6), data=st.data())
def test_losses_reject_mismatched_shapes_naming_them(name, batch, dim, data):
  wrong = data.draw(_wrong_shape(batch, dim), label="wrong shape")
  second = "second" if name == "nt_xent_loss" else "text"
  with pytest.raises(ValueError) as error:
    _loss(name)(np.zeros((batch, dim), np.float32), np.zeros(wrong, np.float32), np.float32(0), np.float32(0), None)
  message = str(error.value)
  assert f"'{second}' embeddings: expected shape (B, D)" in message, message
  assert f"got {tuple(wrong)}" in message, message


@SETTINGS
@given(name=st.sampled_from(LOSS_NAMES), batch=st.integers(1, 6), data=st.data())
def test_losses_reject_bad_masks_and_dtypes(name, batch, data):
  embeddings = np.zeros((batch, 4), np.float32)
  if data.draw(st.booleans(), label="bad mask dtype"):
    mask, expected = np.ones(batch, np.float32), "mask: expected a bool array"
  else:
    mask, expected = np.ones(batch + data.draw(st.integers(1, 3)), np.bool_), "mask: expected shape"
  with pytest.raises(ValueError, match=expected):
    _loss(name)(embeddings, embeddings, np.float32(0), np.float32(0), mask)
  with pytest.raises(ValueError, match="expected a float array"):
    _loss(name)(embeddings.astype(np.int32), embeddings, np.float32(0), np.float32(0), None)


IMAGE_SHAPE, TEXT_LENGTH = (8, 8, 1), 6


@functools.lru_cache(maxsize=None)
def _dual_encoder(text_encoder: str):
  text = {
      "gru": RecurrentTextEncoder(4, vocab_size=12, width=4),
      "lstm": RecurrentTextEncoder(4, vocab_size=12, cell="lstm", width=4, bidirectional=True),
      "transformer": TransformerTextEncoder(4, vocab_size=12, max_length=TEXT_LENGTH, width=8, depth=1, num_heads=2),
  }[text_encoder]
  module = DualEncoder(
      encoders={"image": ConvEncoder(4, channels=(4,), strides=(2,)), "text": text},
      input_shapes={"image": IMAGE_SHAPE, "text": (TEXT_LENGTH,)},
  )
  inputs = {"image": jnp.zeros((2, *IMAGE_SHAPE)), "text": jnp.ones((2, TEXT_LENGTH), jnp.int32)}
  return module, jax.jit(module.init)(jax.random.key(0), inputs), jax.jit(module.apply)


@SETTINGS
@given(
    text_encoder=st.sampled_from(["gru", "lstm", "transformer"]),
    batch=st.sampled_from([1, 3]),
    data=st.data(),
)
def test_dual_encoder_gives_finite_unit_embeddings_on_extreme_inputs(text_encoder, batch, data):
  _, variables, apply = _dual_encoder(text_encoder)
  images = data.draw(hnp.arrays(np.float32, (batch, *IMAGE_SHAPE), elements=extreme), label="images")
  lengths = data.draw(st.lists(st.integers(0, TEXT_LENGTH), min_size=batch, max_size=batch), label="lengths")
  tokens = np.array([[1 + (i % 11) if i < n else 0 for i in range(TEXT_LENGTH)] for n in lengths], np.int32)
  out = apply(variables, {"image": images, "text": tokens})
  for modality, embedding in out.items():
    norms = np.linalg.norm(np.asarray(embedding), axis=1)
    assert np.all(np.isfinite(embedding)), modality
    # Unit norm, except features too close to zero to normalise (l2_normalize's eps), never more.
    assert np.all(norms <= 1 + 1e-3), (modality, norms)


@SETTINGS
@given(
    modality=st.sampled_from(["image", "text"]),
    data=st.data(),
)
def test_dual_encoder_rejects_wrong_shapes_naming_the_modality(modality, data):
  module, variables, _ = _dual_encoder("gru")
  expected = {"image": IMAGE_SHAPE, "text": (TEXT_LENGTH,)}[modality]
  wrong = data.draw(
      st.lists(st.integers(1, 9), min_size=0, max_size=4).map(tuple).filter(lambda s: s != expected), label="shape"
  )
  dtype = np.float32 if modality == "image" else np.int32
  inputs = {"image": np.zeros((2, *IMAGE_SHAPE), np.float32), "text": np.ones((2, TEXT_LENGTH), np.int32)}
  inputs[modality] = np.zeros((2, *wrong), dtype)
  with pytest.raises(ValueError) as error:
    module.apply(variables, inputs)
  message = str(error.value)
  assert f"modality '{modality}'" in message, message
  assert "expected shape (B, " + ", ".join(map(str, expected)) in message, message
  assert f"got {(2, *wrong)}" in message, message


@SETTINGS
@given(missing=st.sampled_from(["image", "text"]), unknown=st.sampled_from(["audio", "Image", "texts"]))
def test_model_batches_must_hold_every_modality(missing, unknown):
  from mmjax import checks

  batch = {"image": 0, "text": 0}
  del batch[missing]
  with pytest.raises(ValueError, match=f"missing modality '{missing}'"):
    checks.check_modalities(batch, ["image", "text"], "ContrastiveModel batch")
  module, variables, _ = _dual_encoder("gru")
  with pytest.raises(ValueError, match=f"unknown modalities \\['{unknown}'\\]; valid modalities: \\['image', 'text'\\]"):
    module.apply(variables, {unknown: np.zeros((2, 3), np.float32)})


# --- Fusion modules (mmjax.fusion) -------------------------------------------------------------
# Every registered fusion, on two modalities (a pooled one and a token one with random padding):
# random batch sizes and widths, random presence masks (every modality absent included) and
# extreme finite values give finite outputs and gradients; absent modalities get no gradient, and
# what they hold cannot change the output.

from mmjax.encoders.base import Encoded  # noqa: E402
from mmjax.fusion import FUSIONS  # noqa: E402

FUSION_TOKENS = dict(width=4, depth=1, num_heads=2)
FUSION_MODULES = {
    "early": FUSIONS["early"](3),
    "sum": FUSIONS["sum"](3),
    "mean": FUSIONS["mean"](3),
    "attention": FUSIONS["attention"](3),
    "late": FUSIONS["late"](3, combine="vote"),
    "gmu": FUSIONS["gmu"](3),
    "gated": FUSIONS["gated"](3),
    "tensor": FUSIONS["tensor"](3),
    "low_rank": FUSIONS["low_rank"](3, rank=2),
    "multiplicative": FUSIONS["multiplicative"](3),
    "cross_modal": FUSIONS["cross_modal"](3, **FUSION_TOKENS),
    "co_attention": FUSIONS["co_attention"](3, **FUSION_TOKENS),
    "transformer": FUSIONS["transformer"](3, **FUSION_TOKENS),
    "bottleneck": FUSIONS["bottleneck"](3, fusion_layer=0, num_bottlenecks=1, **FUSION_TOKENS),
    "graph": FUSIONS["graph"](3, width=4, depth=1, conv="gat", num_heads=2),
    "token_graph": FUSIONS["token_graph"](3, width=4, depth=1),
}
# (batch, width of the pooled modality, width of the token modality); 3 tokens.
FUSION_SHAPES = [(1, 1, 3), (3, 4, 1), (4, 2, 2)]
FUSION_LENGTH = 3


def test_fusion_properties_cover_every_registered_fusion():
  assert set(FUSION_MODULES) == set(FUSIONS)


def _fusion_inputs(pooled, token_pooled, tokens, valid):
  return {"pooled": pooled, "tokens": Encoded(token_pooled, tokens, valid)}


@functools.lru_cache(maxsize=None)
def _fusion_program(name, batch, pooled_width, token_width):
  """Initialised variables and a jitted ``(output, gradients)`` of `name` for one input shape."""
  module = FUSION_MODULES[name]
  floats = (np.zeros((batch, pooled_width), np.float32), np.zeros((batch, token_width), np.float32),
            np.zeros((batch, FUSION_LENGTH, token_width), np.float32))
  variables = jax.jit(module.init)(jax.random.key(0), _fusion_inputs(*floats, np.ones((batch, FUSION_LENGTH), bool)))

  def total(variables, floats, valid, present):
    out = module.apply(variables, _fusion_inputs(*floats, valid), present)
    return jnp.sum(out), out

  return variables, jax.jit(jax.grad(total, argnums=(0, 1), has_aux=True))


@SETTINGS
@given(name=st.sampled_from(sorted(FUSION_MODULES)), shape=st.sampled_from(FUSION_SHAPES), data=st.data())
def test_fusions_are_finite_and_ignore_absent_modalities_on_extreme_inputs(name, shape, data):
  batch, pooled_width, token_width = shape
  variables, program = _fusion_program(name, *shape)

  def draw_floats(label):
    return tuple(
        data.draw(hnp.arrays(np.float32, s, elements=extreme), label=f"{label} {i}")
        for i, s in enumerate([(batch, pooled_width), (batch, token_width), (batch, FUSION_LENGTH, token_width)])
    )

  floats = draw_floats("inputs")
  valid = data.draw(hnp.arrays(np.bool_, (batch, FUSION_LENGTH)), label="valid tokens")  # all-False rows included
  present = {m: data.draw(hnp.arrays(np.bool_, (batch,)), label=f"present {m}") for m in ("pooled", "tokens")}
  (param_grads, input_grads), out = program(variables, floats, valid, present)
  assert out.shape == (batch, 3) and np.all(np.isfinite(out)), (name, out)
  for grad in jax.tree.leaves((param_grads, input_grads)):
    assert np.all(np.isfinite(grad)), name
  absent_pooled, absent_tokens = ~present["pooled"], ~present["tokens"]
  assert not np.any(np.asarray(input_grads[0])[absent_pooled]), name
  assert not np.any(np.asarray(input_grads[1])[absent_tokens]) and not np.any(np.asarray(input_grads[2])[absent_tokens])
  # Other values for the absent modalities (and for padding tokens) give the same output.
  other = draw_floats("replacements")
  replaced = (
      np.where(absent_pooled[:, None], other[0], floats[0]),
      np.where(absent_tokens[:, None], other[1], floats[1]),
      np.where((absent_tokens[:, None] | ~valid)[..., None], other[2], floats[2]),
  )
  np.testing.assert_allclose(program(variables, replaced, valid, present)[1], out, rtol=1e-6, atol=1e-6)


@functools.lru_cache(maxsize=None)
def _soft_dtw_program():
  def total(cost, gamma, rows, cols):
    return jnp.sum(losses.soft_dtw_cost(cost, gamma=gamma, x_lengths=rows, y_lengths=cols))

  return jax.jit(jax.value_and_grad(total))


@SETTINGS
@given(shape=st.sampled_from([(1, 1, 1), (2, 3, 5), (3, 4, 2)]), data=st.data())
def test_soft_dtw_is_finite_and_ignores_padding_on_extreme_costs(shape, data):
  batch, n, m = shape
  cost = data.draw(hnp.arrays(np.float32, shape, elements=extreme), label="cost")
  gamma = np.float32(data.draw(st.floats(1e-3, 10), label="gamma"))
  rows = np.array(data.draw(st.lists(st.integers(1, n), min_size=batch, max_size=batch), label="rows"), np.int32)
  cols = np.array(data.draw(st.lists(st.integers(1, m), min_size=batch, max_size=batch), label="cols"), np.int32)
  value, grad = _soft_dtw_program()(cost, gamma, rows, cols)
  assert np.isfinite(value) and np.all(np.isfinite(grad))
  outside = (np.arange(n)[None, :, None] >= rows[:, None, None]) | (np.arange(m)[None, None, :] >= cols[:, None, None])
  assert not np.any(np.asarray(grad)[outside])
  # The expected alignment is a probability per cell, and every path starts and ends in the corners.
  assert np.all((np.asarray(grad) >= -1e-5) & (np.asarray(grad) <= 1 + 1e-5))
  np.testing.assert_allclose(np.asarray(grad)[np.arange(batch), rows - 1, cols - 1], 1, atol=1e-5)
