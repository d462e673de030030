"""The training loop: every model family runs through `train`.

Read top to bottom, `train` does: plan the mesh and the state's shardings, create the state
already sharded (or restore it from the latest checkpoint), compile the step once, then loop —
fetch a batch, step, log, evaluate, checkpoint — and finish with a final evaluation written to
``workdir/eval.json``. It knows nothing about any model family: a model brings its objectives
and its evaluation (`mmjax.models.base.Model`), the data brings batches (`TrainData`).
"""

import json
import math
import os
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import grain
import jax
import numpy as np
from absl import logging
from jax.sharding import NamedSharding, PartitionSpec as P

from mmjax import compiler_options, cpu_runtime
from mmjax.models.base import Batch, Model
from mmjax.parallel import mesh as mesh_lib, sharding
from mmjax.schema import ConfigError, Field
from mmjax.train import checkpoints, faults, metric_writers, optimizers, step as step_lib, utilization

CONFIG_SCHEMA = {
    "num_steps": Field(int, low=1),
    "log_every": Field(int, low=1),
    "eval_every": Field(int, low=1, nullable=True),
    "checkpoint_every": Field(int, low=1),
    "keep_checkpoints": Field(int, low=1),
    "async_checkpointing": Field(bool),
    "eval_batch_size": Field(int, low=1),
    "accumulation_steps": Field(int, low=1),
    "prefetch_threads": Field(int, low=0),
    "progress_bar": Field(bool),
    "nonfinite_policy": Field(str, choices=faults.NONFINITE_POLICIES),
    "max_nonfinite_in_a_row": Field(int, low=1),
    # Peak FLOP/s of one device for the logged MFU; None: the data-sheet value where known.
    "peak_flops_per_device": Field(float, low=0.0, nullable=True),
    # Keep an exponential moving average of the params with this decay, used for evaluation; None: off.
    "ema_decay": Field(float, low=0.0, high=1.0, nullable=True),
}


def config_problems(config, devices: Sequence[jax.Device] | None = None) -> list[str]:
  """Problems of the mesh, sharding rules and batch sizes against `devices` (default: all)."""
  devices = jax.devices() if devices is None else devices
  try:
    shape = dict(zip(mesh_lib.AXES, mesh_lib.mesh_shape(config.mesh, len(devices))))
    sharding.validate_rules(config.sharding.rules, mesh_lib.AXES)
  except ConfigError as error:
    return [str(error)]
  parallel = math.prod(shape[axis] for axis in mesh_lib.BATCH_AXES)
  micro_batches = config.train.accumulation_steps
  problems = []
  for name, size, unit in (
      ("data.batch_size", config.data.batch_size, parallel * micro_batches),
      ("train.eval_batch_size", config.train.eval_batch_size, parallel),
  ):
    if size % unit or size % jax.process_count():
      problems.append(
          f"{name} ({size}) must be divisible by the data-parallel mesh size ({parallel})"
          + (f" times train.accumulation_steps ({micro_batches})" if name == "data.batch_size" else "")
          + f" and by the process count ({jax.process_count()})"
      )
  return problems


class TrainData(Protocol):
  """What the loop needs from a dataset."""

  def train_dataset(self, batch_size: int, seed: int, process_index: int, process_count: int) -> grain.MapDataset:
    ...

  def eval_batches(self, batch_size: int, process_index: int, process_count: int) -> Iterator[Batch]:
    ...


class Trainer:
  """The compiled pieces of one run: state layout, init, step and evaluation on a mesh.

  Built from the config, the model and the data; `train` drives it. Tests and notebooks can use
  it directly to run steps without the loop.
  """

  def __init__(self, config, model: Model, data: TrainData, devices: Sequence[jax.Device] | None = None):
    """
    Args:
      config: the run's config.
      model: the model family instance.
      data: the dataset.
      devices: the devices of the mesh; default all devices of all processes. A subset lets a
        checkpoint written on one topology be restored and evaluated on another.
    """
    problems = config_problems(config, devices)
    if problems:
      raise ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))
    self.config = config
    self.model = model
    self.data = data
    self.mesh = mesh_lib.make_mesh(config.mesh, devices)
    self.optimizers, self.schedules = {}, {}
    self.repeats = {objective.name: objective.repeats for objective in model.objectives}
    for objective in model.objectives:
      self.optimizers[objective.name], self.schedules[objective.name] = optimizers.make_optimizer(
          optimizers.for_objective(config.optimizer, objective.name), config.train.num_steps * objective.repeats
      )
    self.train_dataset = data.train_dataset(
        config.data.batch_size, config.seed, jax.process_index(), jax.process_count()
    )
    batch_spec = self._global_batch_spec(self.train_dataset[0])
    self._init = step_lib.make_init(model, self.optimizers, batch_spec, ema=config.train.ema_decay is not None)
    self.abstract_state = jax.eval_shape(self._init, jax.random.key(0))
    self.state_sharding = sharding.tree_shardings(
        self.abstract_state, self.mesh, config.sharding.rules, config.sharding.fsdp_min_size
    )
    micro_batch_sharding = NamedSharding(self.mesh, P(None, mesh_lib.BATCH_AXES))
    self._executable = None
    # One compiled program for the schedules, not one per jnp operation they are made of.
    self._learning_rates_at = jax.jit(self._schedule_values)
    self._jitted_step = jax.jit(
        step_lib.make_train_step(
            model,
            self.optimizers,
            config.train.accumulation_steps,
            constrain=lambda tree: jax.lax.with_sharding_constraint(
                tree, jax.tree.map(lambda _: micro_batch_sharding, tree)
            ),
            ema_decay=config.train.ema_decay,
        ),
        in_shardings=(self.state_sharding, mesh_lib.batch_sharding(self.mesh)),
        out_shardings=(self.state_sharding, mesh_lib.replicated(self.mesh)),
        donate_argnums=(0,),
        compiler_options=compiler_options.repeated(),
    )

  def train_step(self, state: step_lib.TrainState, batch: Batch) -> tuple[step_lib.TrainState, dict]:
    """One compiled, donating step; the mesh is set so models can `jax.shard_map` over it.

    The step is compiled ahead of time at the first call, once, which also gives its FLOPs
    (`step_flops`).
    """
    with jax.set_mesh(self.mesh):
      if self._executable is None:
        self._executable = self._jitted_step.lower(state, batch).compile()
      return self._executable(state, batch)

  @property
  def step_flops(self) -> float | None:
    """FLOPs of one device's part of a step (known once the step is compiled)."""
    return utilization.step_flops(self._executable) if self._executable is not None else None

  def _global_batch_spec(self, local_batch: Batch) -> Batch:
    """Shapes of the global batch that this process's `local_batch` is a part of."""
    scale = jax.process_count()
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct((x.shape[0] * scale, *x.shape[1:]), x.dtype), local_batch)

  def init_state(self, seed: int) -> step_lib.TrainState:
    """A fresh state, created directly with its shardings (never materialised on one device)."""
    return jax.jit(self._init, out_shardings=self.state_sharding, compiler_options=compiler_options.once())(
        jax.random.key(seed)
    )

  @property
  def restore_target(self) -> step_lib.TrainState:
    """Shape structs with this trainer's shardings: what a checkpoint is restored into."""
    return checkpoints.abstract_with_shardings(self.abstract_state, self.state_sharding)

  def put(self, batch: Batch) -> Batch:
    return mesh_lib.put_batch(batch, self.mesh)

  def evaluate(self, state: step_lib.TrainState) -> dict[str, float]:
    batches = self.data.eval_batches(self.config.train.eval_batch_size, jax.process_index(), jax.process_count())
    return self.model.evaluate(state.evaluation_variables, (self.put(batch) for batch in batches))

  def _schedule_values(self, step: jax.Array) -> dict[str, jax.Array]:
    return {name: schedule(step * self.repeats[name]) for name, schedule in self.schedules.items()}

  def learning_rates(self, step: int) -> dict[str, float]:
    """The learning rate of each objective's (first) update at `step` (0-based)."""
    rates = {name: float(rate) for name, rate in self._learning_rates_at(step).items()}
    if len(rates) == 1:
      return {"learning_rate": next(iter(rates.values()))}
    return {f"{name}/learning_rate": rate for name, rate in rates.items()}


def _mean_metrics(window: list[dict[str, float]]) -> dict[str, float]:
  """Means over the window's applied steps (all steps if every one was skipped)."""
  applied = [m for m in window if m["finite"]] or window
  return {key: float(np.mean([m[key] for m in applied])) for key in applied[0] if key != "finite"}


def prepare_workdir(workdir: str, config) -> str:
  """Creates `workdir` (failing clearly if it cannot be written) and records the config."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    os.makedirs(workdir, exist_ok=True)
    probe = os.path.join(workdir, ".write_test")
    with open(probe, "w", encoding="utf-8") as f:
      f.write("ok")
    os.remove(probe)
  except OSError as error:
    raise ConfigError(f"workdir {workdir!r} is not writable: {error}") from error
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w", encoding="utf-8") as f:
      f.write(config.to_json(indent=2))
  return workdir


def train(
    config, workdir: str, model: Model, data: TrainData, devices: Sequence[jax.Device] | None = None
) -> dict[str, float]:
  """Trains `model` on `data` as `config` says, resuming from `workdir`'s latest good checkpoint.

  Args:
    devices: the mesh's devices; default all devices of all processes.

  Returns:
    The final evaluation, also written to ``workdir/eval.json``.

  Raises:
    faults.Interrupted: SIGTERM or SIGINT arrived; checkpoint of the current step saved.
    faults.NonFiniteError: a non-finite loss or gradient under ``nonfinite_policy="halt"`` (or
      too many in a row under ``"skip"``); the last good state was saved.
  """
  workdir = prepare_workdir(workdir, config)
  trainer = Trainer(config, model, data, devices)
  if jax.default_backend() == "cpu":
    cpu_runtime.keep_freed_host_memory()  # steps reuse their buffers' memory instead of faulting it in
  is_writer = jax.process_index() == 0
  num_steps = config.train.num_steps

  checkpointer = checkpoints.Checkpointer(
      os.path.join(workdir, "checkpoints"),
      every=config.train.checkpoint_every,
      keep=config.train.keep_checkpoints,
      asynchronous=config.train.async_checkpointing,
  )
  iterator = iter(
      trainer.train_dataset.to_iter_dataset(
          grain.ReadOptions(num_threads=config.train.prefetch_threads, prefetch_buffer_size=4)
      )
  )
  restored = checkpointer.restore_latest(trainer.restore_target, report=_report)
  if restored:
    start_step, state, data_state = restored
    iterator.set_state(data_state)
  else:
    start_step, state = 0, trainer.init_state(config.seed)

  writer = metric_writers.MetricWriter(workdir, resume_step=start_step, enabled=is_writer)
  progress = metric_writers.ProgressBar(num_steps, start_step, enabled=is_writer and config.train.progress_bar)
  peak = utilization.peak_flops(trainer.mesh.devices.flat[0], config.train.peak_flops_per_device)
  window: list[dict[str, float]] = []
  window_start, window_first_step, waiting = time.perf_counter(), start_step, 0.0
  final = None
  try:
    with faults.StopSignals() as stop:
      for step in range(start_step + 1, num_steps + 1):
        fetch_start = time.perf_counter()
        batch = trainer.put(next(iterator))
        waiting += time.perf_counter() - fetch_start
        state, metrics = trainer.train_step(state, batch)
        # A few scalars: fetching them every step keeps the guard, the progress bar and the
        # timings exact, while Grain's prefetch thread keeps the next batch ready.
        metrics = {key: float(value) for key, value in jax.device_get(metrics).items()}
        window.append(metrics)
        if step == start_step + 1:
          # Throughput is timed from the end of the first step, which includes compilation.
          window_start, window_first_step, waiting = time.perf_counter(), step, 0.0
        if not metrics["finite"]:
          _on_nonfinite(config.train, step, metrics, state, checkpointer, iterator)

        evaluate_now = step == num_steps or (config.train.eval_every and step % config.train.eval_every == 0)
        record = None
        if step % config.train.log_every == 0 or evaluate_now:
          record = {**_mean_metrics(window), **trainer.learning_rates(step - 1)}
          record["skipped_steps"] = int(state.skipped_steps)
          if step > window_first_step:
            seconds = time.perf_counter() - window_start
            record["steps_per_sec"] = (step - window_first_step) / seconds
            record["examples_per_sec"] = record["steps_per_sec"] * config.data.batch_size
            record.update(utilization.window_metrics(seconds, waiting, step - window_first_step, trainer.step_flops, peak))
          if evaluate_now:
            evaluation, images = split_images(trainer.evaluate(state))
            final = evaluation if step == num_steps else None
            record.update({f"eval/{k}": v for k, v in evaluation.items()})
            writer.write_images(step, images)
          writer.write(step, record)
          window, window_start, window_first_step, waiting = [], time.perf_counter(), step, 0.0
        progress.update(1, record)
        if stop.requested() and step < num_steps:
          checkpointer.save(step, state, iterator.get_state(), force=True)
          raise faults.Interrupted(step, stop.received)
        checkpointer.save(step, state, iterator.get_state(), force=step == num_steps)
  finally:
    progress.close()
    writer.close()
    checkpointer.close()

  final = {"step": int(state.step), **(final or split_images(trainer.evaluate(state))[0])}
  if is_writer:
    with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
      json.dump(final, f, indent=2)
  return final


def split_images(evaluation: dict) -> tuple[dict[str, float], dict[str, np.ndarray]]:
  """An evaluation's scalar metrics, and its images (uint8 arrays, e.g. sample grids)."""
  images = {key: value for key, value in evaluation.items() if isinstance(value, np.ndarray) and value.ndim >= 2}
  return {key: value for key, value in evaluation.items() if key not in images}, images


def _report(message: str) -> None:
  logging.warning("%s", message)
  if jax.process_index() == 0:
    print(f"mmjax: {message}", file=sys.stderr)


def _on_nonfinite(train_config, step, metrics, state, checkpointer, iterator) -> None:
  """Applies the non-finite policy to `step`, whose update the step function already discarded."""
  streak = int(state.nonfinite_streak)
  terms = faults.nonfinite_terms(metrics)
  if train_config.nonfinite_policy == "skip" and streak < train_config.max_nonfinite_in_a_row:
    _report(f"step {step}: non-finite {', '.join(terms)}; update skipped ({streak} in a row)")
    return
  checkpointer.save(step, state, iterator.get_state(), force=True)
  raise faults.NonFiniteError(step, terms, streak)
