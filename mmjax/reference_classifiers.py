"""Classifiers of single modalities trained by mmjax on the real data: the judges of generated samples.

Generative models are evaluated by classifying what they generate: cross-coherence (generate
modality B from A, classify it, compare with A's label), joint coherence of prior samples, the
conditional accuracy of a GAN. `ReferenceClassifiers` trains one classifier per modality on the
run's own dataset with the ordinary trainer (`mmjax.models.classifier`, one modality, no fusion to
speak of), each in ``<workdir>/classifiers/<modality>/`` with its checkpoint, logs and
``eval.json`` (its own test accuracy, reported beside the coherences it serves). A finished
classifier whose config has not changed is loaded, not trained again. A modality of kind
``label`` needs none: its value is its class.

The settings are the ``reference_classifiers`` section of a generative model's config::

    reference_classifiers=dict(num_steps=600, batch_size=128, learning_rate=2e-3, features=64,
                               encoders=dict(image=encoder_section("image", "conv")))
"""

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from mmjax.models import encoder_configs, fusion_configs
from mmjax.schema import Field


def config_schema(config, section: Mapping) -> dict:
  """The schema of a ``reference_classifiers`` section (encoder sections follow their data kinds)."""
  kinds = {name: data.get("kind") for name, data in config.data.modalities.items()}
  return {
      "num_steps": Field(int, low=1),
      "batch_size": Field(int, low=1),
      "learning_rate": Field(float, low=0.0),
      "features": Field(int, low=1),
      "encoders": {m: encoder_configs.ENCODERS.section_schema(kinds.get(m), s) for m, s in section.get("encoders", {}).items()},
  }


def config_problems(config, section: Mapping, modalities: Sequence[str], path: str) -> list[str]:
  """Every judged modality that is not a label needs an encoder section, consistent with its kind."""
  problems = []
  for m in modalities:
    if config.data.modalities[m]["kind"] == "label":
      continue
    if m not in section.encoders:
      problems.append(f"{path}.encoders: no encoder section for modality {m!r}, which the model's evaluation classifies")
    else:
      problems.extend(encoder_configs.ENCODERS.section_problems(f"{path}.encoders.{m}", section.encoders[m]))
  return problems


def classifier_config(run_config, settings: Mapping, modality: str) -> ml_collections.ConfigDict:
  """The config of the run that trains `modality`'s classifier: the run's dataset (that modality
  only, no modality dropout), devices and seed; a one-modality classifier; a short schedule."""
  config = ml_collections.ConfigDict(run_config.to_dict())
  config.data.modalities = {modality: run_config.data.modalities[modality].to_dict()}
  config.data.modality_dropout = {}
  config.data.batch_size = settings["batch_size"]
  config.model = dict(
      name="classifier", modalities=(modality,), features=settings["features"],
      encoders={modality: dict(settings["encoders"][modality])}, fusion="mean", fusion_options=fusion_configs.fusion_options(),
      head_width=0, dropout_rate=0.0, label_smoothing=0.0, dtype="float32", remat=False,
  )
  steps = settings["num_steps"]
  config.optimizer = dict(
      name="adamw", learning_rate=settings["learning_rate"], schedule="warmup_cosine", warmup_steps=max(steps // 10, 1) if steps > 1 else 0,
      final_learning_rate_fraction=0.0, b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, weight_decay=1e-4, grad_clip_norm=1.0,
      per_objective={},
  )
  config.train.update(
      num_steps=steps, log_every=max(steps // 5, 1), eval_every=None, checkpoint_every=steps, keep_checkpoints=1,
      accumulation_steps=1, progress_bar=False, nonfinite_policy="halt", ema_decay=None,
  )
  return config


class ReferenceClassifiers:
  """One real-data classifier per judged modality, trained once per workdir and then loaded.

  Args:
    run_config: the generative run's config (its data, devices, seed).
    settings: its ``reference_classifiers`` section.
    modalities: the modalities whose generations are classified.
    workdir: the run's workdir (classifiers go to ``<workdir>/classifiers``); None: a temporary
      directory.
  """

  def __init__(self, run_config, settings: Mapping, modalities: Sequence[str], workdir: str | None):
    self.run_config = run_config
    self.settings = settings
    self.modalities = tuple(modalities)
    self.directory = os.path.join(workdir, "classifiers") if workdir else tempfile.mkdtemp(prefix="mmjax_classifiers_")
    self._loaded: dict[str, tuple] = {}

  def _is_label(self, modality: str) -> bool:
    return self.run_config.data.modalities[modality]["kind"] == "label"

  def prepare(self) -> dict[str, float]:
    """Trains (or loads) every classifier; returns their test accuracies."""
    return {m: self.accuracy(m) for m in self.modalities}

  def _load(self, modality: str):
    if modality in self._loaded:
      return self._loaded[modality]
    from mmjax import experiment  # the classifiers are runs of their own

    workdir = os.path.join(self.directory, modality)
    config = classifier_config(self.run_config, self.settings, modality)
    if not _finished_with(workdir, config):
      shutil.rmtree(workdir, ignore_errors=True)  # another config's leftovers would not resume
      experiment.train(config, workdir)
    run, _, state = experiment.restore(workdir)
    with open(os.path.join(workdir, "eval.json"), encoding="utf-8") as f:
      accuracy = json.load(f)["accuracy"]
    self._loaded[modality] = (run.model, state.evaluation_variables, accuracy)
    return self._loaded[modality]

  def accuracy(self, modality: str) -> float:
    """The test accuracy of `modality`'s classifier on real data (1 for a label modality)."""
    return 1.0 if self._is_label(modality) else float(self._load(modality)[2])

  def predict(self, modality: str, values: jax.Array) -> jax.Array:
    """``int32[B]`` classes of a batch of `modality` values (real or generated, in the data's
    representation: e.g. images scaled as the data config scales them, token ids for text)."""
    if self._is_label(modality):
      return jnp.asarray(values, jnp.int32)
    model, variables, _ = self._load(modality)
    present = {modality: np.ones(values.shape[:1], bool)}
    return model.predict(variables, {modality: values, "present": present})


def _finished_with(workdir: str, config) -> bool:
  """Whether `workdir` holds a finished run of exactly `config`."""
  try:
    with open(os.path.join(workdir, "config.json"), encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError):
    return False
  same = json.loads(config.to_json()) == saved
  return same and os.path.exists(os.path.join(workdir, "eval.json"))


def reference_section(num_steps: int = 600, **encoders: Mapping) -> dict:
  """A ``reference_classifiers`` section: the training settings and an encoder section per judged
  modality that is not a label (``modality=encoder_section(...)``).

  >>> section = reference_section(image=encoder_configs.encoder_section("image", "conv"))
  >>> section["num_steps"], section["encoders"]["image"]["name"]
  (600, 'conv')
  """
  return dict(num_steps=num_steps, batch_size=128, learning_rate=2e-3, features=64, encoders=dict(encoders))
