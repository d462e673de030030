"""Optimizers and learning-rate schedules from the ``optimizer`` config section.

Every objective of a model (a GAN has two) gets its own optimizer from the section; the entries of
``optimizer.per_objective`` override any of its fields for one objective, e.g. the two time-scale
update rule (TTUR) of a GAN::

    optimizer.per_objective = {"discriminator": {"learning_rate": 4e-4}, "generator": {"learning_rate": 1e-4}}
"""

import dataclasses

import jax
import ml_collections
import optax

from mmjax.schema import ConfigError, Entries, Field

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("warmup_cosine", "constant")

CONFIG_SCHEMA = {
    "name": Field(str, choices=OPTIMIZERS),
    "learning_rate": Field(float, low=0.0),
    "schedule": Field(str, choices=SCHEDULES),
    "warmup_steps": Field(int, low=0),
    "final_learning_rate_fraction": Field(float, low=0.0, high=1.0),
    "b1": Field(float, low=0.0, high=1.0),
    "b2": Field(float, low=0.0, high=1.0),
    "eps": Field(float, low=0.0),
    "momentum": Field(float, low=0.0, high=1.0),
    "weight_decay": Field(float, low=0.0),
    "grad_clip_norm": Field(float, low=0.0, nullable=True),
}


def config_schema(objectives: tuple[str, ...] | None) -> dict:
  """The section's schema; ``per_objective`` may name only the model's `objectives` (None: any)."""
  return {
      **CONFIG_SCHEMA,
      "per_objective": Entries({key: dataclasses.replace(field, required=False) for key, field in CONFIG_SCHEMA.items()}, names=objectives),
  }


def for_objective(config, objective: str):
  """The settings of `objective`'s optimizer: the section with its ``per_objective`` entry applied."""
  settings = {key: config[key] for key in CONFIG_SCHEMA}
  settings.update(config.get("per_objective", {}).get(objective, {}))
  return ml_collections.ConfigDict(settings)


def config_problems(config, num_steps: int, objectives: tuple[str, ...] = ()) -> list[str]:
  """Problems of the ``optimizer`` section (and of each objective's settings) against the run's length."""
  problems = []
  for objective in objectives or (None,):
    settings = for_objective(config, objective) if objective else config
    if settings.schedule == "warmup_cosine" and settings.warmup_steps >= num_steps:
      where = f"optimizer.per_objective.{objective}" if objective in config.get("per_objective", {}) else "optimizer"
      problem = f"{where}.warmup_steps ({settings.warmup_steps}) must be below train.num_steps ({num_steps})"
      if problem not in problems:
        problems.append(problem)
  return problems


def decay_mask(params) -> object:
  """True for the parameters that get weight decay: matrices and kernels.

  Vectors and scalars (biases, norm scales, the contrastive temperature and bias) are left out,
  as in CLIP and open_clip.
  """
  return jax.tree.map(lambda p: p.ndim >= 2, params)


def make_schedule(config, num_steps: int) -> optax.Schedule:
  """Linear warm-up then cosine decay to ``final_learning_rate_fraction``, or a constant."""
  if config.schedule == "constant":
    return optax.constant_schedule(config.learning_rate)
  if config.schedule != "warmup_cosine":
    raise ConfigError(f"Unknown schedule {config.schedule!r}; valid choices: {list(SCHEDULES)}.")
  problems = config_problems(config, num_steps)
  if problems:
    raise ConfigError(problems[0] + ".")
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0,
      peak_value=config.learning_rate,
      warmup_steps=config.warmup_steps,
      decay_steps=num_steps,
      end_value=config.learning_rate * config.final_learning_rate_fraction,
  )


def make_optimizer(config, num_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """The optimizer (with optional global-norm clipping) and its learning-rate schedule.

  >>> import ml_collections
  >>> config = ml_collections.ConfigDict(dict(
  ...     name="adamw", learning_rate=1e-3, schedule="warmup_cosine", warmup_steps=10,
  ...     final_learning_rate_fraction=0.0, b1=0.9, b2=0.98, eps=1e-6, momentum=0.9,
  ...     weight_decay=0.1, grad_clip_norm=1.0))
  >>> optimizer, schedule = make_optimizer(config, num_steps=100)
  >>> round(float(schedule(10)), 6)
  0.001
  """
  schedule = make_schedule(config, num_steps)
  if config.name == "adamw":
    optimizer = optax.adamw(
        schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay, mask=decay_mask
    )
  elif config.name == "sgd":
    optimizer = optax.chain(
        optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
        optax.sgd(schedule, momentum=config.momentum),
    )
  else:
    raise ConfigError(f"Unknown optimizer {config.name!r}; valid choices: {list(OPTIMIZERS)}.")
  if config.grad_clip_norm:
    optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
  return optimizer, schedule
