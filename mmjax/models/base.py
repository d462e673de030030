"""The contract between a model family and the trainer.

A model family (contrastive dual encoder, multimodal VAE, GAN, fusion classifier, …) describes
*what* to compute; the trainer (`mmjax.train`) owns *how*: optimizers, the compiled step,
sharding, checkpoints and logs. They meet here:

* ``init(rng, batch) -> variables``: the Flax variables (``{"params": …}`` plus any mutable
  collections such as batch statistics) for a batch of the training shape.
* ``objectives``: one `Objective` per optimizer. Each minimises its loss over its own part of the
  parameters; several run one after the other inside one compiled step (a GAN's discriminator
  then generator update), each seeing the parameters the previous one produced.
* ``evaluate(variables, batches) -> {metric: float}`` over an evaluation split.

A loss receives the training step, so schedules (KL annealing, lazy regularisers) live in the
model, and an explicit PRNG key, so stochastic losses are reproducible.

An objective whose loss couples samples only through per-sample embeddings (contrastive losses)
may also give that split: ``loss = embedding_loss(params, embed(params, …), batch)``. With it,
gradient accumulation stays exact: the embeddings of the whole accumulated batch are computed
first without gradients, the loss and its gradient with respect to them once, and then each
micro-batch is re-embedded with gradients — so every micro-batch sees all the others as negatives.
"""

import dataclasses
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Protocol

import jax

Batch = Mapping[str, Any]
Variables = dict[str, Any]
Metrics = dict[str, jax.Array]


class EmbedFn(Protocol):

  def __call__(self, params: Any, model_state: Variables, batch: Batch, rng: jax.Array) -> Any:
    """Per-sample embeddings (any pytree of ``[B, …]`` arrays) of `batch`."""


class EmbeddingLossFn(Protocol):

  def __call__(self, params: Any, embeddings: Any, batch: Batch) -> tuple[jax.Array, Metrics]:
    """Returns ``(loss, metrics)`` of a batch from its embeddings."""


class LossFn(Protocol):

  def __call__(
      self, params: Any, model_state: Variables, batch: Batch, rng: jax.Array, step: jax.Array
  ) -> tuple[jax.Array, tuple[Metrics, Variables]]:
    """Returns ``(loss, (metrics, new_model_state))``.

    `params` is the full parameter tree (also the parts this objective does not train);
    `model_state` holds the variables other than params (empty for most models); metrics are
    scalars to log.
    """


@dataclasses.dataclass(frozen=True)
class Objective:
  """One loss, minimised by one optimizer.

  Attributes:
    name: identifies the objective in metrics, optimizer configs and optimizer state.
    loss: the loss function.
    trains: names of the top-level parameter subtrees this objective updates; None means all.
    embed: optional first half of `loss` (see the module docstring), with `embedding_loss`.
    embedding_loss: optional second half of `loss`.
    repeats: updates per training step (a GAN critic's ``n_critic``), each on one of `repeats`
      strided parts of the batch; its optimizer's schedule counts its updates.
  """

  name: str
  loss: LossFn
  trains: tuple[str, ...] | None = None
  embed: EmbedFn | None = None
  embedding_loss: EmbeddingLossFn | None = None
  repeats: int = 1


class Model(Protocol):
  """What the trainer needs from a model family."""

  objectives: Sequence[Objective]

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    ...

  def evaluate(self, variables: Variables, batches: Iterable[Batch]) -> dict[str, float]:
    ...


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family as the config names it (`mmjax.models.FAMILIES`).

  Attributes:
    build: ``build(model_config, data, references) -> Model``; `data` gives ``spec`` (a
      `mmjax.data.spec.DataSpec`) and ``class_prompts(modality)`` for zero-shot evaluation;
      `references` are the real-data classifiers of the modalities `judged` names
      (`mmjax.reference_classifiers.ReferenceClassifiers`), or None when it names none.
    config_schema: ``config_schema(config) -> schema`` of the ``model`` section; it may depend on
      the rest of the config (the kinds of the data's modalities choose the valid encoders).
    objectives: ``objectives(config) -> names`` of the objectives the model will have (what
      ``optimizer.per_objective`` may name).
    config_problems: ``config_problems(config) -> [message]``: checks across fields and sections,
      run by `mmjax.experiment.validate_config` before any data is read.
    judged: ``judged(config) -> modalities`` whose generations the model's evaluation classifies
      with reference classifiers (settings in ``model.reference_classifiers``); none by default.
  """

  build: Callable[[Any, Any, Any], Model]
  config_schema: Callable[[Any], Mapping]
  objectives: Callable[[Any], tuple[str, ...]]
  config_problems: Callable[[Any], list[str]] = lambda config: []
  judged: Callable[[Any], tuple[str, ...]] = lambda config: ()


class Generative(Protocol):
  """The API every generative family shares (VAEs, GANs); every method is `jit`-able.

  Inputs are batches in the data's layout: ``{modality: [B, …], "present": {modality: bool[B]}}``;
  the presence mask says which modalities condition the result, so any subset can. Outputs are
  ``{modality: [B, …]}`` in the data's representation (images scaled as the data scales them,
  token ids for text, class indices for labels), ready for the reference classifiers.
  """

  def reconstruct(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Every modality of `batch` reconstructed from the present ones."""

  def cross_generate(self, variables: Variables, batch: Batch, target: str, rng: jax.Array) -> jax.Array:
    """Modality `target` generated from the modalities present in `batch`."""

  def sample(self, variables: Variables, num_samples: int, rng: jax.Array) -> dict[str, jax.Array]:
    """`num_samples` joint samples of every modality from the prior."""
