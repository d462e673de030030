"""The training state and the generic, jit-compiled training step.

`TrainState` follows `flax.training.train_state.TrainState` but keeps one optimizer state per
objective (a GAN has two) and the run's PRNG key, so a checkpoint holds everything needed to
continue the same trajectory.
"""

import functools
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
    skipped_steps: steps whose update was discarded because a loss or gradient was not finite.
    nonfinite_streak: how many of the latest steps in a row were discarded.
    ema_params: an exponential moving average of the params (``train.ema_decay``), or None.
  """

  step: jax.Array
  params: Any
  model_state: Any
  opt_state: dict[str, Any]
  rng: jax.Array
  skipped_steps: jax.Array
  nonfinite_streak: jax.Array
  ema_params: Any = None

  @property
  def variables(self) -> dict[str, Any]:
    """The model's Flax variables: params and the other collections."""
    return {"params": self.params, **self.model_state}

  @property
  def evaluation_variables(self) -> dict[str, Any]:
    """The variables evaluation and sampling use: with the moving average of the params if the
    run keeps one (standard practice for generators), else the params themselves."""
    return {"params": self.params if self.ema_params is None else self.ema_params, **self.model_state}


def trained_subtree(objective: Objective, params: Mapping[str, Any]) -> dict[str, Any]:
  """The part of `params` that `objective` updates."""
  names = tuple(params) if objective.trains is None else objective.trains
  missing = sorted(set(names) - set(params))
  if missing:
    raise ValueError(f"objective {objective.name!r} trains {missing}, which are not parameters; present: {sorted(params)}.")
  return {name: params[name] for name in names}


def make_init(
    model: Model, optimizers: Mapping[str, optax.GradientTransformation], batch_spec: Batch, ema: bool = False
) -> Callable[[jax.Array], TrainState]:
  """``init(rng) -> TrainState`` for batches shaped like `batch_spec` (arrays or shape structs);
  with `ema`, the moving average of the params starts at the initial params.

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
        skipped_steps=jnp.zeros((), jnp.int32),
        nonfinite_streak=jnp.zeros((), jnp.int32),
        ema_params=jax.tree.map(jnp.copy, params) if ema else None,
    )

  return init


def split_micro_batches(batch: Batch, count: int) -> Batch:
  """``[B, …]`` leaves → ``[count, B / count, …]``; micro-batch ``m`` takes rows ``m, m + count, …``.

  Strided rather than contiguous rows, so that when the batch is split over devices every
  micro-batch still has rows on every device.
  """

  def split(x):
    if x.shape[0] % count:
      raise ValueError(f"batch of {x.shape[0]} cannot be split into {count} equal micro-batches.")
    return jnp.swapaxes(x.reshape(x.shape[0] // count, count, *x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def _unstack(tree) -> list:
  """``[n, …]`` leaves → n trees."""
  count = jax.tree.leaves(tree)[0].shape[0]
  return [jax.tree.map(lambda x, i=i: x[i], tree) for i in range(count)]


def _merge_micro_batches(tree):
  return jax.tree.map(lambda x: x.reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


def _add(a, b):
  return jax.tree.map(jnp.add, a, b)


def objective_value_and_grad(
    objective: Objective,
    params: dict[str, Any],
    model_state: Any,
    batch: Batch,
    key: jax.Array,
    step: jax.Array,
    accumulation_steps: int = 1,
    constrain: Callable[[Batch], Batch] = lambda tree: tree,
):
  """``((loss, (metrics, model_state)), grads)`` of one objective w.r.t. the parameters it trains.

  With ``accumulation_steps > 1`` the batch is processed in that many micro-batches, so peak
  activation memory is that of one micro-batch. Objectives that give the ``embed`` /
  ``embedding_loss`` split get the exact gradient of the whole batch's loss (cached embeddings,
  then per-micro-batch recomputation); others get the mean of the micro-batch gradients, with
  mutable state threaded through the micro-batches in order.

  Args:
    constrain: applied to every micro-batch tree; the trainer uses it to keep micro-batches split
      over the data-parallel devices.
  """
  trained = trained_subtree(objective, params)

  def with_trained(subtree):
    return {**params, **subtree}

  if accumulation_steps == 1:
    return jax.value_and_grad(
        lambda subtree: objective.loss(with_trained(subtree), model_state, batch, key, step), has_aux=True
    )(trained)

  micro_batches = constrain(split_micro_batches(batch, accumulation_steps))
  keys = jax.random.split(key, accumulation_steps)

  if objective.embed is not None and objective.embedding_loss is not None:
    embeddings = jax.lax.map(lambda xs: objective.embed(params, model_state, xs[0], xs[1]), (micro_batches, keys))
    (loss, metrics), (direct_grads, embedding_grads) = jax.value_and_grad(
        lambda subtree, e: objective.embedding_loss(with_trained(subtree), _merge_micro_batches(e), _merge_micro_batches(micro_batches)),
        argnums=(0, 1),
        has_aux=True,
    )(trained, embeddings)

    def backpropagate(accumulated, xs):
      micro_batch, micro_key, cotangent = xs
      _, pullback = jax.vjp(lambda subtree: objective.embed(with_trained(subtree), model_state, micro_batch, micro_key), trained)
      return _add(accumulated, pullback(cotangent)[0]), None

    zeros = jax.tree.map(jnp.zeros_like, trained)
    encoder_grads, _ = jax.lax.scan(backpropagate, zeros, (micro_batches, keys, embedding_grads))
    return (loss, (metrics, model_state)), _add(direct_grads, encoder_grads)

  def accumulate(carry, xs):
    state, total_grads = carry
    micro_batch, micro_key = xs
    (loss, (metrics, state)), grads = jax.value_and_grad(
        lambda subtree: objective.loss(with_trained(subtree), state, micro_batch, micro_key, step), has_aux=True
    )(trained)
    return (state, _add(total_grads, grads)), (loss, metrics)

  zeros = jax.tree.map(jnp.zeros_like, trained)
  (model_state, grads), (losses, metrics) = jax.lax.scan(accumulate, (model_state, zeros), (micro_batches, keys))
  mean = lambda tree: jax.tree.map(lambda x: x / accumulation_steps, tree)  # noqa: E731
  return (jnp.mean(losses), (jax.tree.map(jnp.mean, metrics), model_state)), mean(grads)


def _apply_update(
    objective: Objective, optimizer: optax.GradientTransformation, grads: Any, params: dict[str, Any],
    opt_state: dict[str, Any],
) -> tuple[dict[str, Any], dict[str, Any]]:
  """`params` and `opt_state` after `objective`'s optimizer applied `grads` to the params it trains."""
  trained = trained_subtree(objective, params)
  updates, objective_state = optimizer.update(grads, opt_state[objective.name], trained)
  return {**params, **optax.apply_updates(trained, updates)}, {**opt_state, objective.name: objective_state}


def make_train_step(
    model: Model,
    optimizers: Mapping[str, optax.GradientTransformation],
    accumulation_steps: int = 1,
    constrain: Callable[[Batch], Batch] = lambda tree: tree,
    ema_decay: float | None = None,
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """``train_step(state, batch) -> (state, metrics)``: one update per objective, in order.

  Each objective differentiates its loss with respect to its own parameters only (see
  `objective_value_and_grad`) and applies its own optimizer; the next objective sees the updated
  parameters. An objective with ``repeats = n`` updates n times in a row (a GAN's critic), each on
  one of n strided parts of the batch. Metrics are the objectives' own metrics plus ``loss`` and
  ``grad_norm`` (means over repeats), prefixed with the objective name when there are several, and
  ``finite``.

  If any loss or gradient norm is not finite, the whole update is discarded: the returned state
  keeps the incoming parameters, model state and optimizer state (only the step counter and the
  skip counters move), so the caller decides whether to go on or stop with the last good state.

  With `ema_decay`, the state's moving average moves towards the new params after every applied
  update: ``ema ← decay · ema + (1 − decay) · params``.
  """
  objectives = tuple(model.objectives)

  def train_step(state: TrainState, batch: Batch) -> tuple[TrainState, dict[str, jax.Array]]:
    step_key = jax.random.fold_in(jax.random.wrap_key_data(state.rng), state.step)
    params, model_state, opt_state = state.params, state.model_state, dict(state.opt_state)
    metrics = {}
    pending_update = None
    for index, objective in enumerate(objectives):
      objective_key = jax.random.fold_in(step_key, index)
      parts = [batch] if objective.repeats == 1 else _unstack(constrain(split_micro_batches(batch, objective.repeats)))
      repeats_metrics = []
      for repeat, part in enumerate(parts):
        if pending_update is not None:  # this loss sees the previous update
          params, opt_state = pending_update(params, opt_state)
        (loss, (objective_metrics, model_state)), grads = objective_value_and_grad(
            objective, params, model_state, part, jax.random.fold_in(objective_key, repeat), state.step,
            accumulation_steps, constrain,
        )
        pending_update = functools.partial(_apply_update, objective, optimizers[objective.name], grads)
        repeats_metrics.append({"loss": loss, **objective_metrics, "grad_norm": optax.tree.norm(grads)})
      objective_metrics = jax.tree.map(lambda *values: sum(values) / len(values), *repeats_metrics)
      prefix = "" if len(objectives) == 1 else f"{objective.name}/"
      metrics.update({prefix + name: value for name, value in objective_metrics.items()})
    if len(objectives) > 1:
      metrics["loss"] = sum(metrics[f"{objective.name}/loss"] for objective in objectives)
    finite = jnp.all(jnp.array([jnp.isfinite(metrics[k]) for k in metrics if k.endswith(("loss", "grad_norm"))]))

    def commit(_):
      new_params, new_opt_state = pending_update(params, opt_state)
      ema_params = state.ema_params
      if ema_decay is not None:
        ema_params = jax.tree.map(lambda ema, p: ema_decay * ema + (1 - ema_decay) * p, ema_params, new_params)
      return new_params, model_state, new_opt_state, ema_params

    def discard(_):
      return state.params, state.model_state, dict(state.opt_state), state.ema_params

    # A conditional, not a select of new and old values: the last update is only computed when it is
    # kept, in place in the donated buffers, instead of re-reading and re-writing every parameter
    # and optimizer leaf to choose between them (the MVAE peer case's step: 21.5 → 20.2 ms,
    # docs/performance.md).
    params, model_state, opt_state, ema_params = jax.lax.cond(finite, commit, discard, None)
    new_state = state.replace(
        step=state.step + 1,
        params=params,
        ema_params=ema_params,
        model_state=model_state,
        opt_state=opt_state,
        skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32),
        nonfinite_streak=jnp.where(finite, 0, state.nonfinite_streak + 1),
    )
    return new_state, {**metrics, "finite": finite}

  return train_step
