"""`mmjax.linear`: the 2-D-matmul `dot_general` against NumPy, under jit, vmap and grad, and its
layers against Flax's own (same parameters, same outputs)."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax import lax

from mmjax import linear
from tests import jaxprs

RNG = np.random.default_rng(0)

# (lhs shape, rhs shape, dimension numbers, the same contraction as an einsum)
CONTRACTIONS = {
    "dense on tokens": ((3, 5, 8), (8, 7), (((2,), (0,)), ((), ())), "bld,df->blf"),
    "projection to heads": ((3, 5, 8), (8, 2, 4), (((2,), (0,)), ((), ())), "bld,dhk->blhk"),
    "heads back to width": ((3, 5, 2, 4), (2, 4, 6), (((2, 3), (0, 1)), ((), ())), "blhk,hkd->bld"),
    "plain matrix product": ((4, 8), (8, 3), (((1,), (0,)), ((), ())), "nd,df->nf"),
    # Not a trailing-by-leading contraction, or with batch axes: computed by lax.dot_general as is.
    "batched attention scores": ((3, 2, 5, 4), (3, 2, 6, 4), (((3,), (3,)), ((0, 1), (0, 1))), "bhqk,bhsk->bhqs"),
    "contraction on a leading axis": ((8, 3, 5), (8, 7), (((0,), (0,)), ((), ())), "dbl,df->blf"),
}


class MatmulDotGeneralTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((name.replace(" ", "_"), name) for name in CONTRACTIONS)
  def test_value_and_gradients_match_numpy(self, name):
    lhs_shape, rhs_shape, dimension_numbers, einsum = CONTRACTIONS[name]
    lhs, rhs = RNG.normal(size=lhs_shape), RNG.normal(size=rhs_shape)
    cotangent = RNG.normal(size=np.einsum(einsum, lhs, rhs).shape)

    def weighted(lhs, rhs):
      return jnp.sum(linear.matmul_dot_general(lhs, rhs, dimension_numbers) * cotangent)

    value = self.variant(lambda l, r: linear.matmul_dot_general(l, r, dimension_numbers))(
        jnp.asarray(lhs, jnp.float32), jnp.asarray(rhs, jnp.float32)
    )
    np.testing.assert_allclose(value, np.einsum(einsum, lhs, rhs), rtol=1e-5, atol=1e-5)
    grad_lhs, grad_rhs = self.variant(jax.grad(weighted, argnums=(0, 1)))(
        jnp.asarray(lhs, jnp.float32), jnp.asarray(rhs, jnp.float32)
    )
    # The gradients of sum(einsum(lhs, rhs) * cotangent): the transposed einsums, in float64.
    inputs, output = einsum.split("->")
    lhs_axes, rhs_axes = inputs.split(",")
    np.testing.assert_allclose(grad_lhs, np.einsum(f"{output},{rhs_axes}->{lhs_axes}", cotangent, rhs), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(grad_rhs, np.einsum(f"{lhs_axes},{output}->{rhs_axes}", lhs, cotangent), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", list(CONTRACTIONS))
def test_vmap_over_a_leading_axis(name):
  lhs_shape, rhs_shape, dimension_numbers, einsum = CONTRACTIONS[name]
  lhs, rhs = RNG.normal(size=(2, *lhs_shape)), RNG.normal(size=rhs_shape)
  mapped = jax.vmap(lambda l: linear.matmul_dot_general(l, jnp.asarray(rhs, jnp.float32), dimension_numbers))
  want = np.stack([np.einsum(einsum, one, rhs) for one in lhs])
  np.testing.assert_allclose(mapped(jnp.asarray(lhs, jnp.float32)), want, rtol=1e-5, atol=1e-5)


def _dot_operand_ranks(function, *args) -> list[tuple[int, int]]:
  """Ranks of the operands of every dot_general in the jaxpr of `function`'s gradient."""
  jaxpr = jax.make_jaxpr(jax.grad(function))(*args).jaxpr
  return [tuple(v.aval.ndim for v in e.invars) for e in jaxprs.equations(jaxpr) if e.primitive is lax.dot_general_p]


def test_a_dense_layer_on_tokens_is_two_dimensional_matmuls_forward_and_backward():
  # The property the speed-up rests on: no dot_general with more than one free axis per operand.
  tokens = jnp.ones((4, 6, 8))
  layer = linear.Dense(16)
  params = layer.init(jax.random.key(0), tokens)
  ranks = _dot_operand_ranks(lambda p: jnp.sum(layer.apply(p, tokens) ** 2), params)
  assert ranks and all(r == (2, 2) for r in ranks), ranks
  flax_ranks = _dot_operand_ranks(lambda p: jnp.sum(nn.Dense(16).apply(p, tokens) ** 2), params)
  assert any(max(r) > 2 for r in flax_ranks), flax_ranks  # what it replaces


LAYERS = {
    "Dense": (lambda: linear.Dense(7), lambda: nn.Dense(7), 1),
    "DenseGeneral to heads": (lambda: linear.DenseGeneral((2, 3)), lambda: nn.DenseGeneral((2, 3)), 1),
    "DenseGeneral from heads": (
        lambda: linear.DenseGeneral(4, axis=(-2, -1)), lambda: nn.DenseGeneral(4, axis=(-2, -1)), 1
    ),
    "Conv": (lambda: linear.Conv(6, (3, 3), strides=2), lambda: nn.Conv(6, (3, 3), strides=2), 1),
    "Conv without bias": (lambda: linear.Conv(6, (3, 3), use_bias=False), lambda: nn.Conv(6, (3, 3), use_bias=False), 1),
    "Conv on sequences": (lambda: linear.Conv(6, (3,), padding="VALID"), lambda: nn.Conv(6, (3,), padding="VALID"), 1),
    "ConvTranspose": (
        lambda: linear.ConvTranspose(5, (4, 4), strides=(2, 2)), lambda: nn.ConvTranspose(5, (4, 4), strides=(2, 2)), 1
    ),
    "MultiHeadDotProductAttention": (
        lambda: linear.MultiHeadDotProductAttention(num_heads=2),
        lambda: nn.MultiHeadDotProductAttention(num_heads=2),
        2,
    ),
}


@pytest.mark.parametrize("name", list(LAYERS))
def test_layers_have_flax_parameters_and_outputs(name):
  make, make_flax, num_inputs = LAYERS[name]
  shape = {
      "DenseGeneral from heads": (3, 5, 2, 4), "Conv": (3, 8, 8, 4), "Conv without bias": (3, 8, 8, 4),
      "ConvTranspose": (3, 4, 4, 6),
  }
  x = jax.random.normal(jax.random.key(1), shape.get(name, (3, 5, 8)))
  inputs = (x,) * num_inputs
  ours, theirs = make(), make_flax()
  params = theirs.init(jax.random.key(2), *inputs)
  chex.assert_trees_all_equal(ours.init(jax.random.key(2), *inputs), params)
  chex.assert_trees_all_close(ours.apply(params, *inputs), theirs.apply(params, *inputs), rtol=1e-6, atol=1e-6)
  loss = lambda module: lambda p: jnp.sum(module.apply(p, *inputs) ** 2)  # noqa: E731
  chex.assert_trees_all_close(jax.grad(loss(ours))(params), jax.grad(loss(theirs))(params), rtol=1e-5, atol=1e-5)


# (parameter shape, rows it is broadcast over)
BROADCASTS = {
    "bias over tokens": ((6,), (3, 4)),
    "per-head bias over a batch": ((2, 3), (5,)),
    "bias over feature map cells": ((4,), (2, 3, 3)),
    "no rows": ((4,), ()),
}


class BroadcastParameterTest(chex.TestCase, parameterized.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters((name.replace(" ", "_"), name) for name in BROADCASTS)
  def test_value_and_gradient_match_numpy(self, name):
    shape, rows = BROADCASTS[name]
    parameter = RNG.normal(size=shape)
    cotangent = RNG.normal(size=(*rows, *shape))
    value = self.variant(lambda p: linear.broadcast_parameter(p, rows))(jnp.asarray(parameter, jnp.float32))
    np.testing.assert_allclose(value, np.broadcast_to(parameter, cotangent.shape), rtol=1e-6)
    weighted = lambda p: jnp.sum(linear.broadcast_parameter(p, rows) * cotangent)  # noqa: E731
    gradient = self.variant(jax.grad(weighted))(jnp.asarray(parameter, jnp.float32))
    np.testing.assert_allclose(gradient, cotangent.reshape(-1, *shape).sum(0), rtol=1e-5, atol=1e-5)

  def test_vmap_over_per_example_parameters(self):
    parameters, cotangent = RNG.normal(size=(3, 4)), RNG.normal(size=(3, 2, 5, 4))
    weighted = lambda p, c: jnp.sum(linear.broadcast_parameter(p, (2, 5)) * c)  # noqa: E731
    gradients = jax.vmap(jax.grad(weighted))(jnp.asarray(parameters, jnp.float32), jnp.asarray(cotangent, jnp.float32))
    np.testing.assert_allclose(gradients, cotangent.sum((1, 2)), rtol=1e-5, atol=1e-5)

  def test_forward_mode_and_second_derivatives(self):
    # Forward mode (jacfwd, Hessians) works: the gradient is a custom JVP rule, not a custom VJP.
    parameter = jnp.asarray(RNG.normal(size=(3,)), jnp.float32)
    weights = jnp.asarray(RNG.normal(size=(4, 3)), jnp.float32)
    cubic = lambda p: jnp.sum(weights * linear.broadcast_parameter(p, (4,)) ** 3)  # noqa: E731
    # d/dp sum_r w_r p³ = 3 p² Σ_r w_r; its Hessian is diagonal, 6 p Σ_r w_r.
    np.testing.assert_allclose(jax.grad(cubic)(parameter), 3 * parameter**2 * weights.sum(0), rtol=1e-5)
    np.testing.assert_allclose(jax.jacfwd(cubic)(parameter), 3 * parameter**2 * weights.sum(0), rtol=1e-5)
    np.testing.assert_allclose(jax.hessian(cubic)(parameter), np.diag(6 * parameter * weights.sum(0)), rtol=1e-5)

  def test_keeps_a_low_precision_dtype(self):
    gradient = jax.grad(lambda p: jnp.sum(linear.broadcast_parameter(p, (8, 3)).astype(jnp.float32)))(
        jnp.ones((5,), jnp.bfloat16)
    )
    assert gradient.dtype == jnp.bfloat16
    np.testing.assert_array_equal(gradient.astype(jnp.float32), np.full(5, 24.0))

  def test_gradient_is_a_matrix_vector_product_on_cpu(self):
    # What the speed-up rests on: the sum over rows is a dot_general, not a reduction, on CPU.
    assert jax.default_backend() == "cpu"

    def pullback_primitives(broadcast):
      pullback = lambda b, c: jax.vjp(lambda b: jnp.sin(broadcast(b, (4, 6))), b)[1](c)  # noqa: E731
      jaxpr = jax.make_jaxpr(pullback)(jnp.ones(3), jnp.ones((4, 6, 3)))
      return [equation.primitive for equation in jaxprs.equations(jaxpr.jaxpr)]

    ours = pullback_primitives(linear.broadcast_parameter)
    assert lax.dot_general_p in ours and lax.reduce_sum_p not in ours, ours
    plain = pullback_primitives(lambda b, rows: jnp.broadcast_to(b, (*rows, *b.shape)))
    assert lax.reduce_sum_p in plain, plain  # what it replaces
