"""Retrieval ranks and recalls against a brute-force NumPy reference."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import eval as evaluation


def reference_ranks(queries, candidates, query_groups, candidate_groups):
  ranks = []
  for query, group in zip(queries, query_groups):
    scores = candidates @ query
    best = max(scores[j] for j in range(len(candidates)) if candidate_groups[j] == group)
    ranks.append(int(np.sum(scores > best)))
  return np.array(ranks)


@pytest.mark.parametrize("chunk_size", [1, 7, 1024])
def test_ranks_match_brute_force(chunk_size):
  rng = np.random.default_rng(0)
  queries, candidates = rng.normal(size=(40, 6)), rng.normal(size=(40, 6))
  groups = rng.integers(0, 25, size=40)
  got = evaluation.positive_ranks(
      jnp.asarray(queries, jnp.float32), jnp.asarray(candidates, jnp.float32), jnp.asarray(groups), jnp.asarray(groups),
      chunk_size=chunk_size,
  )
  np.testing.assert_array_equal(got, reference_ranks(queries, candidates, groups, groups))


def test_ranks_under_jit_and_vmap():
  rng = np.random.default_rng(1)
  queries, candidates = rng.normal(size=(3, 10, 4)).astype(np.float32), rng.normal(size=(3, 10, 4)).astype(np.float32)
  groups = jnp.arange(10)
  got = jax.jit(jax.vmap(lambda q, c: evaluation.positive_ranks(q, c, groups, groups)))(queries, candidates)
  for i in range(3):
    np.testing.assert_array_equal(got[i], reference_ranks(queries[i], candidates[i], np.arange(10), np.arange(10)))


def test_recall_and_rank_summaries():
  rng = np.random.default_rng(2)
  images, texts = rng.normal(size=(30, 5)), rng.normal(size=(30, 5))
  metrics = evaluation.retrieval_metrics(jnp.asarray(images, jnp.float32), jnp.asarray(texts, jnp.float32))
  i2t = reference_ranks(images, texts, np.arange(30), np.arange(30))
  t2i = reference_ranks(texts, images, np.arange(30), np.arange(30))
  for k in (1, 5, 10):
    assert metrics[f"i2t_r{k}"] == pytest.approx(np.mean(i2t < k))
    assert metrics[f"t2i_r{k}"] == pytest.approx(np.mean(t2i < k))
  assert metrics["i2t_median_rank"] == np.median(i2t + 1)
  assert metrics["t2i_mean_rank"] == pytest.approx(np.mean(t2i + 1))


def test_identical_captions_count_as_correct():
  # Texts 0 and 1 are the same caption; image 0 retrieves text 1 first: still a hit with groups.
  images = jnp.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
  texts = jnp.array([[0.9, 0.1], [0.95, 0.0], [-1.0, 0.0]])
  assert evaluation.retrieval_metrics(images, texts, ks=(1,))["i2t_r1"] == pytest.approx(1 / 3)
  grouped = evaluation.retrieval_metrics(images, texts, groups=jnp.array([0, 0, 1]), ks=(1,))
  assert grouped["i2t_r1"] == pytest.approx(1.0)


def test_shape_errors_name_the_argument():
  with pytest.raises(ValueError, match=r"candidates: expected shape \(Nc, D\) with D=4, got \(3, 5\)"):
    evaluation.positive_ranks(jnp.zeros((2, 4)), jnp.zeros((3, 5)), jnp.zeros(2, int), jnp.zeros(3, int))
