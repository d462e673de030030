"""Evaluators: pure functions from embeddings or model outputs to metrics."""

from mmjax.eval.retrieval import positive_ranks, retrieval_metrics
from mmjax.eval.zero_shot import class_embeddings, zero_shot_accuracy

__all__ = ["class_embeddings", "positive_ranks", "retrieval_metrics", "zero_shot_accuracy"]
