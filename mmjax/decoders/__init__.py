"""Modality decoders: linen modules mapping a latent ``[B, Z]`` to the parameters of one modality's
likelihood (see `mmjax.decoders.base` for the contract; `make_decoder` builds them from a spec)."""

from mmjax.decoders.audio import ConvTransposeAudioDecoder
from mmjax.decoders.image import ConvTransposeImageDecoder, MLPImageDecoder
from mmjax.decoders.label import MLPLabelDecoder
from mmjax.decoders.registry import DECODERS, make_decoder
from mmjax.decoders.text import TransformerTextDecoder
from mmjax.decoders.vector import MLPVectorDecoder

__all__ = [
    "ConvTransposeAudioDecoder",
    "ConvTransposeImageDecoder",
    "DECODERS",
    "MLPImageDecoder",
    "MLPLabelDecoder",
    "MLPVectorDecoder",
    "TransformerTextDecoder",
    "make_decoder",
]
