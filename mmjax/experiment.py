"""Runs from a config: validate, build the data and the model, train, evaluate, restore.

This is the one place that knows every model family and dataset by name (`mmjax.models.FAMILIES`,
`mmjax.data.input_pipeline.BUILDERS`); the CLI, notebooks and tests all come through here. A config
is checked whole (`validate_config`) before any data is read or anything is written.

Example (from the repository root; see notebooks/quickstart.ipynb for a complete one)::

    from configs import clip_digits
    metrics = train(clip_digits.get_config(), "runs/clip_digits")
"""

import dataclasses
import json
import os

import ml_collections

from mmjax import models, schema
from mmjax.data import input_pipeline
from mmjax.data.dataset import MultimodalData
from mmjax.parallel import distributed, mesh as mesh_lib, sharding
from mmjax.reference_classifiers import ReferenceClassifiers
from mmjax.train import checkpoints, loop, metric_writers, optimizers


def config_schema(config) -> dict:
  """The schema the whole config must follow; the model section depends on the model family and
  on the data's modalities."""
  family = config.get("model", {}).get("name")
  if family not in models.FAMILIES:
    raise schema.ConfigError(f"invalid config:\n  model.name: {family!r} is not a valid choice; valid choices: {sorted(models.FAMILIES)}")
  return {
      "seed": schema.Field(int, low=0),
      "data": input_pipeline.config_schema(config.get("data", {})),
      "model": models.FAMILIES[family].config_schema(config),
      "optimizer": optimizers.config_schema(models.FAMILIES[family].objectives(config)),
      "train": loop.CONFIG_SCHEMA,
      "mesh": mesh_lib.CONFIG_SCHEMA,
      "sharding": sharding.CONFIG_SCHEMA,
      "distributed": distributed.CONFIG_SCHEMA,
  }


def config_problems(config, devices=None) -> list[str]:
  """Problems across fields and sections of a config that follows its schema: the data against
  the installed datasets, the model against the data, the optimizer against the run's length, the
  mesh and batch sizes against the devices (default all devices of all processes)."""
  return [
      *input_pipeline.config_problems(config.data),
      *models.FAMILIES[config.model.name].config_problems(config),
      *optimizers.config_problems(config.optimizer, config.train.num_steps, models.FAMILIES[config.model.name].objectives(config)),
      *loop.config_problems(config, devices),
  ]


def validate_config(config, devices=None) -> None:
  """Raises `mmjax.schema.ConfigError` listing every problem of `config`, before anything is
  read, built or written.

  The checks against devices see all processes' devices only once the run's processes have
  joined (`mmjax.parallel.distributed.initialize`), which `build` does first.
  """
  if not hasattr(config, "to_dict"):
    config = ml_collections.ConfigDict(config)
  problems = schema.problems(config, config_schema(config))
  if not problems:  # checks across fields assume every field is there and well typed
    problems = config_problems(config, devices)
  if problems:
    raise schema.ConfigError("invalid config:\n" + "\n".join(f"  {p}" for p in problems))


@dataclasses.dataclass
class Run:
  """A configured experiment: its config, data and model (built, not trained)."""

  config: ml_collections.ConfigDict
  data: MultimodalData
  model: models.Model
  references: ReferenceClassifiers | None = None


def build(config, devices=None, workdir: str | None = None) -> Run:
  """Joins the run's other processes if it has several, validates `config` (every problem at
  once), then loads its data and builds its model. `devices` (default: all) are the mesh's; the
  reference classifiers a generative model is judged by live in `workdir` (default: a temporary
  directory), trained when first needed."""
  schema.validate(config, config_schema(config))  # the distributed section must be sound to join
  distributed.initialize(config.distributed)
  validate_config(config, devices)
  data = input_pipeline.from_config(config.data)
  family = models.FAMILIES[config.model.name]
  judged = family.judged(config)
  references = ReferenceClassifiers(config, config.model.reference_classifiers, judged, workdir) if judged else None
  return Run(config, data, family.build(config.model, data, references), references)


def train(config, workdir: str, devices=None) -> dict[str, float]:
  """Trains as `config` says in `workdir` (resuming if it holds checkpoints); returns the final
  evaluation, also in ``workdir/eval.json``. `devices` (default: all) are the mesh's devices.

  A generative model's reference classifiers are trained first (or loaded), so that training is
  not interrupted by theirs."""
  run = build(config, devices, workdir)
  if run.references is not None:
    run.references.prepare()
  return loop.train(config, workdir, run.model, run.data, devices)


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a run in `workdir` was started with."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir!r} the workdir of an mmjax run?")
  with open(path, encoding="utf-8") as f:
    config = ml_collections.ConfigDict(json.load(f))
  # How processes connect belongs to a launch, not to the run (it names one process's id):
  # a restored run takes it from the environment (MMJAX_* variables) instead.
  config.distributed.update({"enabled": False, "coordinator_address": "", "num_processes": 0, "process_id": -1})
  return config


def restore(workdir: str, step: int | None = None, devices=None, mesh: dict | None = None):
  """The built run of `workdir`, its trainer and its training state at `step`.

  Args:
    workdir: a run's workdir.
    step: the checkpoint to load; default the latest.
    devices: the devices to lay the state out on (default all); any topology can load a
      checkpoint written on any other.
    mesh: axis sizes replacing the run's ``config.mesh``, for devices its mesh does not fit.
  """
  config = load_config(workdir)
  if mesh is not None:
    config.mesh.update(mesh)
  run = build(config, devices, workdir)
  trainer = loop.Trainer(config, run.model, run.data, devices)
  checkpointer = checkpoints.Checkpointer(os.path.join(workdir, "checkpoints"), every=1, keep=None)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step not in checkpointer.all_steps():
      raise FileNotFoundError(
          f"no checkpoint for step {step} in {checkpointer.directory}; present: {checkpointer.all_steps()}"
      )
    state, _ = checkpointer.restore(step, trainer.restore_target)
  finally:
    checkpointer.close()
  return run, trainer, state


def evaluate(workdir: str, step: int | None = None, devices=None, mesh: dict | None = None) -> dict[str, float]:
  """Evaluates the checkpoint of `workdir` at `step` (default: latest); writes ``eval.json``.

  `devices` and `mesh` are as in `restore`.
  """
  _, trainer, state = restore(workdir, step, devices, mesh)
  evaluation, images = loop.split_images(trainer.evaluate(state))
  metrics = {"step": int(state.step), **evaluation}
  with open(os.path.join(workdir, "eval.json"), "w", encoding="utf-8") as f:
    json.dump(metrics, f, indent=2)
  metric_writers.write_pngs(os.path.join(workdir, "images"), int(state.step), images)
  return metrics
