"""Adversarial alignment of two encoders' embeddings (domain-adversarial training, DANN).

Each of two modalities has its own encoder to a ``D``-dimensional embedding. A shared class head
keeps the embeddings informative (cross-entropy on the label from either modality), while a
domain classifier, reached through gradient reversal (`mmjax.losses.alignment.domain_adversarial_loss`),
learns to tell which modality an embedding came from and thereby trains the encoders to make the
two indistinguishable: one minimisation, one optimizer. Aligned embeddings let the head trained on
both classify either, and push the domain classifier's accuracy towards chance (0.5).

References:
  Ganin et al., Domain-Adversarial Training of Neural Networks (DANN), 2016.
"""

from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from mmjax import checks, compiler_options, linear
from mmjax.data.spec import DataSpec
from mmjax.losses.alignment import domain_adversarial_loss
from mmjax.models import encoder_configs
from mmjax.models.base import Batch, Family, Objective, Variables
from mmjax.numerics import masked_mean
from mmjax.parallel import distributed
from mmjax.schema import Field


class AlignmentModule(nn.Module):
  """Two encoders, a shared class head, and a domain classifier (an MLP to one logit).

  >>> from mmjax.encoders.vector import MLPEncoder
  >>> module = AlignmentModule({"a": MLPEncoder(features=8), "b": MLPEncoder(features=8)}, num_classes=3)
  >>> variables = module.init(jax.random.key(0), {"a": jnp.zeros((2, 5)), "b": jnp.zeros((2, 4))})
  >>> logits, domain_logits = module.apply(variables, {"a": jnp.zeros((2, 5)), "b": jnp.zeros((2, 4))})
  >>> logits["a"].shape, domain_logits.shape
  ((2, 3), (4,))
  """

  encoders: Mapping[str, nn.Module]
  num_classes: int
  domain_width: int = 64

  def setup(self):
    self.head = linear.Dense(self.num_classes)
    self.domain_hidden = linear.Dense(self.domain_width)
    self.domain_output = linear.Dense(1)

  def embed(self, inputs: Mapping[str, jax.Array]) -> dict[str, jax.Array]:
    return {m: encoder(inputs[m]).astype(jnp.float32) for m, encoder in self.encoders.items()}

  def classify(self, embeddings: jax.Array) -> jax.Array:
    return self.head(embeddings)

  def domain(self, embeddings: jax.Array) -> jax.Array:
    return self.domain_output(nn.relu(self.domain_hidden(embeddings)))[:, 0]

  def __call__(self, inputs: Mapping[str, jax.Array]) -> tuple[dict[str, jax.Array], jax.Array]:
    embeddings = self.embed(inputs)
    joined = jnp.concatenate(list(embeddings.values()))
    return {m: self.classify(e) for m, e in embeddings.items()}, self.domain(joined)


class AdversarialAlignment:
  """Domain-adversarial alignment of ``model.modalities`` (two); honours `mmjax.models.base.Model`.

  Args:
    config: the ``model`` section (see `config_schema`).
    spec: the dataset's modalities and classes.
  """

  def __init__(self, config, spec: DataSpec):
    self.config = config
    self.modalities = tuple(config.modalities)
    checks.check_modalities(spec.modalities, self.modalities, "AdversarialAlignment data")
    if not spec.class_names:
      raise ValueError("AdversarialAlignment: the data has no class label (data.label).")
    self.module = AlignmentModule(
        encoders={m: encoder_configs.build_encoder(config.encoders[m], spec.modalities[m], m, config.embed_dim, config.dtype, config.remat)
                  for m in self.modalities},
        num_classes=spec.num_classes, domain_width=config.domain_width,
    )
    self.objectives = (Objective("alignment", self.loss),)
    self._outputs = jax.jit(self.outputs, compiler_options=compiler_options.repeated())

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    return dict(self.module.init(rng, {m: batch[m] for m in self.modalities}))

  def outputs(self, params, batch: Batch) -> dict[str, jax.Array]:
    """Embeddings, class logits and domain logits per modality, and the valid rows."""
    checks.check_modalities(batch, self.modalities, "AdversarialAlignment batch")
    apply = lambda method, x: self.module.apply({"params": params}, x, method=method)  # noqa: E731
    embeddings = apply(AlignmentModule.embed, {m: batch[m] for m in self.modalities})
    return {
        "embeddings": embeddings,
        "logits": {m: apply(AlignmentModule.classify, e) for m, e in embeddings.items()},
        "domain": {m: apply(AlignmentModule.domain, e) for m, e in embeddings.items()},
        "valid": {m: batch["present"][m] for m in self.modalities},
    }

  def loss(self, params, model_state, batch, rng, step):
    del rng, step
    out = self.outputs(params, batch)
    first, second = self.modalities
    classification = sum(
        masked_mean(optax.softmax_cross_entropy_with_integer_labels(out["logits"][m], batch["label"]), out["valid"][m])
        for m in self.modalities) / 2
    domain = lambda e: self.module.apply({"params": params}, e, method=AlignmentModule.domain)  # noqa: E731
    adversarial = domain_adversarial_loss(domain, out["embeddings"][first], out["embeddings"][second], scale=self.config.reversal_scale,
                                          first_mask=out["valid"][first], second_mask=out["valid"][second])
    loss = classification + self.config.domain_weight * adversarial
    return loss, ({"classification": classification, "domain": adversarial}, model_state)

  def evaluate(self, variables: Variables, batches: Iterable[Batch]) -> dict[str, float]:
    """``accuracy/<m>`` of the shared head on each modality's embedding, ``alignment/domain_accuracy``
    (the domain classifier's; 0.5 is chance) and ``alignment/cross_accuracy`` (each first-modality
    embedding's nearest second-modality class centroid is its class)."""
    params = variables["params"]
    first, second = self.modalities
    per_modality = lambda: {m: [] for m in self.modalities}  # noqa: E731
    rows = {"correct": per_modality(), "domain": [], "embeddings": per_modality(), "labels": per_modality()}
    for batch in batches:
      out = distributed.to_host({**self._outputs(params, batch), "label": batch["label"]})
      for index, m in enumerate(self.modalities):
        keep = out["valid"][m]
        rows["correct"][m].append(np.argmax(out["logits"][m], -1)[keep] == out["label"][keep])
        rows["embeddings"][m].append(out["embeddings"][m][keep])
        rows["labels"][m].append(out["label"][keep])
        # Domain logits come from the jitted outputs (whole, static-shape batches): scoring only
        # the kept rows would compile again for every distinct count of them.
        rows["domain"].append((out["domain"][m][keep] > 0) == (index == 0))
    metrics = {f"accuracy/{m}": float(np.concatenate(rows["correct"][m]).mean()) for m in self.modalities}
    metrics["alignment/domain_accuracy"] = float(np.concatenate(rows["domain"]).mean())
    embeddings = {m: np.concatenate(rows["embeddings"][m]) for m in self.modalities}
    labels = {m: np.concatenate(rows["labels"][m]) for m in self.modalities}
    classes = np.unique(labels[second])
    centroids = np.stack([embeddings[second][labels[second] == c].mean(0) for c in classes])
    nearest = classes[np.argmin(((embeddings[first][:, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    metrics["alignment/cross_accuracy"] = float(np.mean(nearest == labels[first]))
    return metrics


def config_schema(config) -> dict:
  """The ``model`` section's schema; each modality's encoder section follows its data kind."""
  kinds = {name: section.get("kind") for name, section in config.data.modalities.items()}
  return {
      "name": Field(str),
      "modalities": Field((tuple, list), items=str),
      "embed_dim": Field(int, low=1),
      "encoders": {m: encoder_configs.ENCODERS.section_schema(kinds.get(m), s) for m, s in config.model.get("encoders", {}).items()},
      "domain_width": Field(int, low=1),
      "domain_weight": Field(float, low=0.0),
      "reversal_scale": Field(float, low=0.0),
      "dtype": Field(str, choices=tuple(encoder_configs.DTYPES)),
      "remat": Field(bool),
  }


def config_problems(config) -> list[str]:
  problems = encoder_configs.modalities_problems(config, config.model.modalities, exactly=2)
  if not config.data.label:
    problems.append("data.label: adversarial alignment keeps embeddings informative with the class label")
  return problems


FAMILY = Family(
    build=lambda config, data, references: AdversarialAlignment(config, data.spec),
    config_schema=config_schema,
    objectives=lambda config: ("alignment",),
    config_problems=config_problems,
)
