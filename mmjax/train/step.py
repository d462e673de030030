"""The training state and the generic, jit-compiled training step.

`TrainState` follows `flax.training.train_state.TrainState` but keeps one optimizer state per
objective (a GAN has two) and the run's PRNG key, so a checkpoint holds everything needed to
continue the same trajectory.
"""

from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct

from mmjax.models.base import Batch, Model, Objective


class TrainState(struct.PyTreeNode):
  """Everything that changes during training.

  Attributes:
    step: number of completed steps.
    params: the ``"params"`` collection of the model's variables.
    model_state: the other variable collections (batch statistics, …); often empty.
    opt_state: optimizer state per objective name.
    rng: raw key data of the run's PRNG key; step ``k`` uses ``fold_in(key, k)``, so a resumed
      run draws the same numbers as an uninterrupted one.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: dict[str, Any]
  rng: jax.Array

  @property
  def variables(self) -> dict[str, Any]:
    """The model's Flax variables: params and the other collections."""
    return {"params": self.params, **self.model_state}


def trained_subtree(objective: Objective, params: Mapping[str, Any]) -> dict[str, Any]:
  """The part of `params` that `objective` updates."""
  names = tuple(params) if objective.trains is None else objective.trains
  missing = sorted(set(names) - set(params))
  if missing:
    raise ValueError(f"objective {objective.name!r} trains {missing}, which are not parameters; present: {sorted(params)}.")
  return {name: params[name] for name in names}


def make_init(
    model: Model, optimizers: Mapping[str, optax.GradientTransformation], batch_spec: Batch
) -> Callable[[jax.Array], TrainState]:
  """``init(rng) -> TrainState`` for batches shaped like `batch_spec` (arrays or shape structs).

  Pure, so it can run under `jax.eval_shape` (to plan shardings) and under `jax.jit` with
  `out_shardings` (to create the parameters already sharded).
  """

  def init(rng: jax.Array) -> TrainState:
    init_rng, train_rng = jax.random.split(rng)
    batch = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), batch_spec)
    variables = dict(model.init(init_rng, batch))
    params = variables.pop("params")
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        model_state=variables,
        opt_state={
            objective.name: optimizers[objective.name].init(trained_subtree(objective, params))
            for objective in model.objectives
        },
        rng=jax.random.key_data(train_rng),
    )

  return init


def make_train_step(
    model: Model,
    optimizers: Mapping[str, optax.GradientTransformation],
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """``train_step(state, batch) -> (state, metrics)``: one update per objective, in order.

  Each objective differentiates its loss with respect to its own parameters only and applies
  its own optimizer; the next objective sees the updated parameters. Metrics are the objectives'
  own metrics plus ``grad_norm``, prefixed with the objective name when there are several.
  """
  objectives = tuple(model.objectives)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    params, model_state, opt_state = state.params, state.model_state, dict(state.opt_state)
    metrics = {}
    for index, objective in enumerate(objectives):
      trained = trained_subtree(objective, params)

      def loss_of_trained(subtree, objective=objective, params=params, model_state=model_state, index=index):
        return objective.loss(
            {**params, **subtree}, model_state, batch, jax.random.fold_in(step_key, index), state.step
        )

      (loss, (objective_metrics, model_state)), grads = jax.value_and_grad(loss_of_trained, has_aux=True)(trained)
      updates, opt_state[objective.name] = optimizers[objective.name].update(
          grads, opt_state[objective.name], trained
      )
      params = {**params, **optax.apply_updates(trained, updates)}
      objective_metrics = {"loss": loss, **objective_metrics, "grad_norm": optax.tree.norm(grads)}
      prefix = "" if len(objectives) == 1 else f"{objective.name}/"
      metrics.update({prefix + name: value for name, value in objective_metrics.items()})
    if len(objectives) > 1:
      metrics["loss"] = sum(metrics[f"{objective.name}/loss"] for objective in objectives)
    new_state = state.replace(step=state.step + 1, params=params, model_state=model_state, opt_state=opt_state)
    return new_state, metrics

  return train_step
