"""Encoders built from config sections, with the schemas those sections must follow."""

import jax.numpy as jnp

from mmjax.encoders import ConvEncoder, RecurrentTextEncoder, TransformerTextEncoder
from mmjax.encoders import layers, text
from mmjax.schema import ConfigError, Field

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

CONV_SCHEMA = {
    "channels": Field((tuple, list), items=int, low=1),
    "strides": Field((tuple, list), items=int, low=1),
    "kernel_size": Field(int, low=1),
    "norm": Field(str, choices=tuple(layers.NORMS)),
}
TRANSFORMER_SCHEMA = {
    "width": Field(int, low=1),
    "depth": Field(int, low=1),
    "num_heads": Field(int, low=1),
    "mlp_ratio": Field(int, low=1),
    "pooling": Field(str, choices=tuple(layers.POOLINGS)),
    "causal": Field(bool),
    "dropout_rate": Field(float, low=0.0, high=1.0),
}
# The section of a recurrent text encoder; the encoder's name ("gru", "lstm") selects the cell.
RECURRENT_SCHEMA = {
    "width": Field(int, low=1),
    "depth": Field(int, low=1),
    "bidirectional": Field(bool),
    "pooling": Field(str, choices=text.RECURRENT_POOLINGS),
    "dropout_rate": Field(float, low=0.0, high=1.0),
}
TEXT_ENCODERS = ("transformer", *text.CELLS)


def conv_encoder(config, features: int, dtype: str, remat: bool = False) -> ConvEncoder:
  """A `ConvEncoder` from a section following `CONV_SCHEMA`."""
  if len(config.channels) != len(config.strides):
    raise ConfigError(
        f"image encoder: channels {tuple(config.channels)} and strides {tuple(config.strides)} "
        "must have the same length."
    )
  return ConvEncoder(
      features=features,
      channels=tuple(config.channels),
      strides=tuple(config.strides),
      kernel_size=config.kernel_size,
      norm=config.norm,
      remat=remat,
      dtype=DTYPES[dtype],
  )


def text_encoder(config, features: int, vocab_size: int, max_length: int, dtype: str, remat: bool):
  """The text encoder named by ``config.text_encoder``, from its section of `config`."""
  if config.text_encoder == "transformer":
    section = config.transformer
    if section.width % section.num_heads:
      raise ConfigError(f"transformer: width {section.width} must be divisible by num_heads {section.num_heads}.")
    if section.causal and section.pooling == "first":
      raise ConfigError(
          "transformer: pooling 'first' with causal attention sees only the first token; use 'last' or 'mean'."
      )
    return TransformerTextEncoder(
        features=features,
        vocab_size=vocab_size,
        max_length=max_length,
        width=section.width,
        depth=section.depth,
        num_heads=section.num_heads,
        mlp_ratio=section.mlp_ratio,
        pooling=section.pooling,
        causal=section.causal,
        dropout_rate=section.dropout_rate,
        remat=remat,
        dtype=DTYPES[dtype],
    )
  if config.text_encoder in text.CELLS:
    section = config[config.text_encoder]
    return RecurrentTextEncoder(
        features=features,
        vocab_size=vocab_size,
        cell=config.text_encoder,
        width=section.width,
        depth=section.depth,
        bidirectional=section.bidirectional,
        pooling=section.pooling,
        dropout_rate=section.dropout_rate,
        remat=remat,
        dtype=DTYPES[dtype],
    )
  raise ConfigError(f"Unknown text encoder {config.text_encoder!r}; valid choices: {list(TEXT_ENCODERS)}.")
