"""Decoders built from a ModalitySpec by name: every kind, and clear errors."""

import jax
import jax.numpy as jnp
import pytest

from mmjax.data.spec import KINDS, ModalitySpec
from mmjax.decoders import DECODERS, make_decoder

SPECS = {
    "image": ModalitySpec("image", (8, 8, 1)),
    "label": ModalitySpec("label", (), num_classes=7),
    "text": ModalitySpec("text", (5,), vocab_size=13),
    "vector": ModalitySpec("vector", (4,)),
    "audio": ModalitySpec("audio", (40,), sample_rate=8000),
}
OUTPUT_SHAPES = {"image": (8, 8, 1), "label": (7,), "text": (5, 13), "vector": (4,), "audio": (40,)}
SMALL = {
    ("image", "conv_transpose"): {"channels": (8, 8)},
    ("image", "mlp"): {"width": 8, "depth": 1},
    ("label", "mlp"): {"width": 8, "depth": 1},
    ("text", "transformer"): {"width": 8, "depth": 1, "num_heads": 2},
    ("vector", "mlp"): {"width": 8, "depth": 1},
    ("audio", "conv_transpose"): {"channels": (8, 8), "kernel_size": 8, "output_kernel_size": 3},
}


def test_every_data_kind_has_decoders():
  assert set(DECODERS) == set(KINDS)
  assert set(SMALL) == {(kind, name) for kind, names in DECODERS.items() for name in names}


@pytest.mark.parametrize("kind,name", sorted(SMALL))
def test_decoders_take_their_sizes_from_the_spec(kind, name):
  decoder = make_decoder(SPECS[kind], name, modality=f"my_{kind}", **SMALL[(kind, name)])
  assert isinstance(decoder, DECODERS[kind][name]) and decoder.modality == f"my_{kind}"
  out, _ = jax.eval_shape(decoder.init_with_output, jax.random.key(0), jnp.zeros((2, 3)))
  assert out.shape == (2, *OUTPUT_SHAPES[kind])


def test_modality_defaults_to_the_kind_and_options_pass_through():
  decoder = make_decoder(SPECS["label"], "mlp", width=32, dtype=jnp.bfloat16)
  assert (decoder.modality, decoder.width, decoder.dtype) == ("label", 32, jnp.bfloat16)


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: make_decoder(SPECS["text"], "gru", modality="caption"), r"unknown decoder 'gru' for modality 'caption' \(kind 'text'\); valid decoders: \['transformer'\]"),
        (lambda: make_decoder(SPECS["image"], "mlp", widht=8), r"modality 'image': unknown options \['widht'\] for MLPImageDecoder; valid options: \['activation', 'depth', 'dtype', 'norm', 'remat', 'width'\]"),
        (lambda: make_decoder(SPECS["text"], "transformer", vocab_size=3), r"modality 'text': \['vocab_size'\] come from the ModalitySpec"),
        (lambda: make_decoder(ModalitySpec("image", (8, 8)), "mlp"), r"modality 'image': a image modality needs a per-example shape of rank 3, got \(8, 8\)"),
        (lambda: make_decoder(ModalitySpec("vector", (2, 3)), "mlp", modality="features"), r"modality 'features': a vector modality needs a per-example shape of rank 1"),
    ],
)
def test_bad_requests_raise_clear_errors(call, message):
  with pytest.raises(ValueError, match=message):
    call()
