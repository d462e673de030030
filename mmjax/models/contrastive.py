"""Contrastive dual encoders (CLIP, SigLIP, or NT-Xent objective) over any two modalities.

The model family behind ``configs/clip_digits.py``: one encoder per modality, trained so that
paired embeddings score higher than unpaired ones; evaluated by retrieval in both directions and,
when one modality is text and the dataset has prompt templates, by zero-shot classification of
the other modality from class prompts.
"""

import functools
import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mmjax import checks, compiler_options, eval as evaluation, losses
from mmjax.data.spec import DataSpec
from mmjax.models import encoder_configs
from mmjax.models.base import Batch, Family, Objective, Variables
from mmjax.models.dual_encoder import DualEncoder
from mmjax.parallel import distributed, mesh as mesh_lib
from mmjax.schema import Field

LOSSES = ("clip", "siglip", "nt_xent")
# "global": the loss of the global arrays, laid out by XLA; "local": every device computes its own
# rows (gather / ring exchange under shard_map), memory linear in the local batch.
LOSS_SHARDINGS = ("global", "local")
# Initial logit scale and bias when the config leaves them unset, as the papers set them.
DEFAULT_INIT = {"clip": (math.log(1 / 0.07), None), "siglip": (math.log(10.0), -10.0), "nt_xent": (0.0, None)}


def direction_names(first: str, second: str) -> tuple[str, str]:
  """Metric prefixes of the two retrieval directions: initials when they differ (``i2t``, ``t2i``).

  >>> direction_names("image", "audio"), direction_names("audio", "album")
  (('i2a', 'a2i'), ('audio2album', 'album2audio'))
  """
  if first[0] != second[0]:
    return f"{first[0]}2{second[0]}", f"{second[0]}2{first[0]}"
  return f"{first}2{second}", f"{second}2{first}"


class ContrastiveModel:
  """A dual encoder trained with a contrastive loss; honours `mmjax.models.base.Model`.

  Args:
    config: the ``model`` config section (see `config_schema`).
    spec: the dataset's modalities.
    class_prompts: ``int32[C, T, L]`` tokenized prompts of the text modality for zero-shot
      classification of the other one, or None to skip it.
  """

  def __init__(self, config, spec: DataSpec, class_prompts: np.ndarray | None = None):
    self.config = config
    self.modalities = tuple(config.modalities)
    checks.check_modalities(spec.modalities, self.modalities, "ContrastiveModel data")
    self.class_prompts = class_prompts
    self.text = next((m for m in self.modalities if spec.modalities[m].kind == "text"), None)
    self.directions = direction_names(*self.modalities)
    init_log_scale, init_bias = DEFAULT_INIT[config.loss]
    self.module = DualEncoder(
        encoders={
            m: encoder_configs.build_encoder(
                config.encoders[m], spec.modalities[m], m, config.embed_dim, config.dtype, config.remat
            )
            for m in self.modalities
        },
        input_shapes={m: tuple(spec.modalities[m].shape) for m in self.modalities},
        init_log_scale=init_log_scale if config.init_log_scale is None else config.init_log_scale,
        init_bias=(init_bias if config.init_bias is None else config.init_bias) if config.loss == "siglip" else None,
    )
    # With batch statistics, re-embedding micro-batches would not reproduce the whole batch's
    # statistics, so the exact accumulation split is offered only to stateless encoders
    # (`config_problems` refuses accumulation otherwise).
    exact_accumulation = not encoder_configs.any_batch_statistics(config.encoders, self.modalities)
    self.objectives = (
        Objective(
            "contrastive",
            self.loss,
            embed=self.embed_for_loss if exact_accumulation else None,
            embedding_loss=self.embedding_loss if exact_accumulation else None,
        ),
    )
    self._embed = jax.jit(self._embed_batch, compiler_options=compiler_options.repeated())
    self.embed_text = jax.jit(self._embed_text, compiler_options=compiler_options.repeated())
    self.class_embeddings = jax.jit(self._class_embeddings, compiler_options=compiler_options.repeated())
    self._zero_shot_accuracy = jax.jit(self._top1_accuracy, compiler_options=compiler_options.repeated())

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    return dict(self.module.init(rng, self._inputs(batch)))

  def _inputs(self, batch: Batch) -> dict[str, jax.Array]:
    checks.check_modalities(batch, self.modalities, "ContrastiveModel batch")
    return {m: batch[m] for m in self.modalities}

  def pair_loss(self, params, embeddings: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
    """The configured contrastive loss of paired embeddings.

    With ``loss_sharding="local"`` and a mesh set (the trainer sets it), every device computes the
    loss rows of its own samples (`jax.shard_map` over the batch axes): CLIP gathers the other
    devices' embeddings, SigLIP passes them around a ring; the value and gradients are those of
    the global loss. ``loss_chunk_size > 0`` bounds the logits held at once to that many rows.
    """
    first, second = (embeddings[m] for m in self.modalities)
    if self.config.loss == "nt_xent":
      return losses.nt_xent_loss(first, second, self.config.nt_xent_temperature, mask=mask)
    scalars = (params["log_scale"], params.get("bias", jnp.zeros((), jnp.float32)))
    mesh = jax.sharding.get_abstract_mesh()
    if self.config.loss_sharding == "global" or mesh.empty:
      return self._scored_loss(first, second, mask, *scalars, axis_name=None)
    rows = P(mesh_lib.BATCH_AXES)
    per_device = jax.shard_map(
        functools.partial(self._scored_loss, axis_name=mesh_lib.BATCH_AXES),
        in_specs=(rows, rows, rows, P(), P()),
        out_specs=P(),
    )
    return per_device(first, second, mask, *scalars)

  def _scored_loss(self, first, second, mask, log_scale, bias, *, axis_name) -> jax.Array:
    options = {"max_scale": self.config.max_scale, "mask": mask, "axis_name": axis_name}
    if self.config.loss_chunk_size:
      options["chunk_size"] = self.config.loss_chunk_size
      if self.config.loss == "clip":
        return losses.chunked_clip_loss(first, second, log_scale, **options)
      return losses.chunked_siglip_loss(first, second, log_scale, bias, **options)
    if self.config.loss == "clip":
      return losses.clip_loss(first, second, log_scale, **options)
    return losses.siglip_loss(first, second, log_scale, bias, **options)

  def _train_apply(self, params, model_state, batch, rng) -> tuple[dict[str, jax.Array], Variables]:
    """Training-mode embeddings and the updated mutable collections (batch statistics)."""
    variables = {"params": params, **model_state}
    rngs = {"dropout": rng}
    if not model_state:
      return self.module.apply(variables, self._inputs(batch), train=True, rngs=rngs), model_state
    embeddings, updates = self.module.apply(variables, self._inputs(batch), train=True, rngs=rngs, mutable=list(model_state))
    return embeddings, {**model_state, **updates}

  def embed_for_loss(self, params, model_state, batch, rng) -> dict[str, jax.Array]:
    """Training-mode embeddings of both modalities (the first half of `loss`)."""
    return self._train_apply(params, model_state, batch, rng)[0]

  def embedding_loss(self, params, embeddings: dict[str, jax.Array], batch) -> tuple[jax.Array, dict]:
    """The contrastive loss and metrics of a batch from its embeddings (the second half of `loss`)."""
    first, second = self.modalities
    mask = batch["present"][first] & batch["present"][second]
    loss = self.pair_loss(params, embeddings, mask)
    similarity = embeddings[first] @ embeddings[second].T
    target = jnp.arange(similarity.shape[0])
    count = jnp.maximum(jnp.sum(mask), 1)
    forward, backward = self.directions
    metrics = {
        "logit_scale": losses.clamped_scale(params["log_scale"], self.config.max_scale),
        f"{forward}_batch_accuracy": jnp.sum((jnp.argmax(similarity, 1) == target) & mask) / count,
        f"{backward}_batch_accuracy": jnp.sum((jnp.argmax(similarity, 0) == target) & mask) / count,
    }
    return loss, metrics

  def loss(self, params, model_state, batch, rng, step):
    del step  # no schedule inside the loss
    embeddings, model_state = self._train_apply(params, model_state, batch, rng)
    loss, metrics = self.embedding_loss(params, embeddings, batch)
    return loss, (metrics, model_state)

  def _embed_batch(self, variables: Variables, batch: Batch) -> dict[str, jax.Array]:
    return self.module.apply(variables, self._inputs(batch))

  def _embed_text(self, variables: Variables, tokens: jax.Array) -> jax.Array:
    """``[N, D]`` unit-norm embeddings of ``int32[N, L]`` tokenized texts (jit-compiled)."""
    return self.module.apply(variables, self.text, tokens, method="encode")

  def _class_embeddings(self, variables: Variables, prompts: jax.Array) -> jax.Array:
    """``[C, D]`` zero-shot classifier from ``int32[C, T, L]`` prompts (jit-compiled)."""
    classes, templates, length = prompts.shape
    embedded = self._embed_text(variables, prompts.reshape(classes * templates, length))
    return evaluation.class_embeddings(embedded.reshape(classes, templates, -1))

  def embed(self, variables: Variables, batches: Iterable[Batch]) -> dict[str, np.ndarray]:
    """The embeddings of both modalities (by modality name, under ``"embeddings"``), the second
    modality's inputs (``"inputs"``) and the labels (when the data has them) of every complete
    pair in `batches`, on the host.

    Works with batches sharded over several processes: every process gets the whole result.
    """
    first, second = self.modalities
    parts = []
    for batch in batches:
      fetched = distributed.to_host({
          "embeddings": self._embed(variables, batch), "inputs": batch[second],
          "present": {m: batch["present"][m] for m in self.modalities},
          **({"label": batch["label"]} if "label" in batch else {}),
      })
      # On the host: an eager `&` of device arrays would compile a program of its own.
      present = fetched.pop("present")
      keep = present[first] & present[second]
      parts.append(jax.tree.map(lambda value: value[keep], fetched))
    return jax.tree.map(lambda *values: np.concatenate(values), *parts)

  def _top1_accuracy(self, embeddings: jax.Array, classes: jax.Array, labels: jax.Array) -> jax.Array:
    return evaluation.zero_shot_accuracy(embeddings, classes, labels)

  def evaluate(self, variables: Variables, batches: Iterable[Batch]) -> dict[str, float]:
    """Retrieval in both directions and, with class prompts, zero-shot top-1 accuracy.

    Pairs whose second modality's inputs are identical (the same caption) embed identically, so
    they are interchangeable for retrieval: a query counts as answered when any pair with the same
    input ranks within K.
    """
    first, second = self.modalities
    embedded = self.embed(variables, batches)
    _, groups = np.unique(embedded["inputs"].reshape(len(embedded["inputs"]), -1), axis=0, return_inverse=True)
    embeddings = embedded["embeddings"]
    metrics = evaluation.retrieval_metrics(embeddings[first], embeddings[second], groups.reshape(-1), directions=self.directions)
    if self.class_prompts is not None and "label" in embedded:
      query = second if first == self.text else first
      classes = self.class_embeddings(variables, self.class_prompts)
      metrics["zeroshot_top1"] = float(
          self._zero_shot_accuracy(embeddings[query], distributed.to_host(classes), embedded["label"])
      )
    metrics["num_examples"] = int(len(embeddings[first]))
    return metrics


def config_schema(config) -> dict:
  """The ``model`` section's schema; each modality's encoder section follows its data kind."""
  kinds = {name: section.get("kind") for name, section in config.data.modalities.items()}
  encoders = config.model.get("encoders", {})
  return {
      "name": Field(str),
      "modalities": Field((tuple, list), items=str),
      "loss": Field(str, choices=LOSSES),
      "embed_dim": Field(int, low=1),
      "encoders": {m: encoder_configs.ENCODERS.section_schema(kinds.get(m), section) for m, section in encoders.items()},
      "init_log_scale": Field(float, nullable=True),
      "init_bias": Field(float, nullable=True),
      "max_scale": Field(float, low=1.0, nullable=True),
      "nt_xent_temperature": Field(float, low=1e-6),
      "loss_sharding": Field(str, choices=LOSS_SHARDINGS),
      "loss_chunk_size": Field(int, low=0),
      "dtype": Field(str, choices=tuple(encoder_configs.DTYPES)),
      "remat": Field(bool),
  }


def config_problems(config) -> list[str]:
  model = config.model
  problems = encoder_configs.modalities_problems(config, model.modalities, exactly=2)
  if model.loss == "nt_xent" and (model.loss_sharding != "global" or model.loss_chunk_size):
    problems.append(
        "model.loss: 'nt_xent' has no local or chunked form; use loss_sharding='global' and "
        "loss_chunk_size=0, or loss 'clip' or 'siglip'"
    )
  if config.train.accumulation_steps > 1 and encoder_configs.any_batch_statistics(model.encoders, model.modalities):
    problems.append(
        "train.accumulation_steps: a contrastive loss accumulates gradients exactly only without batch "
        "statistics (every micro-batch would see other statistics); use norm 'group' or accumulation_steps=1"
    )
  return problems


def _build(config, data, references) -> ContrastiveModel:
  del references  # nothing generated to judge
  text = next((m for m in config.modalities if data.spec.modalities[m].kind == "text"), None)
  return ContrastiveModel(config, data.spec, class_prompts=data.class_prompts(text) if text else None)


FAMILY = Family(
    build=_build, config_schema=config_schema, objectives=lambda config: ("contrastive",), config_problems=config_problems
)
