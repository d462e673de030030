"""Text encoders: padding really is ignored, the recurrences match a NumPy reference, causal
attention, pooling, return_tokens, remat, dtypes, jit/vmap/grad and errors."""

import functools
import itertools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from mmjax.encoders import RecurrentTextEncoder, TransformerTextEncoder
from mmjax.encoders import base, layers

FEATURES, VOCAB = 6, 12
# The tokenizers' layout [BOS] … [EOS] [PAD]…, PAD = 0; the last row has no padding at all.
TOKENS = jnp.array(
    [[1, 7, 8, 9, 2, 0, 0, 0], [1, 5, 2, 0, 0, 0, 0, 0], [1, 3, 4, 5, 6, 10, 11, 2]], jnp.int32
)
LENGTHS = (5, 3, 8)
# Flax names the cells' parameters after their class, numbered in creation order (layer by layer,
# forward before backward); the GRU names are what GRUTextEncoder checkpoints used.
CELL_PARAMS = {"gru": "GRUCell", "lstm": "LSTMCell"}


def _encoders() -> dict[str, tuple[object, bool]]:
  """Every encoder option under test, with whether its token outputs are causal (left to right)."""
  transformer = functools.partial(
      TransformerTextEncoder, FEATURES, vocab_size=VOCAB, max_length=12, width=16, num_heads=2
  )
  recurrent = functools.partial(RecurrentTextEncoder, FEATURES, vocab_size=VOCAB, width=8)
  return {
      "transformer-mean": (transformer(depth=2, pooling="mean"), False),
      "transformer-first": (transformer(depth=1, pooling="first"), False),
      "transformer-last": (transformer(depth=1, pooling="last"), False),
      "transformer-causal-last": (transformer(depth=2, pooling="last", causal=True), True),
      "transformer-causal-mean": (transformer(depth=1, pooling="mean", causal=True), True),
      "gru-last": (recurrent(cell="gru"), True),
      "gru-mean-bidirectional": (recurrent(cell="gru", depth=2, bidirectional=True, pooling="mean"), False),
      "gru-last-bidirectional": (recurrent(cell="gru", bidirectional=True), False),
      "lstm-last": (recurrent(cell="lstm", depth=2), True),
      "lstm-mean": (recurrent(cell="lstm", pooling="mean"), True),
      "lstm-last-bidirectional": (recurrent(cell="lstm", bidirectional=True), False),
      "lstm-mean-bidirectional": (recurrent(cell="lstm", bidirectional=True, pooling="mean"), False),
  }


ENCODERS = _encoders()
RECURRENT = [name for name, (encoder, _) in ENCODERS.items() if isinstance(encoder, RecurrentTextEncoder)]


@functools.cache
def _variables(name: str):
  """Initial variables with every parameter (biases too) redrawn, so no convention hides behind a zero."""
  encoder, _ = ENCODERS[name]
  variables = jax.jit(encoder.init)(jax.random.key(0), TOKENS)
  leaves, treedef = jax.tree.flatten(variables)
  keys = jax.random.split(jax.random.key(1), len(leaves))
  return jax.tree.unflatten(treedef, [0.5 * jax.random.normal(k, x.shape, x.dtype) for k, x in zip(keys, leaves)])


def _apply(encoder, **kwargs):
  return jax.jit(functools.partial(encoder.apply, **kwargs))


def _assert_same_at_real_positions(encoded: base.Encoded, reference: base.Encoded, atol=1e-5):
  length = reference.tokens.shape[1]
  np.testing.assert_array_equal(encoded.valid[:, :length], reference.valid)
  assert not np.any(encoded.valid[:, length:])
  np.testing.assert_allclose(encoded.pooled, reference.pooled, atol=atol)
  real = np.asarray(reference.valid)
  tokens = np.asarray(encoded.tokens[:, :length])
  np.testing.assert_allclose(tokens[real], np.asarray(reference.tokens)[real], atol=atol)


@pytest.mark.parametrize("name", ENCODERS)
def test_padding_never_changes_the_output(name):
  encoder, _ = ENCODERS[name]
  variables = _variables(name)
  apply = _apply(encoder, return_tokens=True)
  full = apply(variables, TOKENS)
  chex.assert_shape(full.pooled, (3, FEATURES))
  chex.assert_shape(full.tokens, (3, 8, FEATURES))
  np.testing.assert_array_equal(full.valid, TOKENS != 0)
  # More padding.
  _assert_same_at_real_positions(apply(variables, jnp.pad(TOKENS, ((0, 0), (0, 4)))), full)
  # Other values behind the padding id: its embedding row replaced by large garbage.
  garbage = jax.tree_util.tree_map_with_path(
      lambda path, x: x.at[0].set(50.0 * jnp.arange(1, x.shape[1] + 1)) if "token_embedding" in str(path) else x,
      variables,
  )
  _assert_same_at_real_positions(apply(garbage, TOKENS), full)
  # A row alone, without padding, gives what it gives in the batch.
  alone = apply(variables, TOKENS[1:2, : LENGTHS[1]])
  np.testing.assert_allclose(alone.pooled[0], full.pooled[1], atol=1e-5)
  np.testing.assert_allclose(alone.tokens[0], full.tokens[1, : LENGTHS[1]], atol=1e-5)


@pytest.mark.parametrize("name", ENCODERS)
def test_no_gradient_flows_from_padding(name):
  # Stronger than comparing outputs: the outputs at real positions are constant in the padding
  # embedding, so its gradient is exactly zero, while the rows of real tokens do get gradients.
  encoder, _ = ENCODERS[name]

  def loss(variables):
    encoded = encoder.apply(variables, TOKENS, return_tokens=True)
    return jnp.sum(encoded.pooled**2) + jnp.sum(jnp.where(encoded.valid[..., None], encoded.tokens, 0) ** 2)

  embedding_grad = jax.jit(jax.grad(loss))(_variables(name))["params"]["token_embedding"]["embedding"]
  np.testing.assert_array_equal(embedding_grad[0], 0.0)
  used = np.unique(np.asarray(TOKENS[TOKENS != 0]))
  assert np.all(np.any(embedding_grad[used] != 0, axis=1))


def _sigmoid(x):
  return 0.5 * (1.0 + np.tanh(0.5 * x))


def _gru_step(p, h, x):
  """Flax's GRUCell: r = σ(x W_ir + b_ir + h W_hr), z = σ(x W_iz + b_iz + h W_hz),
  n = tanh(x W_in + b_in + r ⊙ (h W_hn + b_hn)), h' = (1 − z) ⊙ n + z ⊙ h. Only the input kernels and
  the candidate's recurrent kernel (hn) have biases; kernels are [in, out]; z keeps the old state."""
  stacked_input = np.concatenate([p["ir"]["kernel"], p["iz"]["kernel"]], axis=1)
  stacked_hidden = np.concatenate([p["hr"]["kernel"], p["hz"]["kernel"]], axis=1)
  stacked_bias = np.concatenate([p["ir"]["bias"], p["iz"]["bias"]])
  r, z = np.split(_sigmoid(x @ stacked_input + stacked_bias + h @ stacked_hidden), 2)
  candidate = np.tanh(x @ p["in"]["kernel"] + p["in"]["bias"] + r * (h @ p["hn"]["kernel"] + p["hn"]["bias"]))
  h = z * h + (1.0 - z) * candidate
  return h, h


def _lstm_step(p, state, x):
  """Flax's LSTMCell: i, f, g, o from x W_i* + h W_h* + b_h* (biases on the recurrent kernels only,
  no forget-gate offset); c' = σ(f) ⊙ c + σ(i) ⊙ tanh(g), h' = σ(o) ⊙ tanh(c'); the output is h'."""
  c, h = state
  gates = "ifgo"
  kernel_x = np.concatenate([p[f"i{g}"]["kernel"] for g in gates], axis=1)
  kernel_h = np.concatenate([p[f"h{g}"]["kernel"] for g in gates], axis=1)
  bias = np.concatenate([p[f"h{g}"]["bias"] for g in gates])
  i, f, g, o = np.split(x @ kernel_x + h @ kernel_h + bias, 4)
  c = _sigmoid(f) * c + _sigmoid(i) * np.tanh(g)
  h = _sigmoid(o) * np.tanh(c)
  return (c, h), h


def _numpy_recurrent_encoder(encoder: RecurrentTextEncoder, variables, row: np.ndarray):
  """(pooled, tokens) of one row of real tokens, float64, one time step at a time from zero states.
  The backward direction is a forward recurrence over the reversed row."""
  params = jax.tree.map(lambda x: np.asarray(x, np.float64), variables["params"])
  step = {"gru": _gru_step, "lstm": _lstm_step}[encoder.cell]
  cells = (params[f"{CELL_PARAMS[encoder.cell]}_{k}"] for k in itertools.count())
  zeros = np.zeros(encoder.width)
  initial_state = (zeros, zeros) if encoder.cell == "lstm" else zeros

  def run(cell_params, xs):
    state, outputs = initial_state, []
    for x in xs:
      state, output = step(cell_params, state, x)
      outputs.append(output)
    return np.stack(outputs)

  x = params["token_embedding"]["embedding"][row]
  for _ in range(encoder.depth):
    forward = run(next(cells), x)
    x = np.concatenate([forward, run(next(cells), x[::-1])[::-1]], axis=1) if encoder.bidirectional else forward
  if encoder.pooling == "mean":
    pooled = x.mean(axis=0)
  elif encoder.bidirectional:  # forward state after the last token, backward state after the first
    pooled = np.concatenate([x[-1, : encoder.width], x[0, encoder.width :]])
  else:
    pooled = x[-1]
  projection = params["projection"]
  return pooled @ projection["kernel"] + projection["bias"], x @ projection["kernel"] + projection["bias"]


class AgainstNumpyTest(chex.TestCase):
  """Forward passes against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters(*RECURRENT)
  def test_recurrent_encoder_matches_a_numpy_reference_row_by_row(self, name):
    encoder, _ = ENCODERS[name]
    variables = _variables(name)
    encoded = self.variant(functools.partial(encoder.apply, return_tokens=True))(variables, TOKENS)
    chex.assert_shape([encoded.pooled, encoded.tokens], [(len(LENGTHS), FEATURES), (len(LENGTHS), TOKENS.shape[1], FEATURES)])
    for index, length in enumerate(LENGTHS):
      pooled, tokens = _numpy_recurrent_encoder(encoder, variables, np.asarray(TOKENS[index, :length]))
      np.testing.assert_allclose(encoded.pooled[index], pooled, rtol=1e-4, atol=1e-5)
      np.testing.assert_allclose(encoded.tokens[index, :length], tokens, rtol=1e-4, atol=1e-5)


def test_gru_keeps_the_parameter_names_of_gru_text_encoder():
  encoder = RecurrentTextEncoder(FEATURES, vocab_size=VOCAB, width=4, depth=2, bidirectional=True)
  params = jax.eval_shape(encoder.init, jax.random.key(0), TOKENS)["params"]
  assert sorted(params) == ["GRUCell_0", "GRUCell_1", "GRUCell_2", "GRUCell_3", "projection", "token_embedding"]
  assert sorted(params["GRUCell_2"]) == ["hn", "hr", "hz", "in", "ir", "iz"]
  assert params["GRUCell_2"]["ir"]["kernel"].shape == (8, 4)  # the second layer reads both directions


@pytest.mark.parametrize("name", ENCODERS)
def test_causal_tokens_do_not_see_later_tokens_and_bidirectional_ones_do(name):
  encoder, causal = ENCODERS[name]
  variables = _variables(name)
  apply = _apply(encoder, return_tokens=True)
  t = 1
  changed = TOKENS.at[0, t + 1 : LENGTHS[0]].set(jnp.array([10, 11, 3]))  # real tokens, same lengths
  before, after = apply(variables, TOKENS), apply(variables, changed)
  np.testing.assert_allclose(after.tokens[1:], before.tokens[1:], atol=1e-5)
  assert np.all(np.abs(after.tokens[0, t + 1 : LENGTHS[0]] - before.tokens[0, t + 1 : LENGTHS[0]]).max(axis=-1) > 1e-4)
  prefix_difference = np.abs(after.tokens[0, : t + 1] - before.tokens[0, : t + 1]).max(axis=-1)
  if causal:
    np.testing.assert_allclose(prefix_difference, 0.0, atol=1e-5)
  else:
    assert np.all(prefix_difference > 1e-4), prefix_difference


@pytest.mark.parametrize("name", [n for n, (e, causal) in ENCODERS.items() if causal and e.pooling == "last"])
def test_causal_last_pooling_is_the_last_real_token(name):
  # GPT-style: the pooled vector is the last real token's features, which have seen the whole text.
  encoder, _ = ENCODERS[name]
  encoded = _apply(encoder, return_tokens=True)(_variables(name), TOKENS)
  last = np.stack([encoded.tokens[i, length - 1] for i, length in enumerate(LENGTHS)])
  np.testing.assert_allclose(encoded.pooled, last, rtol=1e-5, atol=1e-6)


def test_a_row_without_tokens_pools_to_zero_features():
  for name in ("gru-last", "lstm-last-bidirectional"):
    encoder, _ = ENCODERS[name]
    variables = _variables(name)
    empty = jnp.zeros((1, 4), jnp.int32)
    encoded = _apply(encoder, return_tokens=True)(variables, empty)
    np.testing.assert_allclose(encoded.pooled[0], variables["params"]["projection"]["bias"], atol=1e-6)
    assert not np.any(encoded.valid)


@pytest.mark.parametrize("name", ENCODERS)
def test_vmap_over_a_leading_axis_matches_a_loop(name):
  encoder, _ = ENCODERS[name]
  variables = _variables(name)
  stacked = jnp.stack([TOKENS, TOKENS[::-1]])
  batched = jax.jit(jax.vmap(lambda t: encoder.apply(variables, t, return_tokens=True)))(stacked)
  one = _apply(encoder, return_tokens=True)(variables, TOKENS[::-1])
  np.testing.assert_allclose(batched.pooled[1], one.pooled, atol=1e-5)
  np.testing.assert_allclose(batched.tokens[1], one.tokens, atol=1e-5)
  np.testing.assert_array_equal(batched.valid[1], one.valid)


@pytest.mark.parametrize("name", ENCODERS)
def test_gradients_reach_every_parameter(name):
  encoder, _ = ENCODERS[name]

  def loss(variables):
    encoded = encoder.apply(variables, TOKENS, return_tokens=True)
    return jnp.sum(encoded.pooled**2) + jnp.sum(encoded.tokens**2)

  grads = jax.jit(jax.grad(loss))(_variables(name))
  for path, grad in jax.tree_util.tree_leaves_with_path(grads):
    assert np.all(np.isfinite(grad)) and np.any(grad != 0), jax.tree_util.keystr(path)


def _primitive_names(jaxpr) -> set[str]:
  names = set()
  for eqn in jaxpr.eqns:
    names.add(eqn.primitive.name)
    for inner in jax.extend.core.jaxprs_in_params(eqn.params):
      names |= _primitive_names(inner)
  return names


@pytest.mark.parametrize("name", ["transformer-causal-last", "lstm-last", "gru-last-bidirectional"])
def test_remat_changes_memory_not_results(name):
  plain, _ = ENCODERS[name]
  remat = plain.clone(remat=True)
  variables = _variables(name)

  def loss(module, variables):
    return jnp.sum(module.apply(variables, TOKENS, return_tokens=True).tokens ** 2)

  for module in (plain, remat):
    jaxpr = jax.make_jaxpr(jax.grad(functools.partial(loss, module)))(variables).jaxpr
    recomputed = any("remat" in n or "checkpoint" in n for n in _primitive_names(jaxpr))
    assert recomputed == module.remat
  np.testing.assert_allclose(_apply(remat)(variables, TOKENS), _apply(plain)(variables, TOKENS), rtol=1e-6, atol=1e-6)
  grads = jax.jit(jax.grad(functools.partial(loss, plain)))(variables)
  remat_grads = jax.jit(jax.grad(functools.partial(loss, remat)))(variables)
  chex.assert_trees_all_close(remat_grads, grads, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["transformer-mean", "transformer-causal-last", "gru-last", "lstm-mean-bidirectional"])
def test_bfloat16_computation_keeps_float32_parameters(name):
  encoder, _ = ENCODERS[name]
  encoder = encoder.clone(dtype=jnp.bfloat16)
  variables = jax.jit(encoder.init)(jax.random.key(0), TOKENS)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  reference = _apply(encoder.clone(dtype=jnp.float32), return_tokens=True)(variables, TOKENS)
  out = _apply(encoder, return_tokens=True)(variables, TOKENS)
  assert out.pooled.dtype == out.tokens.dtype == jnp.bfloat16 and out.valid.dtype == jnp.bool_
  chex.assert_shape([out.pooled, out.tokens], [(3, FEATURES), (3, 8, FEATURES)])
  np.testing.assert_allclose(out.pooled.astype(jnp.float32), reference.pooled, atol=0.02, rtol=0.02)
  real = np.asarray(out.valid)
  tokens = np.asarray(out.tokens.astype(jnp.float32))
  # bfloat16 keeps 8 significant bits (rounding ≤ 2⁻⁹ ≈ 0.2 % per operation). Pooled outputs of
  # every encoder and fusion stay within 0.02 of float32 (measured, tests/encoders and
  # tests/fusion); a transformer's per-token outputs (|x| up to ~2, after attention, an MLP and
  # two LayerNorms in bfloat16) reached 0.038, hence 0.05 here.
  np.testing.assert_allclose(tokens[real], np.asarray(reference.tokens)[real], atol=0.05, rtol=0.05)


def test_dropout_between_recurrent_layers_only_in_training():
  encoder = RecurrentTextEncoder(FEATURES, vocab_size=VOCAB, cell="lstm", width=8, depth=2, dropout_rate=0.5)
  variables = jax.jit(encoder.init)(jax.random.key(0), TOKENS)
  evaluation = _apply(encoder)(variables, TOKENS)
  np.testing.assert_array_equal(evaluation, _apply(encoder.clone(dropout_rate=0.0))(variables, TOKENS))
  train = _apply(encoder, train=True)
  first = train(variables, TOKENS, rngs={"dropout": jax.random.key(1)})
  np.testing.assert_array_equal(first, train(variables, TOKENS, rngs={"dropout": jax.random.key(1)}))
  assert np.abs(first - evaluation).max() > 1e-3
  assert np.abs(first - train(variables, TOKENS, rngs={"dropout": jax.random.key(2)})).max() > 1e-3
  # One layer: nothing lies between layers, so training changes nothing.
  single = encoder.clone(depth=1)
  single_variables = jax.jit(single.init)(jax.random.key(0), TOKENS)
  np.testing.assert_array_equal(
      _apply(single, train=True)(single_variables, TOKENS, rngs={"dropout": jax.random.key(1)}),
      _apply(single)(single_variables, TOKENS),
  )


def test_pooling_functions_against_numpy():
  x = np.random.default_rng(0).normal(size=(2, 5, 3)).astype(np.float32)
  valid = np.array([[1, 1, 1, 0, 0], [1, 0, 0, 0, 0]], bool)
  np.testing.assert_allclose(layers.masked_mean(x, valid)[0], x[0, :3].mean(0), rtol=1e-6)
  np.testing.assert_allclose(layers.masked_mean(x, valid)[1], x[1, 0], rtol=1e-6)
  np.testing.assert_array_equal(layers.last_valid_position(x, valid), np.stack([x[0, 2], x[1, 0]]))
  np.testing.assert_array_equal(layers.first_position(x, valid), x[:, 0])


@pytest.mark.parametrize(
    "encoder",
    [
        TransformerTextEncoder(8, vocab_size=12, max_length=8, modality="caption"),
        RecurrentTextEncoder(8, vocab_size=12, cell="lstm", modality="caption"),
    ],
    ids=["transformer", "recurrent"],
)
def test_bad_tokens_raise_errors_naming_the_modality(encoder):
  where = rf"{type(encoder).__name__}: modality 'caption': "
  with pytest.raises(ValueError, match=where + r"expected an int array, got float32"):
    encoder.init(jax.random.key(0), jnp.zeros((2, 4)))
  with pytest.raises(ValueError, match=where + r"expected shape \(\?, \?\), got \(8,\)"):
    encoder.init(jax.random.key(0), TOKENS[0])
  with pytest.raises(ValueError, match=where + r"expected shape \(\?, \?\), got \(1, 3, 8\)"):
    encoder.init(jax.random.key(0), TOKENS[None])


def test_bad_configurations_raise_clear_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"modality 'text': tokens have length 8, more than max_length 4"):
    TransformerTextEncoder(8, vocab_size=12, max_length=4).init(key, TOKENS)
  with pytest.raises(ValueError, match=r"Unknown pooling 'max'; valid choices: \['first', 'last', 'mean'\]"):
    TransformerTextEncoder(8, vocab_size=12, max_length=8, pooling="max").init(key, TOKENS)
  with pytest.raises(ValueError, match=r"pooling 'first' with causal attention sees only the first token"):
    TransformerTextEncoder(8, vocab_size=12, max_length=8, pooling="first", causal=True).init(key, TOKENS)
  with pytest.raises(ValueError, match=r"unknown pooling 'max'; valid choices: \['last', 'mean'\]"):
    RecurrentTextEncoder(8, vocab_size=12, pooling="max").init(key, TOKENS)
  with pytest.raises(ValueError, match=r"modality 'text': unknown cell 'rnn'; valid choices: \['gru', 'lstm'\]"):
    RecurrentTextEncoder(8, vocab_size=12, cell="rnn").init(key, TOKENS)
