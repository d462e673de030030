"""ViT: published parameter counts, sin-cos table and patch embedding against NumPy, heads (class token,
GAP, MAP), tokens, dropout, dtypes, remat and errors."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders import MAPHead, ViT, standard_vit
from mmjax.encoders.vit import sincos2d_positions

IMAGES = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
POOLINGS = ["token", "gap", "map"]


def _tiny(**overrides) -> ViT:
  settings = dict(features=6, patch_size=4, width=16, depth=2, num_heads=2, mlp_ratio=2)
  return ViT(**{**settings, **overrides})


def _count(tree) -> int:
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))


# timm's vit_base_patch16_224 and vit_small_patch16_224 (= DeiT-S): class token, learned positions,
# final norm before the head, 1000 classes.
@pytest.mark.parametrize("variant,expected", [("B/16", 86_567_656), ("S/16", 22_050_664)])
def test_parameter_counts_match_timm(variant, expected):
  encoder = standard_vit(variant, features=1000)
  params = jax.eval_shape(encoder.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32))
  assert _count(params) == expected
  width = encoder.width
  # As in the paper, the learned positions cover the class token too: 14 * 14 + 1 rows.
  assert params["params"]["position_embedding"].shape == (197, width)
  assert params["params"]["class_token"].shape == (1, 1, width)


def test_heads_and_positions_own_the_expected_parameters():
  def params(**overrides):
    return jax.eval_shape(_tiny(**overrides).init, jax.random.key(0), IMAGES)["params"]

  token, gap, fixed, attention = params(), params(pooling="gap"), params(positions="sincos2d"), params(pooling="map")
  assert token["position_embedding"].shape == (17, 16) and gap["position_embedding"].shape == (16, 16)
  assert "class_token" not in gap and "position_embedding" not in fixed
  assert _count(token) - _count(gap) == 2 * 16  # the class token and its position
  assert _count(token) - _count(fixed) == 17 * 16  # the table is fixed, not a parameter
  assert set(attention["map_head"]) == {"probe", "attention", "mlp_norm", "mlp_in", "mlp_out"}


def test_sincos2d_table_matches_numpy(jit_variant):
  rows, cols, width, temperature = 3, 5, 16, 10_000.0
  quarter = width // 4
  expected = np.zeros((rows * cols, width))
  for r in range(rows):
    for c in range(cols):
      for k in range(quarter):
        omega = 1.0 / temperature ** (k / (quarter - 1))
        expected[r * cols + c, [k, quarter + k, 2 * quarter + k, 3 * quarter + k]] = [
            math.sin(c * omega),
            math.cos(c * omega),
            math.sin(r * omega),
            math.cos(r * omega),
        ]
  table = sincos2d_positions(rows, cols, width)
  assert table.dtype == np.float32
  np.testing.assert_allclose(table, expected, rtol=1e-6, atol=1e-6)


def _patches(images, patch_size):
  """Row-major ``[B, rows * cols, p * p * C]`` patches, each flattened in (row, column, channel) order."""
  b, h, w, c = images.shape
  x = np.asarray(images, np.float64).reshape(b, h // patch_size, patch_size, w // patch_size, patch_size, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, patch_size * patch_size * c)


@pytest.mark.parametrize("pooling,positions", [("gap", "sincos2d"), ("token", "learned")])
def test_depth_zero_encoder_matches_numpy(pooling, positions, numpy_layers, jit_variant):
  # With no blocks, the encoder is patch embedding + positions (+ class token), final norm, head.
  _, layer_norm = numpy_layers
  encoder = _tiny(depth=0, pooling=pooling, positions=positions)
  variables = jax.jit(encoder.init)(jax.random.key(1), IMAGES)
  # The class token starts at zero; move it so its position row really matters.
  variables = jax.tree_util.tree_map_with_path(
      lambda path, leaf: leaf + 0.3 if "class_token" in jax.tree_util.keystr(path) else leaf, variables
  )
  p = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables["params"])
  x = _patches(IMAGES, 4) @ p["patch_embedding"]["kernel"].reshape(-1, 16) + p["patch_embedding"]["bias"]
  if positions == "sincos2d":
    x = x + sincos2d_positions(4, 4, 16)
  else:
    class_token = np.broadcast_to(p["class_token"], (2, 1, 16))
    x = np.concatenate([class_token, x], axis=1) + p["position_embedding"]
  x = layer_norm(x, p["final_norm"]["scale"], p["final_norm"]["bias"])
  patches = x[:, 1:] if pooling == "token" else x
  pooled = x[:, 0] if pooling == "token" else patches.mean(axis=1)

  def project(y):
    return y @ p["projection"]["kernel"] + p["projection"]["bias"]

  encoded = jax.jit(lambda v, images: encoder.apply(v, images, return_tokens=True))(variables, IMAGES)
  np.testing.assert_allclose(encoded.tokens, project(patches), rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(encoded.pooled, project(pooled), rtol=1e-4, atol=1e-5)


def test_map_head_matches_numpy_and_ignores_token_order(numpy_layers, jit_variant):
  gelu, layer_norm = numpy_layers
  head = MAPHead(num_heads=2, mlp_ratio=3)
  tokens = jax.random.normal(jax.random.key(2), (2, 5, 8))
  variables = jax.jit(head.init)(jax.random.key(3), tokens)
  p = jax.tree.map(lambda leaf: np.asarray(leaf, np.float64), variables["params"])
  attention = p["attention"]
  x = np.asarray(tokens, np.float64)
  query = np.einsum("d,dhk->hk", p["probe"][0, 0], attention["query"]["kernel"]) + attention["query"]["bias"]
  keys = np.einsum("btd,dhk->bthk", x, attention["key"]["kernel"]) + attention["key"]["bias"]
  values = np.einsum("btd,dhk->bthk", x, attention["value"]["kernel"]) + attention["value"]["bias"]
  logits = np.einsum("hk,bthk->bht", query, keys) / math.sqrt(4)
  weights = np.exp(logits - logits.max(-1, keepdims=True))
  weights /= weights.sum(-1, keepdims=True)
  attended = np.einsum("bht,bthk->bhk", weights, values)
  pooled = np.einsum("bhk,hkd->bd", attended, attention["out"]["kernel"]) + attention["out"]["bias"]
  normed = layer_norm(pooled, p["mlp_norm"]["scale"], p["mlp_norm"]["bias"])
  hidden = gelu(normed @ p["mlp_in"]["kernel"] + p["mlp_in"]["bias"])
  expected = pooled + hidden @ p["mlp_out"]["kernel"] + p["mlp_out"]["bias"]
  apply = jax.jit(head.apply)
  np.testing.assert_allclose(apply(variables, tokens), expected, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(apply(variables, tokens[:, ::-1]), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_tokens_are_the_patches_through_the_same_projection(pooling):
  encoder = _tiny(pooling=pooling)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  encoded = jax.jit(lambda v, x: encoder.apply(v, x, return_tokens=True))(variables, IMAGES)
  chex.assert_shape(encoded.pooled, (2, 6))
  chex.assert_shape(encoded.tokens, (2, 16, 6))  # 4x4 patches, class token excluded
  assert encoded.valid.shape == (2, 16) and bool(encoded.valid.all())
  np.testing.assert_allclose(encoded.pooled, jax.jit(encoder.apply)(variables, IMAGES), rtol=1e-6, atol=1e-6)
  mean_of_tokens = np.asarray(encoded.tokens).mean(axis=1)
  if pooling == "gap":
    np.testing.assert_allclose(mean_of_tokens, encoded.pooled, rtol=1e-5, atol=1e-5)
  else:
    assert not np.allclose(mean_of_tokens, encoded.pooled, atol=1e-3)


def test_vmap_over_a_leading_axis_matches_a_loop():
  encoder = _tiny(pooling="map")
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  stacked = jnp.stack([IMAGES, IMAGES[::-1] * 2])
  batched = jax.jit(jax.vmap(lambda x: encoder.apply(variables, x, return_tokens=True)))(stacked)
  single = jax.jit(lambda x: encoder.apply(variables, x, return_tokens=True))(IMAGES[::-1] * 2)
  chex.assert_trees_all_close(jax.tree.map(lambda leaf: leaf[1], batched), single, rtol=1e-5, atol=1e-6)
  # Each sample is encoded on its own.
  np.testing.assert_allclose(single.pooled[0], jax.jit(encoder.apply)(variables, IMAGES[1:] * 2)[0], atol=1e-5)


@pytest.mark.parametrize("pooling", POOLINGS)
def test_gradients_reach_every_parameter(pooling, assert_every_leaf_nonzero):
  encoder = _tiny(pooling=pooling, depth=1)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)

  def loss(v):
    encoded = encoder.apply(v, IMAGES, return_tokens=True)
    return jnp.sum(encoded.pooled**2) + jnp.sum(jnp.sin(encoded.tokens))

  assert_every_leaf_nonzero(jax.jit(jax.grad(loss))(variables))


def test_dropout_acts_only_in_training():
  encoder = _tiny(dropout_rate=0.2)
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)

  def train(key):
    return encoder.apply(variables, IMAGES, train=True, rngs={"dropout": key})

  train = jax.jit(train)
  evaluate = jax.jit(encoder.apply)
  assert not np.allclose(train(jax.random.key(1)), train(jax.random.key(2)), atol=1e-4)
  np.testing.assert_array_equal(train(jax.random.key(1)), train(jax.random.key(1)))
  without_dropout = jax.jit(lambda v, x: encoder.clone(dropout_rate=0.0).apply(v, x, train=True))
  np.testing.assert_allclose(evaluate(variables, IMAGES), without_dropout(variables, IMAGES), rtol=1e-6, atol=1e-6)


def test_remat_changes_memory_not_results(count_remats):
  plain = _tiny(dropout_rate=0.1)
  remat = plain.clone(remat=True)
  variables = jax.jit(plain.init)(jax.random.key(0), IMAGES)

  def loss(module):
    # Training mode: the recomputed blocks must draw the same dropout masks.
    return lambda v: jnp.sum(module.apply(v, IMAGES, train=True, rngs={"dropout": jax.random.key(7)}) ** 2)

  plain_loss, plain_grads = jax.jit(jax.value_and_grad(loss(plain)))(variables)
  remat_loss, remat_grads = jax.jit(jax.value_and_grad(loss(remat)))(variables)
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  chex.assert_trees_all_close(remat_grads, plain_grads, rtol=1e-5, atol=1e-6)
  assert count_remats(jax.grad(loss(remat)), variables) == 2  # one per block
  assert count_remats(jax.grad(loss(plain)), variables) == 0


def test_bfloat16_computation_keeps_float32_parameters():
  encoder = _tiny(dtype=jnp.bfloat16, pooling="map")
  variables = jax.jit(encoder.init)(jax.random.key(0), IMAGES)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
  encoded = jax.jit(lambda v, x: encoder.apply(v, x, return_tokens=True))(variables, IMAGES)
  assert encoded.pooled.dtype == encoded.tokens.dtype == jnp.bfloat16
  reference = jax.jit(encoder.clone(dtype=jnp.float32).apply)(variables, IMAGES)
  np.testing.assert_allclose(encoded.pooled.astype(jnp.float32), reference, atol=0.02)


def test_learned_positions_start_from_a_normal_of_std_0_02():
  encoder = _tiny(width=64, num_heads=4)
  images = jnp.zeros((1, 64, 64, 3))
  table = jax.jit(encoder.init)(jax.random.key(0), images)["params"]["position_embedding"]
  assert table.shape == (257, 64)
  assert abs(float(jnp.std(table)) - 0.02) < 0.001 and abs(float(jnp.mean(table))) < 0.001


def test_bad_configuration_and_input_raise_clear_errors():
  key = jax.random.key(0)
  with pytest.raises(ValueError, match=r"ViT: modality 'image': image size 18x16 is not divisible by patch_size 4"):
    _tiny().init(key, jnp.zeros((2, 18, 16, 3)))
  with pytest.raises(ValueError, match=r"ViT: modality 'image': expected shape \(\?, \?, \?, \?\), got \(16, 16, 3\)"):
    _tiny().init(key, IMAGES[0])
  with pytest.raises(ValueError, match=r"ViT: modality 'scan': expected a float array, got int32"):
    _tiny(modality="scan").init(key, IMAGES.astype(jnp.int32))
  with pytest.raises(ValueError, match=r"ViT: unknown pooling 'max'; valid choices: \['token', 'gap', 'map'\]"):
    _tiny(pooling="max").init(key, IMAGES)
  with pytest.raises(ValueError, match=r"ViT: unknown positions 'rope'; valid choices: \['learned', 'sincos2d'\]"):
    _tiny(positions="rope").init(key, IMAGES)
  with pytest.raises(ValueError, match=r"ViT: width 16 must be divisible by num_heads 3"):
    _tiny(num_heads=3).init(key, IMAGES)
  with pytest.raises(ValueError, match=r"sincos2d_positions: width must be a multiple of 4 and at least 8, got 6"):
    _tiny(width=6, positions="sincos2d").init(key, IMAGES)
  variables = jax.eval_shape(_tiny().init, key, IMAGES)
  with pytest.raises(ValueError, match=r"ViT: modality 'image': 2x2 patches need 5 learned positions, the table was"):
    jax.eval_shape(_tiny().apply, variables, IMAGES[:, :8, :8])
  with pytest.raises(ValueError, match=r"standard_vit: unknown variant 'B16'"):
    standard_vit("B16", features=4)
