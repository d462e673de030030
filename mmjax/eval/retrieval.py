"""Cross-modal retrieval: ranks and Recall@K in both directions.

Item ``i`` of one modality is paired with item ``i`` of the other. Several items may share a
*group* (identical captions, several captions of one image): a retrieved item counts as correct
when it belongs to the query's group, as COCO evaluation counts any of an image's five captions.
With the default groups (all distinct) this is the usual one-to-one protocol.
"""

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import checks

DEFAULT_KS = (1, 5, 10)


def positive_ranks(
    queries: jax.Array,
    candidates: jax.Array,
    query_groups: jax.Array,
    candidate_groups: jax.Array,
    *,
    chunk_size: int = 1024,
) -> jax.Array:
  """0-based rank of the best-scoring correct candidate for every query.

  Scores are dot products; the rank is the number of candidates scoring strictly higher than the
  best correct one (ties resolve in the query's favour, so identical duplicates of the correct item
  do not count against it). Queries are processed `chunk_size` at a time, so memory is
  O(chunk_size · N) rather than O(N²).

  Args:
    queries: ``[Nq, D]`` embeddings.
    candidates: ``[Nc, D]`` embeddings.
    query_groups: ``int[Nq]`` group of each query.
    candidate_groups: ``int[Nc]`` group of each candidate.
    chunk_size: queries scored at once.

  Returns:
    ``int32[Nq]`` ranks; ``Nc`` for a query with no correct candidate.

  >>> ranks = positive_ranks(jnp.eye(3), jnp.eye(3)[::-1], jnp.arange(3), jnp.arange(3))
  >>> ranks.tolist()
  [1, 0, 1]
  """
  bound = checks.check_shape("positive_ranks: queries", queries, ("Nq", "D"))
  bound = checks.check_shape("positive_ranks: candidates", candidates, ("Nc", "D"), bound)
  bound = checks.check_shape("positive_ranks: query_groups", query_groups, ("Nq",), bound)
  checks.check_shape("positive_ranks: candidate_groups", candidate_groups, ("Nc",), bound)
  candidates = candidates.astype(jnp.float32)

  def rank(query_and_group):
    query, group = query_and_group
    scores = candidates @ query.astype(jnp.float32)
    correct = candidate_groups == group
    best = jnp.max(jnp.where(correct, scores, -jnp.inf))
    return jnp.where(jnp.any(correct), jnp.sum(scores > best), candidates.shape[0]).astype(jnp.int32)

  return jax.lax.map(rank, (queries, query_groups), batch_size=chunk_size)


# `retrieval_metrics` runs on the host: compiling the ranking as one program spares it a
# compilation per jnp operation on its first call.
_compiled_positive_ranks = jax.jit(positive_ranks, static_argnames="chunk_size")


def retrieval_metrics(
    image_embeddings: jax.Array,
    text_embeddings: jax.Array,
    groups: jax.Array | None = None,
    ks: tuple[int, ...] = DEFAULT_KS,
    directions: tuple[str, str] = ("i2t", "t2i"),
) -> dict[str, float]:
  """Recall@K and mean/median rank for image→text and text→image retrieval (or between any two
  modalities: the first plays the image's part, the second the text's).

  Args:
    image_embeddings: ``[N, D]``; image ``i`` is paired with text ``i``.
    text_embeddings: ``[N, D]``.
    groups: optional ``int[N]``: pairs with the same group are interchangeable (for example,
      identical captions). None means every pair is its own group.
    ks: the K of Recall@K.
    directions: the names of the two directions in the metric keys.

  Returns:
    ``{"i2t_r1": …, "i2t_r5": …, "i2t_r10": …, "t2i_r1": …, …, "i2t_mean_rank": …,
    "i2t_median_rank": …, "t2i_mean_rank": …, "t2i_median_rank": …}`` with 1-based ranks.

  >>> m = retrieval_metrics(jnp.eye(4), jnp.eye(4), ks=(1,))
  >>> m["i2t_r1"], m["t2i_r1"], m["i2t_median_rank"]
  (1.0, 1.0, 1.0)
  """
  checks.check_shape("retrieval_metrics: image_embeddings", image_embeddings, ("N", None))
  if groups is None:
    groups = jnp.arange(image_embeddings.shape[0])
  metrics = {}
  for direction, queries, candidates in (
      (directions[0], image_embeddings, text_embeddings),
      (directions[1], text_embeddings, image_embeddings),
  ):
    ranks = np.asarray(_compiled_positive_ranks(queries, candidates, groups, groups))
    for k in ks:
      metrics[f"{direction}_r{k}"] = float(np.mean(ranks < k))
    metrics[f"{direction}_mean_rank"] = float(np.mean(ranks + 1))
    metrics[f"{direction}_median_rank"] = float(np.median(ranks + 1))
  return metrics
