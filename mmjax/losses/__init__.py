"""Losses as pure functions (optax style): one module per family."""

from mmjax.losses.contrastive import clamped_scale, clip_loss, nt_xent_loss, siglip_loss

__all__ = ["clamped_scale", "clip_loss", "nt_xent_loss", "siglip_loss"]
