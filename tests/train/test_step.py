"""The generic train step: accumulation (exact for contrastive objectives), multiple objectives."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mmjax import experiment
from mmjax.models.base import Objective
from mmjax.train import step as step_lib


@pytest.fixture(scope="module")
def setup(data_dir):
  from tests.conftest import small_config

  config = small_config(data_dir)
  run = experiment.build(config)
  batch = run.data.train_dataset(32, seed=0)[0]
  params = jax.jit(run.model.init)(jax.random.key(0), batch)["params"]
  return run.model, params, batch


def _grads(objective, params, batch, accumulation_steps):
  fn = jax.jit(
      lambda p, b: step_lib.objective_value_and_grad(objective, p, {}, b, jax.random.key(3), jnp.int32(0), accumulation_steps)
  )
  return fn(params, batch)


def _assert_trees_close(a, b, rtol=1e-5):
  """Leafwise equal up to `rtol`, entries near zero judged against their leaf's largest entry."""
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(y).max()))


@pytest.mark.parametrize("accumulation_steps", [2, 4])
def test_contrastive_accumulation_equals_the_full_batch_gradient(setup, accumulation_steps):
  model, params, batch = setup
  objective = model.objectives[0]
  (loss, (metrics, _)), grads = _grads(objective, params, batch, 1)
  (acc_loss, (acc_metrics, _)), acc_grads = _grads(objective, params, batch, accumulation_steps)
  np.testing.assert_allclose(acc_loss, loss, rtol=1e-5)
  # Batch accuracy is permutation invariant, so the metrics agree too.
  np.testing.assert_allclose(acc_metrics["i2t_batch_accuracy"], metrics["i2t_batch_accuracy"], rtol=1e-6)
  _assert_trees_close(acc_grads, grads)


def test_ordinary_accumulation_averages_micro_batch_gradients(setup):
  model, params, batch = setup
  objective = dataclasses.replace(model.objectives[0], embed=None, embedding_loss=None)
  (loss, _), grads = _grads(objective, params, batch, 4)
  micro = step_lib.split_micro_batches(batch, 4)
  keys = jax.random.split(jax.random.key(3), 4)
  micro_value_and_grad = jax.jit(jax.value_and_grad(lambda p, b, k: objective.loss(p, {}, b, k, 0), has_aux=True))
  expected_losses, expected_grads = [], []
  for m in range(4):
    (value, _), g = micro_value_and_grad(params, jax.tree.map(lambda x: x[m], micro), keys[m])
    expected_losses.append(value)
    expected_grads.append(g)
  np.testing.assert_allclose(loss, np.mean(expected_losses), rtol=1e-5)
  _assert_trees_close(grads, jax.tree.map(lambda *g: sum(g) / 4, *expected_grads))
  # Negatives stay inside a micro-batch here, so this is not the full-batch gradient.
  (full_loss, _), _ = _grads(model.objectives[0], params, batch, 1)
  assert abs(float(full_loss) - float(loss)) > 1e-3


def test_micro_batches_take_strided_rows():
  batch = {"x": jnp.arange(8)}
  np.testing.assert_array_equal(step_lib.split_micro_batches(batch, 2)["x"], [[0, 2, 4, 6], [1, 3, 5, 7]])
  with pytest.raises(ValueError, match="batch of 8 cannot be split into 3 equal micro-batches"):
    step_lib.split_micro_batches(batch, 3)


def test_objectives_update_only_their_parameters_in_order():
  """Two objectives, GAN style: the second sees the first one's update within the same step."""

  class TwoPlayers:
    def __init__(self):
      self.objectives = (
          Objective("first", lambda p, s, b, r, t: (jnp.sum((p["a"] - 1.0) ** 2), ({}, s)), trains=("a",)),
          Objective("second", lambda p, s, b, r, t: (jnp.sum((p["b"] - p["a"]) ** 2), ({}, s)), trains=("b",)),
      )

    def init(self, rng, batch):
      return {"params": {"a": jnp.zeros(()), "b": jnp.zeros(())}}

  model = TwoPlayers()
  optimizers = {"first": optax.sgd(0.5), "second": optax.sgd(0.5)}
  state = step_lib.make_init(model, optimizers, {"x": jax.ShapeDtypeStruct((2,), jnp.float32)})(jax.random.key(0))
  state, metrics = jax.jit(step_lib.make_train_step(model, optimizers))(state, {"x": jnp.zeros(2)})
  # first: a = 0 - 0.5 * 2 * (0 - 1) = 1; second then sees a = 1: b = 0 - 0.5 * 2 * (0 - 1) = 1.
  assert float(state.params["a"]) == 1.0 and float(state.params["b"]) == 1.0
  assert set(metrics) == {"first/loss", "first/grad_norm", "second/loss", "second/grad_norm", "loss", "finite"}
  assert float(metrics["second/loss"]) == 1.0


def test_bfloat16_computation_with_remat_trains_float32_parameters(data_dir):
  from tests.conftest import small_config

  config = small_config(data_dir)
  config.model.update({"dtype": "bfloat16", "remat": True})
  config.model.encoders.text.name = "transformer"
  config.model.encoders.image.conv.norm = "rms"
  run = experiment.build(config)
  optimizers = {"contrastive": optax.adam(1e-3)}
  batch = run.data.train_dataset(32, seed=0)[0]
  state = jax.jit(step_lib.make_init(run.model, optimizers, batch))(jax.random.key(0))
  new_state, metrics = jax.jit(step_lib.make_train_step(run.model, optimizers))(state, batch)
  assert {leaf.dtype for leaf in jax.tree.leaves(new_state.params)} == {jnp.dtype(jnp.float32)}
  assert metrics["loss"].dtype == jnp.float32 and np.isfinite(float(metrics["loss"]))
  # The bfloat16 loss tracks the float32 one.
  config.model.dtype = "float32"
  reference = jax.jit(experiment.build(config).model.loss)(state.params, {}, batch, jax.random.key(1), 0)[0]
  low = jax.jit(run.model.loss)(state.params, {}, batch, jax.random.key(1), 0)[0]
  np.testing.assert_allclose(low, reference, rtol=2e-2)


def test_moving_average_of_the_params_follows_applied_updates_only():
  """ema ← d·ema + (1−d)·params after each applied update; a discarded (non-finite) step leaves it."""

  class Quadratic:
    objectives = (Objective("only", lambda p, s, b, r, t: (jnp.sum((p["w"] - b["target"]) ** 2), ({}, s))),)

    def init(self, rng, batch):
      return {"params": {"w": jnp.zeros(())}}

  model, optimizers = Quadratic(), {"only": optax.sgd(0.25)}
  state = step_lib.make_init(model, optimizers, {"target": jax.ShapeDtypeStruct((), jnp.float32)}, ema=True)(jax.random.key(0))
  step = jax.jit(step_lib.make_train_step(model, optimizers, ema_decay=0.5))
  expected_w, expected_ema = 0.0, 0.0
  for target in (2.0, 2.0, float("nan"), 2.0):
    state, metrics = step(state, {"target": jnp.float32(target)})
    if np.isfinite(target):
      expected_w = expected_w - 0.25 * 2 * (expected_w - target)
      expected_ema = 0.5 * expected_ema + 0.5 * expected_w
    assert float(state.params["w"]) == pytest.approx(expected_w) and float(state.ema_params["w"]) == pytest.approx(expected_ema)
  assert state.evaluation_variables["params"] is state.ema_params
  assert int(state.skipped_steps) == 1


def test_a_repeated_objective_updates_once_per_part_of_the_batch():
  """n_critic style: the first objective steps twice, on rows 0::2 then 1::2; the second once."""

  class Critic:
    objectives = (
        Objective("critic", lambda p, s, b, r, t: (jnp.mean((p["c"] - b["x"]) ** 2), ({}, s)), trains=("c",), repeats=2),
        Objective("generator", lambda p, s, b, r, t: ((p["g"] - p["c"]) ** 2, ({}, s)), trains=("g",)),
    )

    def init(self, rng, batch):
      return {"params": {"c": jnp.zeros(()), "g": jnp.zeros(())}}

  model, optimizers = Critic(), {"critic": optax.sgd(0.5), "generator": optax.sgd(0.5)}
  state = step_lib.make_init(model, optimizers, {"x": jax.ShapeDtypeStruct((4,), jnp.float32)})(jax.random.key(0))
  state, metrics = jax.jit(step_lib.make_train_step(model, optimizers))(state, {"x": jnp.array([2.0, 4.0, 2.0, 4.0])})
  # c: 0 → 0 - 0.5·2·(0 - 2) = 2 (rows 0, 2 hold 2) → 2 - 0.5·2·(2 - 4) = 4 (rows 1, 3 hold 4); then g: 0 → 4.
  assert float(state.params["c"]) == 4.0 and float(state.params["g"]) == 4.0
  assert float(metrics["critic/loss"]) == pytest.approx((4.0 + 4.0) / 2)


def test_the_update_is_applied_under_a_conditional_not_selected_leaf_by_leaf():
  """The non-finite guard decides with `lax.cond`, so a kept update is computed once, in place, and
  no parameter or optimizer leaf is selected between its old and new value (that re-read and
  re-wrote the whole state every step); only the counters use `where`."""

  class Quadratic:
    objectives = (Objective("only", lambda p, s, b, r, t: (jnp.sum((p["w"] - b["target"]) ** 2), ({}, s))),)

    def init(self, rng, batch):
      return {"params": {"w": jnp.zeros((3,))}}

  model, optimizers = Quadratic(), {"only": optax.adam(0.1)}
  batch = {"target": jnp.ones((3,))}
  state = step_lib.make_init(model, optimizers, batch)(jax.random.key(0))
  jaxpr = jax.make_jaxpr(step_lib.make_train_step(model, optimizers))(state, batch).jaxpr
  top_level = [equation.primitive.name for equation in jaxpr.eqns]
  assert top_level.count("cond") == 1
  selected_shapes = [equation.outvars[0].aval.shape for equation in jaxpr.eqns if equation.primitive.name == "select_n"]
  assert all(shape == () for shape in selected_shapes), selected_shapes
