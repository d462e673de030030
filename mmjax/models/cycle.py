"""Cross-modal translation with cycle consistency between an image (or vector) and a label.

Two translators, ``G: A → B`` (an encoder of A, then class logits) and ``F: B → A`` (a decoder from
B's one-hot), are trained on paired data by their translation losses (cross-entropy for the label,
mean squared error for the image) and tied by cycle consistency (CycleGAN's L1):
``A → B → A`` compares ``F(softmax(G(a)))`` with ``a``, and ``B → A → B`` compares
``softmax(G(F(b)))`` with ``b``'s one-hot. The label travels as a relaxed one-hot, so both cycles
are differentiable. ``paired_weight = 0`` leaves only the cycles (unpaired translation).

References:
  Zhu et al., Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks, 2017.
"""

from collections.abc import Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import checks, compiler_options, linear
from mmjax.data.spec import DataSpec
from mmjax.losses.alignment import DISTANCES, cycle_consistency_loss
from mmjax.models import decoder_configs, encoder_configs
from mmjax.models.base import Batch, Family, Objective, Variables
from mmjax.numerics import masked_mean
from mmjax.parallel import distributed
from mmjax.schema import Field


class Translators(nn.Module):
  """``to_label``: A → class logits; ``to_source``: class probabilities → A.

  >>> from mmjax.decoders.image import MLPImageDecoder
  >>> from mmjax.encoders.vector import MLPEncoder
  >>> module = Translators(MLPEncoder(features=8, event_rank=3), MLPImageDecoder(shape=(8, 8, 1), width=16), num_classes=10)
  >>> variables = module.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
  >>> logits, cycled = module.apply(variables, jnp.zeros((2, 8, 8, 1)))
  >>> logits.shape, cycled.shape
  ((2, 10), (2, 8, 8, 1))
  """

  encoder: nn.Module
  decoder: nn.Module
  num_classes: int

  def setup(self):
    self.head = linear.Dense(self.num_classes)

  def to_label(self, x: jax.Array) -> jax.Array:
    return self.head(self.encoder(x)).astype(jnp.float32)

  def to_source(self, probabilities: jax.Array) -> jax.Array:
    return self.decoder(probabilities).astype(jnp.float32)

  def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = self.to_label(x)
    return logits, self.to_source(jax.nn.softmax(logits))


class CycleTranslation:
  """Translation between ``model.modalities = (source, label)``; honours `mmjax.models.base.Model`.

  Args:
    config: the ``model`` section (see `config_schema`).
    spec: the dataset's modalities.
  """

  def __init__(self, config, spec: DataSpec):
    self.config = config
    self.source, self.label = tuple(config.modalities)
    checks.check_modalities(spec.modalities, (self.source, self.label), "CycleTranslation data")
    self.num_classes = spec.modalities[self.label].num_classes
    source_spec = spec.modalities[self.source]
    self.module = Translators(
        encoder=encoder_configs.build_encoder(config.encoder, source_spec, self.source, config.features, config.dtype, config.remat),
        decoder=decoder_configs.build_decoder(config.decoder, source_spec, self.source, config.dtype, config.remat),
        num_classes=self.num_classes,
    )
    self.objectives = (Objective("translation", self.loss),)
    self._terms = jax.jit(self.terms, compiler_options=compiler_options.repeated())

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    return dict(self.module.init(rng, batch[self.source].astype(jnp.float32)))

  def translate(self, params, batch: Batch) -> dict[str, jax.Array]:
    """Both translations and both cycles of a batch, with the inputs they are compared to."""
    checks.check_modalities(batch, (self.source, self.label), "CycleTranslation batch")
    apply = lambda method, x: self.module.apply({"params": params}, x, method=method)  # noqa: E731
    x, one_hot = batch[self.source].astype(jnp.float32), jax.nn.one_hot(batch[self.label], self.num_classes)
    logits = apply(Translators.to_label, x)
    translated = apply(Translators.to_source, one_hot)
    return {
        "x": x, "one_hot": one_hot, "logits": logits, "translated": translated,
        "source_cycled": apply(Translators.to_source, jax.nn.softmax(logits)),
        "label_cycled": jax.nn.softmax(apply(Translators.to_label, translated)),
        "valid": batch["present"][self.source] & batch["present"][self.label],
    }

  def terms(self, params, batch: Batch) -> dict[str, jax.Array]:
    """``[B]`` per-row translation losses, cycle distances and correctness, and the valid rows."""
    t = self.translate(params, batch)
    distance = DISTANCES[self.config.cycle_distance]
    per_row = lambda d: jnp.mean(d.reshape(d.shape[0], -1), axis=1)  # noqa: E731
    return {
        "to_label": optax.softmax_cross_entropy(t["logits"], t["one_hot"]),
        "to_source": per_row(jnp.square(t["translated"] - t["x"])),
        "cycle_source": per_row(distance(t["source_cycled"] - t["x"])),
        "cycle_label": per_row(distance(t["label_cycled"] - t["one_hot"])),
        "correct": (jnp.argmax(t["logits"], -1) == batch[self.label]).astype(jnp.float32),
        "valid": t["valid"],
    }

  def loss(self, params, model_state, batch, rng, step):
    del rng, step
    t = self.translate(params, batch)
    valid = t["valid"]
    paired = masked_mean(optax.softmax_cross_entropy(t["logits"], t["one_hot"]), valid) + masked_mean(
        jnp.mean(jnp.square(t["translated"] - t["x"]).reshape(valid.shape[0], -1), axis=1), valid)
    cycle = cycle_consistency_loss(t["x"], t["source_cycled"], t["one_hot"], t["label_cycled"],
                                   distance=self.config.cycle_distance, first_mask=valid, second_mask=valid)
    loss = self.config.paired_weight * paired + self.config.cycle_weight * cycle
    return loss, ({"paired": paired, "cycle": cycle}, model_state)

  def evaluate(self, variables: Variables, batches: Iterable[Batch]) -> dict[str, float]:
    """Means over valid rows: ``accuracy`` (source → label), the translation errors and both cycles."""
    collected = []
    for batch in batches:
      terms = distributed.to_host(self._terms(variables["params"], batch))
      collected.append({k: v[terms["valid"]] for k, v in terms.items() if k != "valid"})
    metrics = {k: float(np.concatenate([c[k] for c in collected]).mean()) for k in collected[0]}
    metrics["accuracy"] = metrics.pop("correct")
    metrics["loss"] = self.config.paired_weight * (metrics["to_label"] + metrics["to_source"]) + self.config.cycle_weight * (
        metrics["cycle_source"] + metrics["cycle_label"])
    return metrics


def config_schema(config) -> dict:
  """The ``model`` section's schema; the source's encoder and decoder sections follow its kind."""
  kinds = {name: section.get("kind") for name, section in config.data.modalities.items()}
  modalities = tuple(config.model.get("modalities", ()))
  source_kind = kinds.get(modalities[0]) if modalities else None
  return {
      "name": Field(str),
      "modalities": Field((tuple, list), items=str),
      "features": Field(int, low=1),
      "encoder": encoder_configs.ENCODERS.section_schema(source_kind, config.model.get("encoder", {})),
      "decoder": decoder_configs.section_schema(source_kind, config.model.get("decoder", {})),
      "paired_weight": Field(float, low=0.0),
      "cycle_weight": Field(float, low=0.0),
      "cycle_distance": Field(str, choices=tuple(DISTANCES)),
      "dtype": Field(str, choices=tuple(encoder_configs.DTYPES)),
      "remat": Field(bool),
  }


def config_problems(config) -> list[str]:
  modalities = tuple(config.model.modalities)
  kinds = [config.data.modalities[m]["kind"] if m in config.data.modalities else None for m in modalities]
  if len(modalities) != 2 or kinds[0] not in ("image", "vector") or kinds[1] != "label":
    return [
        "model.modalities: (source, label) with a source of kind 'image' or 'vector' and a 'label'; "
        f"got {list(modalities)} of kinds {kinds}"
    ]
  return []


FAMILY = Family(
    build=lambda config, data, references: CycleTranslation(config, data.spec),
    config_schema=config_schema,
    objectives=lambda config: ("translation",),
    config_problems=config_problems,
)
