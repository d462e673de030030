"""Fusion classifiers: one encoder per modality, a fusion, a head; cross-entropy on the class label.

With one modality it is a plain classifier of that modality (what mmjax trains as the reference
classifiers that judge generated samples). It is evaluated by accuracy and, for every modality, by
the accuracy with that modality masked out at test time (``accuracy_without/<modality>``): a
robustness readout in the spirit of MultiBench.
"""

from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import checks, compiler_options, linear
from mmjax.data.spec import DataSpec
from mmjax.models import encoder_configs, fusion_configs
from mmjax.models.base import Batch, Family, Objective, Variables
from mmjax.numerics import masked_mean
from mmjax.parallel import distributed
from mmjax.schema import Field


class FusionClassifierModule(nn.Module):
  """Encoders → fusion → head, on a dict of modalities with their presence.

  Attributes:
    encoders: one encoder per modality (`mmjax.encoders` contract).
    fusion: a fusion module (`mmjax.fusion` contract); if it outputs predictions there is no head.
    num_classes: classes of the head.
    head_width: hidden width of the head's MLP (0: a linear head).
    dropout_rate: dropout before the head's layers, in training.
    input_shapes: per-example shape of every modality; inputs are checked against it.
  """

  encoders: Mapping[str, nn.Module]
  fusion: nn.Module
  num_classes: int
  head_width: int = 0
  dropout_rate: float = 0.0
  input_shapes: Mapping[str, tuple[int, ...]] | None = None

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], present: Mapping[str, jax.Array], *, train: bool = False) -> jax.Array:
    """``[B, num_classes]`` logits (log-probabilities for fusions that output predictions)."""
    features = {}
    for modality, encoder in self.encoders.items():
      if self.input_shapes is not None:
        checks.check_shape(f"FusionClassifier: modality {modality!r}", inputs[modality], ("B", *self.input_shapes[modality]))
      features[modality] = encoder(inputs[modality], train=train, return_tokens=self.fusion.needs_tokens)
    fused = self.fusion(features, {m: present[m] for m in self.encoders}, train=train)
    if self.fusion.outputs_predictions:
      return fused.astype(jnp.float32)
    x = nn.Dropout(self.dropout_rate)(fused, deterministic=not train)
    if self.head_width:
      x = nn.gelu(linear.Dense(self.head_width, name="head_hidden")(x))
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    return linear.Dense(self.num_classes, name="head")(x).astype(jnp.float32)


def any_present(present: Mapping[str, jax.Array], modalities) -> jax.Array:
  """``bool[B]``: the sample has at least one of `modalities` (padding rows have none)."""
  return jnp.any(jnp.stack([present[m] for m in modalities]), axis=0)


class FusionClassifier:
  """Classification of the data's label from any modalities; honours `mmjax.models.base.Model`.

  Args:
    config: the ``model`` config section (see `config_schema`).
    spec: the dataset's modalities and classes.
  """

  def __init__(self, config, spec: DataSpec):
    self.config = config
    self.modalities = tuple(config.modalities)
    checks.check_modalities(spec.modalities, self.modalities, "FusionClassifier data")
    if not spec.class_names:
      raise ValueError("FusionClassifier: the data has no class label (data.label).")
    fusion_class = fusion_configs.module(config.fusion)
    self.module = FusionClassifierModule(
        encoders={
            m: encoder_configs.build_encoder(config.encoders[m], spec.modalities[m], m, config.features, config.dtype, config.remat)
            for m in self.modalities
        },
        fusion=fusion_configs.build_fusion(
            config.fusion, config.fusion_options, spec.num_classes if fusion_class.outputs_predictions else config.features,
            config.dtype,
        ),
        num_classes=spec.num_classes,
        head_width=config.head_width,
        dropout_rate=config.dropout_rate,
        input_shapes={m: tuple(spec.modalities[m].shape) for m in self.modalities},
    )
    self.objectives = (Objective("classification", self.loss),)
    self._predict = jax.jit(self._predicted_classes, compiler_options=compiler_options.repeated())
    self._evaluate_batch = jax.jit(self._evaluation_outputs, compiler_options=compiler_options.repeated())

  def _inputs(self, batch: Batch) -> tuple[dict, dict]:
    checks.check_modalities(batch, self.modalities, "FusionClassifier batch")
    return {m: batch[m] for m in self.modalities}, batch["present"]

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    return dict(self.module.init(rng, *self._inputs(batch)))

  def loss(self, params, model_state, batch, rng, step):
    del step
    inputs, present = self._inputs(batch)
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng}
    if model_state:
      logits, updates = self.module.apply(variables, inputs, present, train=True, rngs=rngs, mutable=list(model_state))
      model_state = {**model_state, **updates}
    else:
      logits = self.module.apply(variables, inputs, present, train=True, rngs=rngs)
    labels = batch["label"]
    valid = any_present(present, self.modalities)
    targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), self.config.label_smoothing)
    loss = masked_mean(optax.softmax_cross_entropy(logits, targets), valid)
    accuracy = masked_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), valid)
    return loss, ({"batch_accuracy": accuracy}, model_state)

  def _eval_logits(self, variables: Variables, batch: Batch, hidden: jax.Array) -> jax.Array:
    """Evaluation logits with the modalities where ``hidden`` (``bool[M]``) is True masked out."""
    inputs, present = self._inputs(batch)
    present = {m: present[m] & ~hidden[i] for i, m in enumerate(self.modalities)}
    return self.module.apply(variables, inputs, present)

  def _evaluation_outputs(self, variables: Variables, batch: Batch, hidden: jax.Array) -> dict[str, jax.Array]:
    """Per sample: prediction correct, loss, and at least one modality present (``valid``)."""
    logits = self._eval_logits(variables, batch, hidden)
    return {"correct": jnp.argmax(logits, -1) == batch["label"], "valid": any_present(batch["present"], self.modalities),
            "loss": optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])}

  def _predicted_classes(self, variables: Variables, batch: Batch) -> jax.Array:
    return jnp.argmax(self._eval_logits(variables, batch, jnp.zeros(len(self.modalities), jnp.bool_)), -1)

  def predict(self, variables: Variables, batch: Batch) -> jax.Array:
    """``int32[B]`` predicted classes (jit-compiled)."""
    return self._predict(variables, batch)

  def evaluate(self, variables: Variables, batches: Iterable[Batch]) -> dict[str, float]:
    """Accuracy, loss, and the accuracy with each modality masked out (``accuracy_without/<m>``)
    over the samples with at least one modality present."""
    conditions = {"": np.zeros(len(self.modalities), bool)}
    if len(self.modalities) > 1:
      conditions.update({f"/without/{m}": np.arange(len(self.modalities)) == i for i, m in enumerate(self.modalities)})
    correct = {name: [] for name in conditions}
    losses, kept = [], []
    for batch in batches:
      for name, hidden in conditions.items():
        fetched = distributed.to_host(self._evaluate_batch(variables, batch, hidden))
        correct[name].append(fetched["correct"][fetched["valid"]])
        if not name:
          losses.append(fetched["loss"][fetched["valid"]])
          kept.append(int(fetched["valid"].sum()))
    metrics = {f"accuracy{name.replace('/without', '_without')}": float(np.concatenate(c).mean()) for name, c in correct.items()}
    metrics["loss"] = float(np.concatenate(losses).mean())
    metrics["num_examples"] = sum(kept)
    return metrics


def config_schema(config) -> dict:
  """The ``model`` section's schema; each modality's encoder section follows its data kind."""
  kinds = {name: section.get("kind") for name, section in config.data.modalities.items()}
  return {
      "name": Field(str),
      "modalities": Field((tuple, list), items=str),
      "features": Field(int, low=1),
      "encoders": {
          m: encoder_configs.ENCODERS.section_schema(kinds.get(m), section) for m, section in config.model.get("encoders", {}).items()
      },
      **fusion_configs.schema(config.model.get("fusion_options", {})),
      "head_width": Field(int, low=0),
      "dropout_rate": Field(float, low=0.0, high=1.0),
      "label_smoothing": Field(float, low=0.0, high=1.0),
      "dtype": Field(str, choices=tuple(encoder_configs.DTYPES)),
      "remat": Field(bool),
  }


def config_problems(config) -> list[str]:
  problems = encoder_configs.modalities_problems(config, config.model.modalities)
  if not config.model.modalities:
    problems.append("model.modalities: name at least one modality")
  if not config.data.label:
    problems.append("data.label: a classifier needs the class label feature")
  problems.extend(fusion_configs.problems(config.model.fusion, config.model.fusion_options))
  problems.extend(fusion_configs.modality_count_problems(config.model.fusion, config.model.modalities))
  return problems


FAMILY = Family(
    build=lambda config, data, references: FusionClassifier(config, data.spec),
    config_schema=config_schema,
    objectives=lambda config: ("classification",),
    config_problems=config_problems,
)
