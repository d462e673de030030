"""The fusion contract, checked on every fusion: shapes and dtypes, absent modalities and padding
cannot change the output, gradients reach every modality and parameter, jit, vmap, bfloat16, dict
order, and bad inputs raise a ValueError naming the modality."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import fusion
from mmjax.encoders.base import Encoded
from mmjax.fusion import FUSIONS
from mmjax.fusion.base import masked_softmax, mean_over_present

TOKENS = dict(width=8, depth=1, num_heads=2)
TWO = ("audio", "image")
# (id, module, modalities): every fusion in FUSIONS, and every variant of the ones that have some.
CASES = [
    ("early", fusion.EarlyFusion(4), None),
    ("sum", fusion.SumFusion(4), None),
    ("mean", fusion.MeanFusion(4), None),
    ("attention", fusion.AttentionFusion(4), None),
    ("late-mean", fusion.LateFusion(3), None),
    ("late-learned", fusion.LateFusion(3, combine="learned"), None),
    ("late-vote", fusion.LateFusion(3, combine="vote"), None),
    ("gmu", fusion.GatedMultimodalUnit(4), TWO),
    ("gated", fusion.GatedFusion(4), None),
    ("tensor", fusion.TensorFusion(4), None),
    ("low_rank", fusion.LowRankFusion(4, rank=2), None),
    ("multiplicative-matrix", fusion.MultiplicativeFusion(4), None),
    ("multiplicative-vector", fusion.MultiplicativeFusion(4, form="vector"), None),
    ("multiplicative-scalar", fusion.MultiplicativeFusion(4, form="scalar"), None),
    ("cross_modal", fusion.CrossModalTransformer(4, **TOKENS), None),
    ("co_attention", fusion.CoAttentionFusion(4, **TOKENS), None),
    ("transformer", fusion.MultimodalTransformer(4, **TOKENS), None),
    ("bottleneck", fusion.BottleneckFusion(4, width=8, depth=2, fusion_layer=1, num_bottlenecks=2, num_heads=2), None),
    ("graph-gcn", fusion.GraphFusion(4, width=8), None),
    ("graph-gat", fusion.GraphFusion(4, width=8, conv="gat", num_heads=2), None),
    ("token_graph-gcn", fusion.TokenGraphFusion(4, width=8, depth=1), None),
    ("token_graph-gat", fusion.TokenGraphFusion(4, width=8, depth=1, conv="gat", num_heads=2), None),
]
IDS = [case[0] for case in CASES]


def test_cases_cover_every_registered_fusion():
  assert {type(module) for _, module, _ in CASES} == set(FUSIONS.values())
  assert {name for name, cls in FUSIONS.items() if cls.needs_tokens} == {
      "cross_modal", "co_attention", "transformer", "bottleneck", "token_graph"
  }
  assert [name for name, cls in FUSIONS.items() if cls.outputs_predictions] == ["late"]


_PREPARED = {}


def _setup(case, batch, seed=0):
  """``(module, variables, inputs, present)``, initialised once per case and seed."""
  key = (case[0], seed)
  if key not in _PREPARED:
    _, module, modalities = case
    inputs, present = batch(seed, modalities or ("audio", "image", "text"))
    _PREPARED[key] = module, jax.jit(module.init)(jax.random.key(seed), inputs, present), inputs, present
  return _PREPARED[key]


_APPLY = {}


def _apply(module):
  """One jitted ``module.apply`` per module, so tests with the same shapes share its compilation."""
  return _APPLY.setdefault(id(module), jax.jit(module.apply))


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_output_ignores_absent_values_padding_and_dict_order(case, batch, with_garbage):
  module, variables, inputs, present = _setup(case, batch)
  apply = _apply(module)
  out = apply(variables, inputs, present)
  assert out.shape == (5, module.features) and out.dtype == jnp.float32
  assert np.all(np.isfinite(out)), "sample 3 has no modality at all, the others some"
  np.testing.assert_allclose(apply(variables, with_garbage(inputs, present), present), out, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(apply(variables, dict(reversed(inputs.items())), present), out, rtol=1e-6, atol=1e-6)
  if module.outputs_predictions:
    np.testing.assert_allclose(jnp.exp(out).sum(-1), 1, rtol=1e-5)
  # Presence matters: the fully present sample changes when a modality is dropped.
  dropped = {**present, "audio": present["audio"].at[0].set(False)}
  assert not np.allclose(apply(variables, inputs, dropped)[0], out[0], atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_gradients_reach_every_parameter_and_only_present_inputs(case, batch, assert_params_all_have_gradient):
  module, variables, inputs, present = _setup(case, batch, seed=1)
  if module.needs_tokens:
    # A one-token stream's self-attention weight is always 1: its query and key get no gradient.
    image = inputs["image"]
    inputs = {**inputs, "image": Encoded(image, jnp.stack([image, jnp.roll(image, 1, 1)], 1), jnp.ones((5, 2), bool))}
  cotangent = jnp.asarray(np.random.default_rng(0).normal(size=(5, module.features)), jnp.float32)
  # Differentiable leaves only: (pooled, tokens) of an Encoded, its mask held fixed.
  floats = {name: (x.pooled, x.tokens) if isinstance(x, Encoded) else x for name, x in inputs.items()}

  def loss(variables, floats):
    rebuilt = {
        name: Encoded(*f, inputs[name].valid) if isinstance(inputs[name], Encoded) else f for name, f in floats.items()
    }
    return jnp.sum(module.apply(variables, rebuilt, present) * cotangent)

  param_grads, input_grads = jax.jit(jax.grad(loss, argnums=(0, 1)))(variables, floats)
  assert_params_all_have_gradient(param_grads)
  for name, grad in input_grads.items():
    here = np.asarray(present[name])
    if isinstance(grad, tuple):
      pooled, tokens = (np.asarray(g) for g in grad)
      read, unread = (tokens, pooled) if module.needs_tokens else (pooled, tokens)
      assert np.all(unread == 0), f"{name}: the fusion reads the wrong view of an Encoded"
      if module.needs_tokens:
        assert np.all(tokens[~np.asarray(inputs[name].valid)] == 0), f"{name} padding got gradient"
    else:
      read = np.asarray(grad)
    read = read.reshape(5, -1)
    assert np.all(np.isfinite(read)), name
    assert np.all(read[~here] == 0), f"absent {name} got gradient"
    assert np.all(np.abs(read[here]).sum(-1) > 0), f"present {name} got no gradient"


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_vmap_over_a_leading_axis_matches_separate_calls(case, batch):
  module, variables, inputs, present = _setup(case, batch)
  other_inputs, _ = batch(7, list(inputs))
  other_present = {name: here[::-1] for name, here in present.items()}
  stacked = jax.tree.map(lambda a, b: jnp.stack([a, b]), (inputs, present), (other_inputs, other_present))
  batched = jax.jit(jax.vmap(lambda x, p: module.apply(variables, x, p)))(*stacked)
  apply = _apply(module)
  np.testing.assert_allclose(batched[0], apply(variables, inputs, present), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(batched[1], apply(variables, other_inputs, other_present), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bfloat16_computation_keeps_float32_parameters(case, batch):
  module, variables, inputs, present = _setup(case, batch)
  low = module.clone(dtype=jnp.bfloat16)
  shapes = jax.eval_shape(low.init, jax.random.key(0), inputs, present)
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  out = jax.jit(low.apply)(variables, inputs, present)
  assert out.dtype == jnp.bfloat16 and np.all(np.isfinite(out.astype(jnp.float32)))
  reference = _apply(module)(variables, inputs, present)
  np.testing.assert_allclose(out.astype(jnp.float32), reference, atol=0.02, rtol=0.02)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_pooled_and_token_inputs_are_read_as_the_contract_says(case, batch):
  module, variables, inputs, present = _setup(case, batch)
  apply = _apply(module)
  if module.needs_tokens:
    # A pooled array is one token: the same as an Encoded holding that single token.
    as_array = {**inputs, "image": inputs["image"]}
    as_encoded = {**inputs, "image": Encoded(inputs["image"], inputs["image"][:, None], jnp.ones((5, 1), bool))}
    np.testing.assert_allclose(apply(variables, as_array, present), apply(variables, as_encoded, present), atol=1e-6)
  else:
    # Only the pooled features count.
    pooled = {name: getattr(x, "pooled", x) for name, x in inputs.items()}
    np.testing.assert_allclose(apply(variables, pooled, present), apply(variables, inputs, present), atol=1e-6)


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_bad_inputs_raise_value_errors_naming_the_modality(case, batch):
  module, variables, inputs, present = _setup(case, batch)
  where = type(module).__name__
  image = inputs["image"]

  def fails(bad_inputs, bad_present, message):
    with pytest.raises(ValueError) as error:
      module.apply(variables, bad_inputs, bad_present)
    assert str(error.value).startswith(f"{where}: ") and message in str(error.value), str(error.value)

  fails({**inputs, "image": image[:4]}, present, "modality 'image': expected shape (B, ?) with B=5, got (4, 5)")
  fails({**inputs, "image": image[:, 0]}, present, "modality 'image': expected shape (B, ?) with B=5, got (5,)")
  fails({**inputs, "image": image.astype(jnp.int32)}, present, "modality 'image': expected a float array, got int32")
  fails({**inputs, "image": image[:, None]}, present, "modality 'image': a token sequence must come as an Encoded")
  audio = inputs["audio"]
  fails({**inputs, "audio": audio._replace(valid=audio.valid[:, :2])}, present,
        "modality 'audio' valid: expected shape (B, 4) with B=5, got (5, 2)")
  fails({**inputs, "audio": audio._replace(valid=audio.valid.astype(jnp.float32))}, present,
        "modality 'audio' valid: expected a bool array")
  fails(inputs, {k: v for k, v in present.items() if k != "image"}, "present has no entry for modality 'image'")
  fails(inputs, {**present, "depth": present["image"]}, "present names modalities ['depth'] that are not among")
  fails(inputs, {**present, "image": present["image"][:3]}, "present['image']: expected shape (B,) with B=5, got (3,)")
  fails(inputs, {**present, "image": present["image"].astype(jnp.int32)}, "present['image']: expected a bool array")
  with pytest.raises(ValueError, match="inputs must be a non-empty dict"):
    module.apply(variables, {}, None)


def test_modality_counts_are_checked():
  inputs = {"audio": jnp.ones((2, 3)), "image": jnp.ones((2, 4)), "text": jnp.ones((2, 5))}
  names = r"\['audio', 'image', 'text'\]"
  with pytest.raises(ValueError, match=rf"GatedMultimodalUnit: needs exactly 2 modalities, got 3: {names}"):
    fusion.GatedMultimodalUnit(4).init(jax.random.key(0), inputs)
  at_least_two = [fusion.MultiplicativeFusion(4), fusion.CrossModalTransformer(4, **TOKENS),
                  fusion.CoAttentionFusion(4, **TOKENS)]
  for module in at_least_two:
    with pytest.raises(ValueError, match=rf"{type(module).__name__}: needs at least 2 modalities, got 1: \['image'\]"):
      module.init(jax.random.key(0), {"image": inputs["image"]})


def test_masked_softmax_and_mean_over_present_against_numpy():
  rng = np.random.default_rng(0)
  logits, valid = rng.normal(size=(4, 3)).astype(np.float32), rng.random((4, 3)) < 0.5
  valid[:, 0] = [True, False, False, False]
  got = masked_softmax(jnp.asarray(logits), jnp.asarray(valid), axis=0)
  for column in range(3):
    e = np.exp(logits[valid[:, column], column].astype(np.float64))
    want = np.zeros(4)
    want[valid[:, column]] = e / e.sum()
    np.testing.assert_allclose(got[:, column], want, rtol=1e-6)
  np.testing.assert_array_equal(masked_softmax(jnp.asarray(logits), jnp.zeros((4, 3), bool)), 0)
  values = rng.normal(size=(4, 3, 2)).astype(np.float32)
  got = mean_over_present(jnp.asarray(values), jnp.asarray(valid))
  for column in range(3):
    want = values[valid[:, column], column].mean(0) if valid[:, column].any() else np.zeros(2)
    np.testing.assert_allclose(got[column], want, rtol=1e-6)
