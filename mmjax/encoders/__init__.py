"""Modality encoders: linen modules mapping one modality to a feature vector per sample."""

from mmjax.encoders.image import ConvEncoder
from mmjax.encoders.resnet import ResNet, standard_resnet
from mmjax.encoders.text import GRUTextEncoder, TransformerTextEncoder
from mmjax.encoders.transformer import TransformerBlock
from mmjax.encoders.vit import MAPHead, ViT, standard_vit

__all__ = [
    "ConvEncoder",
    "GRUTextEncoder",
    "MAPHead",
    "ResNet",
    "TransformerBlock",
    "TransformerTextEncoder",
    "ViT",
    "standard_resnet",
    "standard_vit",
]
