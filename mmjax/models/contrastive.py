"""Contrastive image–text dual encoders (CLIP, SigLIP, or NT-Xent objective).

The model family behind ``configs/clip_digits.py``: an image encoder and a text encoder trained
so that paired embeddings score higher than unpaired ones; evaluated by zero-shot classification
from class prompts and by retrieval in both directions.
"""

import functools
import math
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from mmjax import checks, eval as evaluation, losses
from mmjax.data.input_pipeline import DataSpec
from mmjax.models import encoder_configs
from mmjax.models.base import Batch, Objective, Variables
from mmjax.models.dual_encoder import DualEncoder
from mmjax.parallel import distributed, mesh as mesh_lib
from mmjax.schema import ConfigError, Field

MODALITIES = ("image", "text")
LOSSES = ("clip", "siglip", "nt_xent")
# "global": the loss of the global arrays, laid out by XLA; "local": every device computes its own
# rows (gather / ring exchange under shard_map), memory linear in the local batch.
LOSS_SHARDINGS = ("global", "local")
# Initial logit scale and bias when the config leaves them unset, as the papers set them.
DEFAULT_INIT = {"clip": (math.log(1 / 0.07), None), "siglip": (math.log(10.0), -10.0), "nt_xent": (0.0, None)}

CONFIG_SCHEMA = {
    "name": Field(str),
    "loss": Field(str, choices=LOSSES),
    "embed_dim": Field(int, low=1),
    "image_encoder": encoder_configs.CONV_SCHEMA,
    "text_encoder": Field(str, choices=encoder_configs.TEXT_ENCODERS),
    "transformer": encoder_configs.TRANSFORMER_SCHEMA,
    "gru": encoder_configs.RECURRENT_SCHEMA,
    "lstm": encoder_configs.RECURRENT_SCHEMA,
    "init_log_scale": Field(float, nullable=True),
    "init_bias": Field(float, nullable=True),
    "max_scale": Field(float, low=1.0, nullable=True),
    "nt_xent_temperature": Field(float, low=1e-6),
    "loss_sharding": Field(str, choices=LOSS_SHARDINGS),
    "loss_chunk_size": Field(int, low=0),
    "dtype": Field(str, choices=tuple(encoder_configs.DTYPES)),
    "remat": Field(bool),
}


class ContrastiveModel:
  """A dual encoder trained with a contrastive loss; honours `mmjax.models.base.Model`.

  Args:
    config: the ``model`` config section (see `CONFIG_SCHEMA`).
    spec: the dataset's modalities and vocabulary.
    class_prompts: ``int32[C, T, L]`` tokenized prompts for zero-shot evaluation, or None to skip
      zero-shot classification.
  """

  def __init__(self, config, spec: DataSpec, class_prompts: np.ndarray | None = None):
    checks.check_modalities(spec.modalities, MODALITIES, "ContrastiveModel data")
    if config.loss not in LOSSES:
      raise ConfigError(f"Unknown loss {config.loss!r}; valid choices: {list(LOSSES)}.")
    if config.loss == "nt_xent" and (config.loss_sharding != "global" or config.loss_chunk_size):
      raise ConfigError(
          "model.loss 'nt_xent' has no local or chunked form; use loss_sharding='global' and "
          "loss_chunk_size=0, or loss 'clip' or 'siglip'."
      )
    self.config = config
    self.class_prompts = class_prompts
    init_log_scale, init_bias = DEFAULT_INIT[config.loss]
    text_length = spec.modalities["text"].shape[0]
    self.module = DualEncoder(
        encoders={
            "image": encoder_configs.conv_encoder(config.image_encoder, config.embed_dim, config.dtype, config.remat),
            "text": encoder_configs.text_encoder(
                config, config.embed_dim, spec.vocab_size, text_length, config.dtype, config.remat
            ),
        },
        input_shapes={m: tuple(spec.modalities[m].shape) for m in MODALITIES},
        init_log_scale=init_log_scale if config.init_log_scale is None else config.init_log_scale,
        init_bias=(init_bias if config.init_bias is None else config.init_bias) if config.loss == "siglip" else None,
    )
    self.objectives = (
        Objective("contrastive", self.loss, embed=self.embed_for_loss, embedding_loss=self.embedding_loss),
    )
    self._embed = jax.jit(self._embed_batch)
    self.embed_text = jax.jit(self._embed_text)
    self.class_embeddings = jax.jit(self._class_embeddings)

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    return dict(self.module.init(rng, {m: batch[m] for m in MODALITIES}))

  def pair_loss(self, params, embeddings: dict[str, jax.Array], mask: jax.Array) -> jax.Array:
    """The configured contrastive loss of paired embeddings.

    With ``loss_sharding="local"`` and a mesh set (the trainer sets it), every device computes the
    loss rows of its own samples (`jax.shard_map` over the batch axes): CLIP gathers the other
    devices' embeddings, SigLIP passes them around a ring; the value and gradients are those of
    the global loss. ``loss_chunk_size > 0`` bounds the logits held at once to that many rows.
    """
    image, text = embeddings["image"], embeddings["text"]
    if self.config.loss == "nt_xent":
      return losses.nt_xent_loss(image, text, self.config.nt_xent_temperature, mask=mask)
    scalars = (params["log_scale"], params.get("bias", jnp.zeros((), jnp.float32)))
    mesh = jax.sharding.get_abstract_mesh()
    if self.config.loss_sharding == "global" or mesh.empty:
      return self._scored_loss(image, text, mask, *scalars, axis_name=None)
    rows = P(mesh_lib.BATCH_AXES)
    per_device = jax.shard_map(
        functools.partial(self._scored_loss, axis_name=mesh_lib.BATCH_AXES),
        in_specs=(rows, rows, rows, P(), P()),
        out_specs=P(),
    )
    return per_device(image, text, mask, *scalars)

  def _scored_loss(self, image, text, mask, log_scale, bias, *, axis_name) -> jax.Array:
    options = {"max_scale": self.config.max_scale, "mask": mask, "axis_name": axis_name}
    if self.config.loss_chunk_size:
      options["chunk_size"] = self.config.loss_chunk_size
      if self.config.loss == "clip":
        return losses.chunked_clip_loss(image, text, log_scale, **options)
      return losses.chunked_siglip_loss(image, text, log_scale, bias, **options)
    if self.config.loss == "clip":
      return losses.clip_loss(image, text, log_scale, **options)
    return losses.siglip_loss(image, text, log_scale, bias, **options)

  def embed_for_loss(self, params, model_state, batch, rng) -> dict[str, jax.Array]:
    """Training-mode embeddings of both modalities (the first half of `loss`)."""
    del model_state  # the dual encoder has no mutable collections
    checks.check_modalities(batch, MODALITIES, "ContrastiveModel batch")
    return self.module.apply(
        {"params": params}, {m: batch[m] for m in MODALITIES}, train=True, rngs={"dropout": rng}
    )

  def embedding_loss(self, params, embeddings: dict[str, jax.Array], batch) -> tuple[jax.Array, dict]:
    """The contrastive loss and metrics of a batch from its embeddings (the second half of `loss`)."""
    mask = batch["present"]["image"] & batch["present"]["text"]
    loss = self.pair_loss(params, embeddings, mask)
    similarity = embeddings["image"] @ embeddings["text"].T
    target = jnp.arange(similarity.shape[0])
    count = jnp.maximum(jnp.sum(mask), 1)
    metrics = {
        "logit_scale": losses.clamped_scale(params["log_scale"], self.config.max_scale),
        "i2t_batch_accuracy": jnp.sum((jnp.argmax(similarity, 1) == target) & mask) / count,
        "t2i_batch_accuracy": jnp.sum((jnp.argmax(similarity, 0) == target) & mask) / count,
    }
    return loss, metrics

  def loss(self, params, model_state, batch, rng, step):
    del step  # no schedule inside the loss
    embeddings = self.embed_for_loss(params, model_state, batch, rng)
    loss, metrics = self.embedding_loss(params, embeddings, batch)
    return loss, (metrics, model_state)

  def _embed_batch(self, variables: Variables, batch: Batch) -> dict[str, jax.Array]:
    return self.module.apply(variables, {m: batch[m] for m in MODALITIES})

  def _embed_text(self, variables: Variables, tokens: jax.Array) -> jax.Array:
    """``[N, D]`` unit-norm embeddings of ``int32[N, L]`` tokenized texts (jit-compiled)."""
    return self.module.apply(variables, "text", tokens, method="encode")

  def _class_embeddings(self, variables: Variables, prompts: jax.Array) -> jax.Array:
    """``[C, D]`` zero-shot classifier from ``int32[C, T, L]`` prompts (jit-compiled)."""
    classes, templates, length = prompts.shape
    embedded = self._embed_text(variables, prompts.reshape(classes * templates, length))
    return evaluation.class_embeddings(embedded.reshape(classes, templates, -1))

  def embed(self, variables: Variables, batches: Iterable[Batch]) -> dict[str, np.ndarray]:
    """Embeddings, labels and tokens of every present example of `batches`, on the host.

    Works with batches sharded over several processes: every process gets the whole result.
    """
    parts = []
    for batch in batches:
      embeddings = self._embed(variables, batch)
      fetched = distributed.to_host({
          "image": embeddings["image"], "text": embeddings["text"], "label": batch["label"], "tokens": batch["text"],
          "keep": batch["present"]["image"] & batch["present"]["text"],
      })
      keep = fetched.pop("keep")
      parts.append({key: value[keep] for key, value in fetched.items()})
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}

  def evaluate(self, variables: Variables, batches: Iterable[Batch]) -> dict[str, float]:
    """Zero-shot top-1 accuracy from the class prompts, and retrieval in both directions.

    Identical captions are interchangeable for retrieval (they embed identically), so a query
    counts as answered when any pair with the same caption ranks within K.
    """
    embedded = self.embed(variables, batches)
    _, caption_groups = np.unique(embedded["tokens"], axis=0, return_inverse=True)
    metrics = evaluation.retrieval_metrics(embedded["image"], embedded["text"], caption_groups.reshape(-1))
    if self.class_prompts is not None:
      classes = self.class_embeddings(variables, self.class_prompts)
      metrics["zeroshot_top1"] = float(
          evaluation.zero_shot_accuracy(embedded["image"], distributed.to_host(classes), embedded["label"])
      )
    metrics["num_examples"] = int(len(embedded["label"]))
    return metrics
