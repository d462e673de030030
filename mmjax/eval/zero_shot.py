"""Zero-shot classification from class prompts (CLIP protocol)."""

import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.numerics import l2_normalize


def class_embeddings(prompt_embeddings: jax.Array) -> jax.Array:
  """One unit vector per class from the embeddings of its prompts.

  Each prompt embedding is normalised, the prompts of a class are averaged (prompt ensembling)
  and the mean is normalised again.

  Args:
    prompt_embeddings: ``[C, T, D]``: class ``c``, template ``t``.

  Returns:
    ``[C, D]`` unit vectors.
  """
  checks.check_shape("class_embeddings: prompt_embeddings", prompt_embeddings, (None, None, None))
  return l2_normalize(jnp.mean(l2_normalize(prompt_embeddings), axis=1))


def zero_shot_accuracy(
    image_embeddings: jax.Array,
    classes: jax.Array,
    labels: jax.Array,
    k: int = 1,
    mask: jax.Array | None = None,
) -> jax.Array:
  """Fraction of images whose label is among the `k` classes of highest cosine similarity.

  Args:
    image_embeddings: ``[N, D]`` image embeddings.
    classes: ``[C, D]`` class embeddings (see `class_embeddings`).
    labels: ``int[N]`` true classes.
    k: top-k.
    mask: optional ``bool[N]``; False rows are not counted.

  Returns:
    A float32 scalar in [0, 1].

  >>> zero_shot_accuracy(jnp.eye(3), jnp.eye(3), jnp.array([0, 1, 1])).item()
  0.666...
  """
  bound = checks.check_shape("zero_shot_accuracy: image_embeddings", image_embeddings, ("N", "D"))
  bound = checks.check_shape("zero_shot_accuracy: classes", classes, ("C", "D"), bound)
  checks.check_shape("zero_shot_accuracy: labels", labels, ("N",), bound)
  scores = l2_normalize(image_embeddings.astype(jnp.float32)) @ classes.astype(jnp.float32).T
  _, top = jax.lax.top_k(scores, k)
  correct = jnp.any(top == labels[:, None], axis=1)
  valid = jnp.ones_like(correct) if mask is None else mask
  return jnp.sum(correct & valid) / jnp.maximum(jnp.sum(valid), 1)
