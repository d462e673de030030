"""CLIP and SigLIP losses computed in chunks of rows: exact, in O(B · chunk) memory.

``chunked_clip_loss`` and ``chunked_siglip_loss`` take the arguments of ``clip_loss`` and
``siglip_loss`` and return the same value with the same gradients (w.r.t. both embeddings, the
scale and the bias), but never hold the ``[B, B]`` logits matrix: the forward pass scores one
chunk of images against all texts at a time, and the backward pass (a `jax.custom_vjp`)
recomputes each chunk's logits from the inputs and, for the softmax, the row and column
log-sum-exps saved by the forward pass. Each cross-entropy is ``shifted log-sum-exp + (maximum -
positive logit)``, the maximum and the positive read from the same logits, so the value agrees
with ``clip_loss`` at any finite scale (even logits ~1e8). `B` need not be a multiple of `chunk_size`.

With `axis_name` they run per device, under `jax.shard_map` or `jax.pmap`, on the local rows of a
batch split over that axis, and return the loss of the global batch (see `mmjax.losses.contrastive`
for what the gradients are under each):

* CLIP gathers the texts (gradients flow back through the gather), computes the log-sum-exps of
  its image rows and its partial column log-sum-exps in chunks, and combines the column ones
  across devices (`jax.lax.pmax` and `jax.lax.psum_scatter`, O(B) numbers): with the gradients,
  four matrix products of ``local × global`` per device, where ``clip_loss`` with `axis_name`
  (both modalities gathered, autodiff) costs six.
* SigLIP passes the text blocks around a ring of devices, each ring step itself chunked.
"""

import jax
import jax.numpy as jnp

from mmjax.losses.blockwise import AxisName, row_column_cross_entropies
from mmjax.losses.contrastive import (
    DEFAULT_MAX_SCALE,
    _blockwise_siglip_loss,
    _check_pair,
    _check_scalar,
    _masked_mean,
    _valid,
    clamped_scale,
)

# Rows per chunk. At B = 65,536 and D = 256 a loss-and-gradients step then needs 705 MiB (CLIP)
# and 577 MiB (SigLIP) in all by XLA's memory analysis, against 1,089 and 833 MiB with 1024 rows;
# benchmarks/contrastive_memory.py compares chunk sizes (docs/scaling.md).
DEFAULT_CHUNK_SIZE = 512


def chunked_clip_loss(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    log_scale: jax.Array,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_scale: float | None = DEFAULT_MAX_SCALE,
    mask: jax.Array | None = None,
    axis_name: AxisName | None = None,
) -> jax.Array:
  """``clip_loss`` in O(B · chunk_size) memory, with the same value and gradients.

  Args:
    image_embeddings: ``[B, D]`` L2-normalised embeddings of the first modality.
    text_embeddings: ``[B, D]`` L2-normalised embeddings of the second modality; row ``i`` is the
      positive of ``image_embeddings[i]``.
    log_scale: scalar, the logarithm of the inverse temperature.
    chunk_size: rows of the logits computed at a time; any positive size (B need not be a
      multiple of it).
    max_scale: clamp on ``exp(log_scale)``; None disables the clamp.
    mask: optional ``bool[B]``; False rows are neither anchors nor negatives.
    axis_name: the mesh axis (or tuple of axes) the batch is split over, when called per device
      with the local rows; the loss is then that of the global batch, and memory per device
      O(global batch · chunk_size).

  Returns:
    The scalar loss (float32), averaged over the unmasked pairs.

  References:
    Radford et al., Learning Transferable Visual Models From Natural Language Supervision, 2021.
    Milakov and Gimelshein, Online normalizer calculation for softmax, 2018 (the running
    log-sum-exp of the column direction).

  >>> from mmjax.losses.contrastive import clip_loss
  >>> emb = jax.random.normal(jax.random.key(0), (37, 8))
  >>> emb = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
  >>> dense = clip_loss(emb, emb[::-1], jnp.log(10.0))
  >>> chunked = chunked_clip_loss(emb, emb[::-1], jnp.log(10.0), chunk_size=8)
  >>> bool(jnp.allclose(dense, chunked))
  True
  """
  _check_pair("chunked_clip_loss", image_embeddings, text_embeddings, mask, ("image", "text"))
  _check_scalar("chunked_clip_loss", "log_scale", log_scale)
  valid = _valid(mask, image_embeddings.shape[0])
  scale = clamped_scale(log_scale, max_scale)
  image, text = image_embeddings.astype(jnp.float32), text_embeddings.astype(jnp.float32)
  if axis_name is None:
    row_shifted, row_shift, positive, column_shifted, column_shift = row_column_cross_entropies(
        image, text, scale, valid, valid, chunk_size=chunk_size
    )
  else:
    size = image.shape[0]
    texts = jax.lax.all_gather(text, axis_name, tiled=True)
    text_valid = jax.lax.all_gather(valid, axis_name, tiled=True)
    offset = jax.lax.axis_index(axis_name) * size
    row_shifted, row_shift, positive, column_part, column_part_shift = row_column_cross_entropies(
        image, texts, scale, valid, text_valid, chunk_size=chunk_size, offset=offset
    )
    column_shifted, column_shift = _own_columns(column_part, column_part_shift, offset, axis_name)
  # (shift - positive) before adding the shifted log-sum-exp: both come from the same logits, so a
  # positive that is the largest logit cancels exactly, at any scale, as in the dense loss.
  cross_entropies = (row_shifted + (row_shift - positive)) + (column_shifted + (column_shift - positive))
  return 0.5 * _masked_mean(cross_entropies, valid, axis_name)


def _own_columns(
    shifted: jax.Array, shift: jax.Array, offset: jax.Array, axis_name: AxisName
) -> tuple[jax.Array, jax.Array]:
  """Combines every device's partial column log-sum-exps (``shift + shifted``, ``[global B]``).

  Returns the shifted log-sum-exp over all devices' rows and its shift (the global maximum), for
  this device's own (local) columns only.
  """
  # The shifts cancel out, so they need no gradient (and pmax has none).
  global_shift = jax.lax.pmax(jax.lax.stop_gradient(shift), axis_name)
  summed = jax.lax.psum_scatter(jnp.exp(shifted + (shift - global_shift)), axis_name, tiled=True)
  own_shift = jax.lax.dynamic_slice_in_dim(global_shift, offset, summed.shape[0])
  return jnp.log(summed), own_shift


def chunked_siglip_loss(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    log_scale: jax.Array,
    bias: jax.Array,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_scale: float | None = DEFAULT_MAX_SCALE,
    mask: jax.Array | None = None,
    axis_name: AxisName | None = None,
) -> jax.Array:
  """``siglip_loss`` in O(B · chunk_size) memory, with the same value and gradients.

  Args:
    image_embeddings: ``[B, D]`` L2-normalised embeddings of the first modality.
    text_embeddings: ``[B, D]`` L2-normalised embeddings of the second modality.
    log_scale: scalar logarithm of the logit scale.
    bias: scalar logit bias.
    chunk_size: rows of the logits computed at a time; any positive size.
    max_scale: clamp on ``exp(log_scale)``; None disables it.
    mask: optional ``bool[B]``; False rows and columns are left out.
    axis_name: the mesh axis (or tuple of axes) the batch is split over, when called per device
      with the local rows: the text blocks then travel around a ring of devices, and memory per
      device is O(local batch · chunk_size).

  Returns:
    The scalar loss (float32).

  References:
    Zhai et al., Sigmoid Loss for Language Image Pre-Training, 2023 (section 3.3, and the
    chunked implementation of big_vision).

  >>> from mmjax.losses.contrastive import siglip_loss
  >>> emb = jax.random.normal(jax.random.key(0), (37, 8))
  >>> emb = emb / jnp.linalg.norm(emb, axis=1, keepdims=True)
  >>> dense = siglip_loss(emb, emb[::-1], jnp.log(10.0), jnp.float32(-10.0))
  >>> chunked = chunked_siglip_loss(emb, emb[::-1], jnp.log(10.0), jnp.float32(-10.0), chunk_size=8)
  >>> bool(jnp.allclose(dense, chunked))
  True
  """
  _check_pair("chunked_siglip_loss", image_embeddings, text_embeddings, mask, ("image", "text"))
  _check_scalar("chunked_siglip_loss", "log_scale", log_scale)
  _check_scalar("chunked_siglip_loss", "bias", bias)
  valid = _valid(mask, image_embeddings.shape[0])
  scale = clamped_scale(log_scale, max_scale)
  return _blockwise_siglip_loss(image_embeddings, text_embeddings, scale, bias, valid, chunk_size, axis_name)
