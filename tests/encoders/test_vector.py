"""Vector and label encoders: NumPy forward passes, tokens, dropout, remat, bf16, out-of-range labels, errors."""

import functools

import chex
import flax.errors
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders import LabelEncoder, MLPEncoder
from mmjax.encoders.base import Encoded

NUM_CLASSES = 5
VECTORS = np.random.default_rng(0).normal(size=(NUM_CLASSES, 7)).astype(np.float32)
LABELS = np.array([3, 0, 4, 1, 2], np.int32)  # every class, so every embedding row gets a gradient

ENCODERS = {
    "mlp": (MLPEncoder(6, width=16, depth=2), VECTORS),
    "label": (LabelEncoder(6, num_classes=NUM_CLASSES, width=16, depth=1), LABELS),
}


@functools.cache
def _variables(name):
  encoder, inputs = ENCODERS[name]
  return jax.jit(encoder.init)(jax.random.key(0), inputs)


class AgainstNumpyTest(chex.TestCase):
  """Forward passes against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_mlp_encoder_matches_a_numpy_forward_pass(self):
    encoder = MLPEncoder(4, width=8, depth=1, activation="relu", norm="none")
    params = encoder.init(jax.random.key(1), VECTORS)["params"]
    layer, projection = params["mlp"]["layer0"]["dense"], params["projection"]
    hidden = np.maximum(VECTORS.astype(np.float64) @ layer["kernel"] + layer["bias"], 0.0)
    expected = hidden @ projection["kernel"] + projection["bias"]
    got = self.variant(encoder.apply)({"params": params}, VECTORS)
    chex.assert_shape(got, (NUM_CLASSES, 4))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_label_encoder_without_hidden_layers_is_a_projected_table_lookup(self):
    encoder = LabelEncoder(4, num_classes=NUM_CLASSES, width=8)
    params = encoder.init(jax.random.key(1), LABELS)["params"]
    assert set(params) == {"embedding", "projection"}
    table, projection = np.asarray(params["embedding"]["embedding"], np.float64), params["projection"]
    expected = np.stack([table[label] for label in LABELS]) @ projection["kernel"] + projection["bias"]
    got = self.variant(encoder.apply)({"params": params}, LABELS)
    chex.assert_shape(got, (len(LABELS), 4))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ENCODERS)
def test_pooled_and_single_token(name):
  (encoder, inputs), variables = ENCODERS[name], _variables(name)
  pooled = jax.jit(encoder.apply)(variables, inputs)
  encoded = jax.jit(functools.partial(encoder.apply, return_tokens=True))(variables, inputs)
  assert isinstance(encoded, Encoded)
  chex.assert_shape([pooled, encoded.tokens, encoded.valid], [(5, 6), (5, 1, 6), (5, 1)])
  assert pooled.dtype == encoded.tokens.dtype == jnp.float32 and np.all(encoded.valid)
  np.testing.assert_array_equal(encoded.pooled, pooled)
  np.testing.assert_array_equal(encoded.tokens[:, 0], pooled)
  # Per-sample: a row alone gives the same features.
  np.testing.assert_allclose(jax.jit(encoder.apply)(variables, inputs[2:3])[0], pooled[2], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ENCODERS)
def test_vmap_over_a_leading_axis_matches_separate_calls(name):
  (encoder, inputs), variables = ENCODERS[name], _variables(name)
  stacked = jnp.stack([inputs, inputs[::-1]])
  batched = jax.jit(jax.vmap(lambda x: encoder.apply(variables, x, return_tokens=True)))(stacked)
  separate = jax.jit(functools.partial(encoder.apply, return_tokens=True))(variables, stacked[1])
  chex.assert_trees_all_close(jax.tree.map(lambda x: x[1], batched), separate, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_every_parameter(name):
  (encoder, inputs), variables = ENCODERS[name], _variables(name)
  grads = jax.jit(jax.grad(lambda v: jnp.sum(jnp.sin(encoder.apply(v, inputs)))))(variables)
  for path, leaf in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(leaf != 0), jax.tree_util.keystr(path)


def _equations(jaxpr):
  for eqn in jaxpr.eqns:
    for inner in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _equations(inner)
    yield eqn


@pytest.mark.parametrize("name", ENCODERS)
def test_remat_changes_memory_not_results(name):
  (plain, inputs), variables = ENCODERS[name], _variables(name)
  remat = plain.clone(remat=True)

  def grad(module):
    return jax.grad(lambda v: jnp.sum(module.apply(v, inputs) ** 2))

  chex.assert_trees_all_close(jax.jit(grad(remat))(variables), jax.jit(grad(plain))(variables), rtol=1e-5, atol=1e-6)

  def rematerialises(module):
    names = {eqn.primitive.name for eqn in _equations(jax.make_jaxpr(grad(module))(variables).jaxpr)}
    return bool(names & {"remat2", "checkpoint", "remat"})

  assert rematerialises(remat) and not rematerialises(plain)


@pytest.mark.parametrize("name", ENCODERS)
def test_bfloat16_computation_keeps_float32_parameters(name):
  (encoder, inputs), variables = ENCODERS[name], _variables(name)
  bf16 = encoder.clone(dtype=jnp.bfloat16)
  abstract = jax.eval_shape(bf16.init, jax.random.key(0), inputs)
  assert {leaf.dtype for leaf in jax.tree.leaves(abstract)} == {jnp.dtype(jnp.float32)}
  encoded = jax.jit(functools.partial(bf16.apply, return_tokens=True))(variables, inputs)
  assert encoded.pooled.dtype == encoded.tokens.dtype == jnp.bfloat16
  reference = jax.jit(encoder.apply)(variables, inputs)
  np.testing.assert_allclose(encoded.pooled.astype(jnp.float32), reference, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("name", ENCODERS)
def test_dropout_acts_only_in_training(name):
  encoder, inputs = ENCODERS[name]
  encoder = encoder.clone(dropout_rate=0.5)
  variables = _variables(name)

  def hidden(train, rngs=None):
    """The first hidden layer's output and the encoder's."""
    apply = functools.partial(encoder.apply, train=train, rngs=rngs, capture_intermediates=True)
    out, state = jax.jit(apply)(variables, inputs)
    return state["intermediates"]["mlp"]["layer0"]["__call__"][0], out

  evaluation, eval_out = hidden(False)
  np.testing.assert_array_equal(eval_out, jax.jit(ENCODERS[name][0].apply)(variables, inputs))
  training, train_out = hidden(True, {"dropout": jax.random.key(1)})
  kept = training != 0
  assert 0.25 < kept.mean() < 0.75
  # Inverted dropout: kept units are scaled by 1 / (1 - rate), the others zeroed.
  np.testing.assert_allclose(training[kept], 2 * evaluation[kept], rtol=1e-6)
  assert not np.allclose(train_out, eval_out)
  np.testing.assert_array_equal(hidden(True, {"dropout": jax.random.key(1)})[1], train_out)
  assert not np.allclose(hidden(True, {"dropout": jax.random.key(2)})[1], train_out)
  with pytest.raises(flax.errors.InvalidRngError):
    encoder.apply(variables, inputs, train=True)


def test_labels_out_of_range_give_nan_features_without_touching_the_others():
  encoder, variables = ENCODERS["label"][0], _variables("label")
  apply = jax.jit(encoder.apply)
  labels = jnp.array([2, NUM_CLASSES, -1, 0, 2**20], jnp.int32)
  out = np.asarray(apply(variables, labels))
  np.testing.assert_array_equal(np.isnan(out).all(axis=1), [False, True, True, False, True])
  np.testing.assert_allclose(out[[0, 3]], apply(variables, jnp.array([2, 0], jnp.int32)), rtol=1e-6)
  # Also when unsigned: nothing wraps around.
  assert np.isnan(apply(variables, jnp.array([NUM_CLASSES], jnp.uint8))).all()


def test_bad_inputs_raise_errors_naming_the_modality():
  mlp = ENCODERS["mlp"][0].clone(modality="tabular")
  with pytest.raises(ValueError, match=r"MLPEncoder: modality 'tabular': expected shape \(\?, \?\), got \(5,\)"):
    mlp.init(jax.random.key(0), VECTORS[:, 0])
  with pytest.raises(ValueError, match=r"MLPEncoder: modality 'tabular': expected a float array, got int32"):
    mlp.init(jax.random.key(0), VECTORS.astype(np.int32))
  label = ENCODERS["label"][0]
  with pytest.raises(ValueError, match=r"LabelEncoder: modality 'label': expected an int array, got float32"):
    label.init(jax.random.key(0), LABELS.astype(np.float32))
  with pytest.raises(ValueError, match=r"LabelEncoder: modality 'label': expected an int array, got bool"):
    label.init(jax.random.key(0), LABELS > 2)
  with pytest.raises(ValueError, match=r"LabelEncoder: modality 'label': expected shape \(\?,\), got \(5, 1\)"):
    label.init(jax.random.key(0), LABELS[:, None])
  with pytest.raises(ValueError, match=r"Unknown activation 'swish'; valid choices: \['gelu', 'relu', 'silu', 'tanh'"):
    mlp.clone(activation="swish").init(jax.random.key(0), VECTORS)
  with pytest.raises(ValueError, match=r"MLP: expected depth >= 0, got -1"):
    mlp.clone(depth=-1).init(jax.random.key(0), VECTORS)


def test_an_image_mlp_flattens_each_image():
  encoder = MLPEncoder(features=4, width=8, depth=1, event_rank=3, modality="image")
  images = jax.random.normal(jax.random.key(0), (3, 2, 2, 2))
  variables = encoder.init(jax.random.key(1), images)
  flat = MLPEncoder(features=4, width=8, depth=1)
  np.testing.assert_allclose(encoder.apply(variables, images), flat.apply(variables, images.reshape(3, 8)), rtol=1e-6)
  with pytest.raises(ValueError, match=r"MLPEncoder: modality 'image': expected shape \(\?, \?, \?, \?\), got \(3, 8\)"):
    encoder.apply(variables, images.reshape(3, 8))
