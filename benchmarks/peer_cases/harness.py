"""What every peer case shares: the mmjax side built on the trainer's step, timing of the two
sides taking turns (`time_in_turns`), the machine's float32 matmul rate, and achieved FLOP/s from
XLA's cost analysis.

A case gives an `MmjaxSide` (a `mmjax.models.base.Model`, its optimizer and a batch) and, unless
``--quick``, a `TorchSide` (a ``step()`` doing one full update: forward, backward, optimizer).
"""

import dataclasses
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import compiler_options
from mmjax.models.base import Objective
from mmjax.train import step as step_lib
from mmjax.train import utilization


@dataclasses.dataclass
class ModuleModel:
  """What the trainer's step needs of a `mmjax.models.base.Model` (objectives and init; benchmarks
  never evaluate), for one linen module and one loss.

  Attributes:
    module: the linen module; ``init`` calls it on ``inputs(batch)``.
    loss: ``loss(params, batch, rng) -> scalar``, the objective (stateless models only).
    inputs: the module's arguments from a batch.
  """

  module: Any
  loss: Callable[[Any, Mapping[str, Any], jax.Array], jax.Array]
  inputs: Callable[[Mapping[str, Any]], tuple]

  @property
  def objectives(self) -> tuple[Objective, ...]:
    def objective_loss(params, model_state, batch, rng, step):
      del step
      return self.loss(params, batch, rng), ({}, model_state)

    return (Objective("loss", objective_loss),)

  def init(self, rng: jax.Array, batch: Mapping[str, Any]) -> dict[str, Any]:
    return dict(self.module.init(rng, *self.inputs(batch)))


@dataclasses.dataclass
class MmjaxSide:
  """A case's mmjax model, its optimizer and the batch every timed step trains on."""

  model: ModuleModel
  optimizer: optax.GradientTransformation
  batch: Mapping[str, Any]


@dataclasses.dataclass
class TorchSide:
  """A case's PyTorch peer: ``step()`` does one full update; `parameters` counts the trained ones."""

  step: Callable[[], None]
  parameters: int


def count_parameters(tree) -> int:
  return int(sum(np.size(leaf) for leaf in jax.tree.leaves(tree)))


def matmul_flops_per_second(size: int = 1024, repeats: int = 20) -> float:
  """The best float32 ``size × size`` matmul rate of `jax.jit` on the default device (FLOP/s)."""
  a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  matmul(a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * size**3 / best


@dataclasses.dataclass
class CompiledStep:
  """The trainer's step compiled for one case, with its state."""

  run: Callable[[], None]
  parameters: int
  compile_seconds: float
  compile_cpu_seconds: float
  flops: float | None


def compile_mmjax(side: MmjaxSide, seed: int = 0) -> CompiledStep:
  """`mmjax.train.step.make_train_step` jitted as the trainer does (state donated, the trainer's
  `mmjax.compiler_options`), compiled
  ahead of time; `compile_seconds` is the wall time of tracing, lowering and compiling the first
  step, `compile_cpu_seconds` the process CPU time it took (less sensitive to other load)."""
  optimizers = {objective.name: side.optimizer for objective in side.model.objectives}
  batch = jax.device_put(side.batch)
  state = jax.jit(step_lib.make_init(side.model, optimizers, batch), compiler_options=compiler_options.once())(
      jax.random.key(seed)
  )
  train_step = jax.jit(
      step_lib.make_train_step(side.model, optimizers), donate_argnums=0, compiler_options=compiler_options.repeated()
  )
  start, start_cpu = time.perf_counter(), time.process_time()
  compiled = train_step.lower(state, batch).compile()
  compile_seconds, compile_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], batch)
    jax.block_until_ready(metrics)

  flops = utilization.step_flops(compiled)
  return CompiledStep(run, count_parameters(state.params), compile_seconds, compile_cpu_seconds, flops)


def _summary(times: list[float], cpu_times: list[float]) -> dict[str, float]:
  return {"median_ms": 1e3 * statistics.median(times), "min_ms": 1e3 * min(times), "max_ms": 1e3 * max(times),
          "median_cpu_ms": 1e3 * statistics.median(cpu_times)}


def time_in_turns(
    runs: Mapping[str, Callable[[], None]], steps: int, warmup: int, turn_steps: int = 4, settle_steps: int = 1
) -> dict[str, dict[str, float]]:
  """Each side runs `warmup` untimed steps; then the sides take turns until each has `steps` timed
  steps. A turn is `settle_steps` untimed steps followed by up to `turn_steps` timed ones, so a
  change of machine load touches both sides alike while each side's timed steps run back to back,
  as in a training loop.

  The settling steps are not timed because a side's first step after the other side's is slowed
  by it: PyTorch's OpenMP workers keep spinning on the cores after a parallel region. On the MVAE
  case (2 cores, 2026-12-08) mmjax's first step of a turn took 28.4 ms against 22.7 ms for the
  following ones, while the peer's took 36.3 and 36.4 ms. Their median is reported as
  ``settle_median_ms``. ``turn_steps=1, settle_steps=0`` alternates step by step with every step
  timed, the method of the runs before 2026-12-08.

  Besides wall time, the process CPU time of each timed step (all threads; a thread spinning while
  it waits for a core counts too)."""
  if steps < 1 or warmup < 0 or turn_steps < 1 or settle_steps < 0:
    raise ValueError(f"need steps >= 1, warmup >= 0, turn_steps >= 1, settle_steps >= 0; got {steps}, {warmup}, "
                     f"{turn_steps}, {settle_steps}")
  for _ in range(warmup):
    for run in runs.values():
      run()
  times = {name: [] for name in runs}
  cpu_times = {name: [] for name in runs}
  settle_times = {name: [] for name in runs}
  while len(next(iter(times.values()))) < steps:
    for name, run in runs.items():
      for _ in range(settle_steps):
        start = time.perf_counter()
        run()
        settle_times[name].append(time.perf_counter() - start)
      for _ in range(min(turn_steps, steps - len(times[name]))):
        start, start_cpu = time.perf_counter(), time.process_time()
        run()
        times[name].append(time.perf_counter() - start)
        cpu_times[name].append(time.process_time() - start_cpu)
  summaries = {name: _summary(times[name], cpu_times[name]) for name in runs}
  for name, settled in settle_times.items():
    if settled:
      summaries[name]["settle_median_ms"] = 1e3 * statistics.median(settled)
  return summaries


def run_case(
    mmjax_side: MmjaxSide, torch_side: TorchSide | None, steps: int, warmup: int, matmul_rate: float,
    turn_steps: int = 4, settle_steps: int = 1,
) -> dict:
  """Compiles, checks the parameter counts agree, times (`time_in_turns`), and reports one case."""
  compiled = compile_mmjax(mmjax_side)
  runs = {"mmjax": compiled.run}
  if torch_side is not None:
    if torch_side.parameters != compiled.parameters:
      raise AssertionError(f"parameter counts differ: mmjax {compiled.parameters}, peer {torch_side.parameters}")
    runs["peer"] = torch_side.step
  timings = time_in_turns(runs, steps, warmup, turn_steps, settle_steps)
  result = {
      "parameters": compiled.parameters,
      "mmjax": {**timings["mmjax"], "compile_s": compiled.compile_seconds, "compile_cpu_s": compiled.compile_cpu_seconds},
      "step_flops": compiled.flops,
  }
  if compiled.flops:
    rate = compiled.flops / (timings["mmjax"]["median_ms"] / 1e3)
    result["mmjax"]["gflops_per_s"] = rate / 1e9
    result["mmjax"]["fraction_of_matmul"] = rate / matmul_rate
  if torch_side is not None:
    result["peer"] = timings["peer"]
    result["speedup"] = timings["peer"]["median_ms"] / timings["mmjax"]["median_ms"]
  return result
