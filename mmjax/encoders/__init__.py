"""Modality encoders: linen modules mapping one modality to a feature vector per sample."""

from mmjax.encoders.image import ConvEncoder
from mmjax.encoders.text import RecurrentTextEncoder, TransformerTextEncoder
from mmjax.encoders.transformer import TransformerBlock

__all__ = ["ConvEncoder", "RecurrentTextEncoder", "TransformerBlock", "TransformerTextEncoder"]
