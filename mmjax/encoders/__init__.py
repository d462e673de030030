"""Modality encoders: linen modules mapping one modality to a feature vector per sample."""

from mmjax.encoders.audio import LogMelCNN, WaveformConvEncoder, log_mel_spectrogram, mel_filterbank
from mmjax.encoders.image import ConvEncoder
from mmjax.encoders.text import RecurrentTextEncoder, TransformerTextEncoder
from mmjax.encoders.transformer import TransformerBlock
from mmjax.encoders.vector import LabelEncoder, MLPEncoder

__all__ = [
    "ConvEncoder",
    "LabelEncoder",
    "LogMelCNN",
    "MLPEncoder",
    "RecurrentTextEncoder",
    "TransformerBlock",
    "TransformerTextEncoder",
    "WaveformConvEncoder",
    "log_mel_spectrogram",
    "mel_filterbank",
]
