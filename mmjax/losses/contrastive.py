"""Contrastive losses between paired embeddings of two modalities.

All losses take two ``[B, D]`` arrays whose row ``i`` describe the same sample in two modalities
(an image and its caption, two views of one image) and return a scalar. They are computed in
float32 whatever the input dtype, accept an optional per-sample ``mask`` (rows that are padding
take part neither as anchors nor as negatives), and are pure functions: use them under `jit`,
`grad` and `vmap` (over a leading axis of independent problems).

With an `axis_name`, ``clip_loss`` and ``siglip_loss`` run per device, under `jax.shard_map` or
`jax.pmap`, on the local rows of a batch split over that mesh axis (or tuple of axes), and return
the loss of the global batch on every device. Under `shard_map` with a replicated output
(``out_specs=P()``), `jax.grad` of the mapped function equals the gradient of the dense loss on
the global arrays. Under `pmap`, `jax.grad` inside the mapped function differentiates the sum of
the per-device outputs, that is P identical copies of the loss: averaging the gradients of
replicated parameters with `jax.lax.pmean`, the usual `pmap` recipe, gives the dense gradient.

``clip_loss`` and ``siglip_loss`` use dot products and expect L2-normalised embeddings, as the
dual-encoder models produce them; ``nt_xent_loss`` normalises its inputs itself, as its definition
(cosine similarity) says.
"""

import functools

import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.losses.blockwise import AxisName, sigmoid_pair_sum
from mmjax.numerics import l2_normalize

# CLIP initialises the learnable logit scale at 1/0.07 and clamps it at 100 (Radford et al. 2021);
# without the clamp the scale overflows and the loss becomes NaN.
DEFAULT_MAX_SCALE = 100.0


def _check_pair(fn: str, first, second, mask, names: tuple[str, str]) -> None:
  bound = checks.check_shape(f"{fn}: '{names[0]}' embeddings", first, ("B", "D"))
  checks.check_shape(f"{fn}: '{names[1]}' embeddings", second, ("B", "D"), bound)
  checks.check_dtype(f"{fn}: '{names[0]}' embeddings", first, "float")
  checks.check_dtype(f"{fn}: '{names[1]}' embeddings", second, "float")
  if mask is not None:
    checks.check_shape(f"{fn}: mask", mask, ("B",), bound)
    checks.check_dtype(f"{fn}: mask", mask, "bool")


def _check_scalar(fn: str, name: str, value) -> None:
  checks.check_shape(f"{fn}: {name}", value, ())


def clamped_scale(log_scale: jax.Array, max_scale: float | None) -> jax.Array:
  """Returns ``exp(log_scale)`` clamped at `max_scale` (no clamp when None).

  The clamp is applied to the logarithm, so above the clamp the gradient is zero and the
  learnable parameter stops growing instead of overflowing.

  >>> float(clamped_scale(jnp.log(1 / 0.07), 100.0))
  14.28...
  >>> float(clamped_scale(jnp.float32(10.0), 100.0))
  100.0...
  """
  log_scale = jnp.asarray(log_scale, jnp.float32)
  if max_scale is not None:
    log_scale = jnp.minimum(log_scale, jnp.log(jnp.float32(max_scale)))
  return jnp.exp(log_scale)


def _valid(mask, size: int) -> jax.Array:
  return jnp.ones((size,), jnp.bool_) if mask is None else mask


def _mean(total: jax.Array, count: jax.Array, axis_name: AxisName | None) -> jax.Array:
  """``total / count``, both first summed over the devices of `axis_name` when given."""
  if axis_name is not None:
    total, count = jax.lax.psum((total, count), axis_name)
  return total / jnp.maximum(count, 1)


def _masked_mean(values: jax.Array, valid: jax.Array, axis_name: AxisName | None = None) -> jax.Array:
  return _mean(jnp.sum(jnp.where(valid, values, 0.0)), jnp.sum(valid), axis_name)


def _exclude_columns(logits: jax.Array, keep: jax.Array) -> jax.Array:
  # A finite floor rather than -inf: a row whose columns are all excluded then stays finite
  # (and is masked out of the mean), so no NaN can leak into gradients.
  return jnp.where(keep, logits, jnp.finfo(logits.dtype).min)


def clip_loss(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    log_scale: jax.Array,
    *,
    max_scale: float | None = DEFAULT_MAX_SCALE,
    mask: jax.Array | None = None,
    axis_name: AxisName | None = None,
) -> jax.Array:
  """Symmetric InfoNCE loss of CLIP.

  With ``s = min(exp(log_scale), max_scale)`` and logits ``L = s · I Tᵀ``, the loss is the mean of
  the cross-entropy of each image against all texts and of each text against all images, the
  paired item being the target.

  Args:
    image_embeddings: ``[B, D]`` L2-normalised embeddings of the first modality.
    text_embeddings: ``[B, D]`` L2-normalised embeddings of the second modality; row ``i`` is the
      positive of ``image_embeddings[i]``.
    log_scale: scalar, the logarithm of the inverse temperature (learnable; CLIP initialises it at
      ``log(1 / 0.07)``).
    max_scale: clamp on ``exp(log_scale)`` (CLIP: 100); None disables the clamp.
    mask: optional ``bool[B]``; False rows are neither anchors nor negatives.
    axis_name: the mesh axis (or tuple of axes) the batch is split over, when called per device
      under `jax.shard_map` or `jax.pmap` with the local ``B`` rows. Each device gathers both
      modalities (gradients flow back through the gather) and scores only its own rows, in both
      directions, against the global batch: memory is O(local batch × global batch).

  Returns:
    The scalar loss (float32), averaged over the unmasked pairs (of the global batch, with
    `axis_name`).

  References:
    Radford et al., Learning Transferable Visual Models From Natural Language Supervision, 2021.
    van den Oord et al., Representation Learning with Contrastive Predictive Coding, 2018.
    Ilharco et al., OpenCLIP, 2021: ``--local-loss --gather-with-grad`` is the `axis_name` path.

  >>> emb = jnp.eye(3)
  >>> round(float(clip_loss(emb, emb, jnp.log(10.0))), 4)
  0.0001
  >>> round(float(clip_loss(emb, emb[::-1], jnp.log(10.0))), 4)
  6.6668

  Per device, over a mesh (here of the one device there is):

  >>> from jax.sharding import PartitionSpec as P
  >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  >>> local = functools.partial(clip_loss, axis_name="data")
  >>> mapped = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P()), out_specs=P())
  >>> round(float(mapped(emb, emb[::-1], jnp.log(10.0))), 4)
  6.6668
  """
  _check_pair("clip_loss", image_embeddings, text_embeddings, mask, ("image", "text"))
  _check_scalar("clip_loss", "log_scale", log_scale)
  valid = _valid(mask, image_embeddings.shape[0])
  scale = clamped_scale(log_scale, max_scale)
  if axis_name is not None:
    return _gathered_clip_loss(image_embeddings, text_embeddings, scale, valid, axis_name)
  # The scale goes into the product, not onto its result: XLA fuses a multiply of the result into
  # log_softmax's ``logit - max`` as one fused multiply-add that skips the product's rounding, so
  # at logits ≳ 1e4 the largest logit no longer equals its own maximum (see
  # `blockwise._scaled_logits`).
  logits = jnp.matmul(scale * image_embeddings.astype(jnp.float32), text_embeddings.astype(jnp.float32).T)
  image_to_text = -jnp.diagonal(jax.nn.log_softmax(_exclude_columns(logits, valid[None, :]), axis=1))
  text_to_image = -jnp.diagonal(jax.nn.log_softmax(_exclude_columns(logits, valid[:, None]), axis=0))
  return 0.5 * (_masked_mean(image_to_text, valid) + _masked_mean(text_to_image, valid))


def _gathered_clip_loss(image, text, scale, valid, axis_name: AxisName) -> jax.Array:
  size = image.shape[0]
  image, text = image.astype(jnp.float32), text.astype(jnp.float32)
  gather = functools.partial(jax.lax.all_gather, axis_name=axis_name, tiled=True)
  candidate_valid = gather(valid)
  targets = jax.lax.axis_index(axis_name) * size + jnp.arange(size)

  def cross_entropy(anchors: jax.Array, candidates: jax.Array) -> jax.Array:
    logits = _exclude_columns(jnp.matmul(scale * anchors, candidates.T), candidate_valid[None, :])
    log_probs = jax.nn.log_softmax(logits, axis=1)
    return -jnp.take_along_axis(log_probs, targets[:, None], axis=1)[:, 0]

  per_row = cross_entropy(image, gather(text)) + cross_entropy(text, gather(image))
  return 0.5 * _masked_mean(per_row, valid, axis_name)


def siglip_loss(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array,
    *,
    max_scale: float | None = DEFAULT_MAX_SCALE,
    mask: jax.Array | None = None,
    axis_name: AxisName | None = None,
) -> jax.Array:
  """Pairwise sigmoid loss of SigLIP.

  Every (image, text) pair is an independent binary problem with logit ``s · iᵀt + b``: positive on
  the diagonal, negative elsewhere. The summed log-loss is divided by the number of images.

  Args:
    image_embeddings: ``[B, D]`` L2-normalised embeddings of the first modality.
    text_embeddings: ``[B, D]`` L2-normalised embeddings of the second modality.
    log_scale: scalar logarithm of the logit scale (SigLIP initialises it at ``log 10``).
    bias: scalar logit bias (SigLIP initialises it at -10).
    max_scale: clamp on ``exp(log_scale)``; None disables it.
    mask: optional ``bool[B]``; False rows and columns are left out.
    axis_name: the mesh axis (or tuple of axes) the batch is split over, when called per device
      under `jax.shard_map` or `jax.pmap` with the local ``B`` rows. The text blocks then travel
      around a ring of devices (`jax.lax.ppermute`), each device scoring its images against one
      block at a time, forward and backward: memory is O(local batch²), whatever the number of
      devices.

  Returns:
    The scalar loss (float32), of the global batch with `axis_name`.

  References:
    Zhai et al., Sigmoid Loss for Language Image Pre-Training, 2023.

  >>> emb = jnp.eye(3)
  >>> round(float(siglip_loss(emb, emb, jnp.log(10.0), jnp.float32(-10.0))), 4)
  0.6932

  Per device, over a mesh (here of the one device there is):

  >>> from jax.sharding import PartitionSpec as P
  >>> mesh = jax.make_mesh((1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
  >>> local = functools.partial(siglip_loss, axis_name="data")
  >>> mapped = jax.shard_map(local, mesh=mesh, in_specs=(P("data"), P("data"), P(), P()), out_specs=P())
  >>> round(float(mapped(emb, emb, jnp.log(10.0), jnp.float32(-10.0))), 4)
  0.6932
  """
  _check_pair("siglip_loss", image_embeddings, text_embeddings, mask, ("image", "text"))
  _check_scalar("siglip_loss", "log_scale", log_scale)
  _check_scalar("siglip_loss", "bias", bias)
  size = image_embeddings.shape[0]
  valid = _valid(mask, size)
  if axis_name is not None:
    # One chunk per ring step: each step is the dense block of local images × visiting texts.
    scale = clamped_scale(log_scale, max_scale)
    return _blockwise_siglip_loss(image_embeddings, text_embeddings, scale, bias, valid, size, axis_name)
  logits = clamped_scale(log_scale, max_scale) * jnp.matmul(
      image_embeddings.astype(jnp.float32), text_embeddings.astype(jnp.float32).T
  ) + jnp.asarray(bias, jnp.float32)
  labels = 2.0 * jnp.eye(size, dtype=jnp.float32) - 1.0
  pair_loss = -jax.nn.log_sigmoid(labels * logits)
  pairs = valid[:, None] & valid[None, :]
  return jnp.sum(jnp.where(pairs, pair_loss, 0.0)) / jnp.maximum(jnp.sum(valid), 1)


def _blockwise_siglip_loss(image, text, scale, bias, valid, chunk_size: int, axis_name) -> jax.Array:
  """SigLIP through `blockwise.sigmoid_pair_sum`: rows in chunks, text blocks around a ring."""
  image, text, bias = image.astype(jnp.float32), text.astype(jnp.float32), jnp.asarray(bias, jnp.float32)
  total = sigmoid_pair_sum(image, text, scale, bias, valid, valid, chunk_size=chunk_size, axis_name=axis_name)
  return _mean(total, jnp.sum(valid), axis_name)


def nt_xent_loss(
    first_embeddings: jax.Array,
    second_embeddings: jax.Array,
    temperature: float | jax.Array = 0.1,
    *,
    mask: jax.Array | None = None,
) -> jax.Array:
  """NT-Xent (normalised temperature-scaled cross-entropy) of SimCLR.

  The ``2B`` embeddings of both views are L2-normalised and compared by cosine similarity divided
  by `temperature`. Each embedding's target is its partner in the other view; the other ``2B - 2``
  embeddings, from both views, are its negatives. The loss is averaged over all ``2B`` anchors.

  Args:
    first_embeddings: ``[B, D]`` embeddings of the first view or modality (any scale).
    second_embeddings: ``[B, D]`` embeddings of the second view; row ``i`` pairs with row ``i``.
    temperature: positive scalar (SimCLR: 0.1 to 0.5).
    mask: optional ``bool[B]``; False pairs are left out as anchors and as negatives.

  Returns:
    The scalar loss (float32).

  References:
    Chen et al., A Simple Framework for Contrastive Learning of Visual Representations, 2020.

  >>> emb = jnp.eye(2)
  >>> round(float(nt_xent_loss(emb, emb, 1.0)), 4)
  0.5514
  """
  _check_pair("nt_xent_loss", first_embeddings, second_embeddings, mask, ("first", "second"))
  _check_scalar("nt_xent_loss", "temperature", temperature)
  size = first_embeddings.shape[0]
  valid = jnp.tile(_valid(mask, size), 2)
  both = jnp.concatenate([first_embeddings, second_embeddings]).astype(jnp.float32)
  both = l2_normalize(both)
  logits = jnp.matmul(both, both.T) / jnp.asarray(temperature, jnp.float32)
  keep = valid[None, :] & ~jnp.eye(2 * size, dtype=jnp.bool_)
  log_probs = jax.nn.log_softmax(_exclude_columns(logits, keep), axis=1)
  partner = jnp.concatenate([jnp.arange(size, 2 * size), jnp.arange(size)])
  per_anchor = -jnp.take_along_axis(log_probs, partner[:, None], axis=1)[:, 0]
  return _masked_mean(per_anchor, valid)
