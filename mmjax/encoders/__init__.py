"""Modality encoders: linen modules mapping one modality to a feature vector per sample.

Every encoder follows the contract of `mmjax.encoders.base`: pooled ``[B, features]`` by default,
and with ``return_tokens=True`` also its per-position features and their validity mask.
"""

from mmjax.encoders.audio import LogMelCNN, WaveformConvEncoder, log_mel_spectrogram, mel_filterbank
from mmjax.encoders.image import ConvEncoder
from mmjax.encoders.resnet import ResNet, standard_resnet
from mmjax.encoders.text import RecurrentTextEncoder, TransformerTextEncoder
from mmjax.encoders.transformer import TransformerBlock
from mmjax.encoders.vector import LabelEncoder, MLPEncoder
from mmjax.encoders.vit import MAPHead, ViT, standard_vit

__all__ = [
    "ConvEncoder",
    "LabelEncoder",
    "LogMelCNN",
    "MAPHead",
    "MLPEncoder",
    "RecurrentTextEncoder",
    "ResNet",
    "TransformerBlock",
    "TransformerTextEncoder",
    "ViT",
    "WaveformConvEncoder",
    "log_mel_spectrogram",
    "mel_filterbank",
    "standard_resnet",
    "standard_vit",
]
