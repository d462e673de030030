"""Losses as pure functions (optax style): one module per family."""

from mmjax.losses.chunked import chunked_clip_loss, chunked_siglip_loss
from mmjax.losses.contrastive import clamped_scale, clip_loss, nt_xent_loss, siglip_loss
from mmjax.losses.soft_dtw import pairwise_squared_distances, soft_dtw_alignment, soft_dtw_cost

__all__ = [
    "chunked_clip_loss",
    "chunked_siglip_loss",
    "clamped_scale",
    "clip_loss",
    "nt_xent_loss",
    "pairwise_squared_distances",
    "siglip_loss",
    "soft_dtw_alignment",
    "soft_dtw_cost",
]
