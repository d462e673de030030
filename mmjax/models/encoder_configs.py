"""Encoders chosen per modality by name in the config, with their options as data.

A model config holds one section per modality it encodes::

    encoders=dict(image=encoder_section("image", "conv", conv=dict(channels=(32, 64))),
                  text=encoder_section("text", "gru"))

A section is ``{"name": <chosen encoder>, <encoder>: {options}, …}`` with the options of every
encoder that fits the modality's kind, so ``--config.model.encoders.text.name=transformer``
switches encoders from the command line (`mmjax.models.choices`). `ENCODERS` is the table: the
kinds each encoder reads, its options with their defaults and schema, and how it is built from a
`mmjax.data.spec.ModalitySpec`: ``build(options, spec, modality, features, dtype, remat)``.
"""

from collections.abc import Mapping

import flax.linen as nn
import jax.numpy as jnp

from mmjax.data.spec import ModalitySpec
from mmjax.encoders import (
    ConvEncoder, LabelEncoder, LogMelCNN, MLPEncoder, RecurrentTextEncoder, ResNet, TransformerTextEncoder, ViT,
    WaveformConvEncoder,
)
from mmjax.encoders import audio, image, layers, resnet, vector, vit
from mmjax.models.choices import Choice, ChoiceTable, as_tuples
from mmjax.schema import Field

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _conv(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
  del spec
  return ConvEncoder(
      features=features, channels=tuple(options["channels"]), strides=tuple(options["strides"]),
      kernel_size=options["kernel_size"], norm=options["norm"], activation=options["activation"],
      pooling=options["pooling"], remat=remat, dtype=dtype, modality=modality,
  )


def _conv_problems(options) -> list[str]:
  if len(options["channels"]) != len(options["strides"]):
    return [f"channels {tuple(options['channels'])} and strides {tuple(options['strides'])} must have the same length"]
  return []


def _resnet(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
  del spec
  return ResNet(features=features, **as_tuples(options), modality=modality, remat=remat, dtype=dtype)


def _vit(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
  del spec
  return ViT(features=features, **options, modality=modality, remat=remat, dtype=dtype)


def _vit_problems(options) -> list[str]:
  if options["width"] % options["num_heads"]:
    return [f"width {options['width']} must be divisible by num_heads {options['num_heads']}"]
  return []


def _transformer(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
  return TransformerTextEncoder(
      features=features, vocab_size=spec.vocab_size, max_length=spec.shape[0], **options,
      modality=modality, remat=remat, dtype=dtype,
  )


def _transformer_problems(options) -> list[str]:
  problems = []
  if options["width"] % options["num_heads"]:
    problems.append(f"width {options['width']} must be divisible by num_heads {options['num_heads']}")
  if options["causal"] and options["pooling"] == "first":
    problems.append("pooling 'first' with causal attention sees only the first token; use 'last' or 'mean'")
  return problems


def _recurrent(cell: str):
  def build(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
    return RecurrentTextEncoder(
        features=features, vocab_size=spec.vocab_size, cell=cell, **options, modality=modality, remat=remat, dtype=dtype
    )

  return build


_RECURRENT_OPTIONS = {
    "width": (64, Field(int, low=1)),
    "depth": (1, Field(int, low=1)),
    "bidirectional": (False, Field(bool)),
    "pooling": ("last", Field(str, choices=("last", "mean"))),
    "dropout_rate": (0.0, Field(float, low=0.0, high=1.0)),
}


def _log_mel_cnn(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
  return LogMelCNN(features=features, sample_rate=spec.sample_rate, **as_tuples(options), modality=modality, remat=remat, dtype=dtype)


def _waveform_conv(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
  del spec
  return WaveformConvEncoder(features=features, **as_tuples(options), modality=modality, remat=remat, dtype=dtype)


def _mlp(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
  return MLPEncoder(features=features, **options, event_rank=len(spec.shape), modality=modality, remat=remat, dtype=dtype)


def _embedding(options, spec: ModalitySpec, modality: str, features: int, dtype, remat: bool) -> nn.Module:
  return LabelEncoder(features=features, num_classes=spec.num_classes, **options, modality=modality, remat=remat, dtype=dtype)


_MLP_OPTIONS = {
    "width": (256, Field(int, low=1)),
    "depth": (2, Field(int, low=0)),
    "activation": ("gelu", Field(str, choices=tuple(vector.ACTIVATIONS))),
    "norm": ("layer", Field(str, choices=tuple(layers.NORMS))),
    "dropout_rate": (0.0, Field(float, low=0.0, high=1.0)),
}

ENCODERS = ChoiceTable({
    "conv": Choice(
        kinds=("image",),
        options={
            "channels": ((32, 64, 128), Field((tuple, list), items=int, low=1)),
            "strides": ((1, 2, 2), Field((tuple, list), items=int, low=1)),
            "kernel_size": (3, Field(int, low=1)),
            "norm": ("layer", Field(str, choices=tuple(layers.NORMS))),
            "activation": ("gelu", Field(str, choices=tuple(vector.ACTIVATIONS))),
            "pooling": ("mean", Field(str, choices=image.CONV_POOLINGS)),
        },
        build=_conv,
        problems=_conv_problems,
    ),
    "resnet": Choice(
        kinds=("image",),
        options={
            "stage_sizes": ((2, 2, 2, 2), Field((tuple, list), items=int, low=1)),
            "block": ("basic", Field(str, choices=tuple(resnet.BLOCKS))),
            "width": (64, Field(int, low=1)),
            "stem": ("small", Field(str, choices=tuple(resnet.STEMS))),
            "norm": ("batch", Field(str, choices=resnet.RESNET_NORMS)),
            "zero_init_residual": (True, Field(bool)),
        },
        build=_resnet,
        stateful=lambda options: options["norm"] == "batch",
    ),
    "vit": Choice(
        kinds=("image",),
        options={
            "patch_size": (4, Field(int, low=1)),
            "width": (192, Field(int, low=1)),
            "depth": (6, Field(int, low=1)),
            "num_heads": (3, Field(int, low=1)),
            "mlp_ratio": (4, Field(int, low=1)),
            "pooling": ("gap", Field(str, choices=vit.POOLINGS)),
            "positions": ("sincos2d", Field(str, choices=vit.POSITIONS)),
            "dropout_rate": (0.0, Field(float, low=0.0, high=1.0)),
        },
        build=_vit,
        problems=_vit_problems,
    ),
    "transformer": Choice(
        kinds=("text",),
        options={
            "width": (64, Field(int, low=1)),
            "depth": (2, Field(int, low=1)),
            "num_heads": (4, Field(int, low=1)),
            "mlp_ratio": (4, Field(int, low=1)),
            "pooling": ("mean", Field(str, choices=tuple(layers.POOLINGS))),
            "dropout_rate": (0.0, Field(float, low=0.0, high=1.0)),
            "causal": (False, Field(bool)),
        },
        build=_transformer,
        problems=_transformer_problems,
    ),
    # The name picks the recurrent cell; both read options of the same shape.
    "gru": Choice(kinds=("text",), options=_RECURRENT_OPTIONS, build=_recurrent("gru")),
    "lstm": Choice(kinds=("text",), options=_RECURRENT_OPTIONS, build=_recurrent("lstm")),
    "log_mel_cnn": Choice(
        kinds=("audio",),
        options={
            "n_fft": (400, Field(int, low=2)),
            "hop_length": (160, Field(int, low=1)),
            "n_mels": (64, Field(int, low=1)),
            "f_min": (0.0, Field(float, low=0.0)),
            "f_max": (None, Field(float, low=0.0, nullable=True)),
            "mel_scale": ("htk", Field(str, choices=audio.MEL_SCALES)),
            "normalization": ("utterance", Field(str, choices=audio.NORMALIZATIONS)),
            "mean": (0.0, Field(float)),
            "std": (1.0, Field(float, low=0.0)),
            "channels": ((32, 64, 128), Field((tuple, list), items=int, low=1)),
            "strides": ((2, 2, 2), Field((tuple, list), items=int, low=1)),
            "kernel_size": (3, Field(int, low=1)),
            "norm": ("layer", Field(str, choices=tuple(layers.NORMS))),
        },
        build=_log_mel_cnn,
        problems=_conv_problems,
    ),
    "waveform_conv": Choice(
        kinds=("audio",),
        options={
            "channels": ((128, 128, 256, 512), Field((tuple, list), items=int, low=1)),
            "strides": ((4, 4, 4, 4), Field((tuple, list), items=int, low=1)),
            "first_kernel_size": (80, Field(int, low=1)),
            "kernel_size": (9, Field(int, low=1)),
            "norm": ("layer", Field(str, choices=tuple(layers.NORMS))),
        },
        build=_waveform_conv,
        problems=_conv_problems,
    ),
    # Vectors, and images flattened (the MVAE / MMVAE MNIST encoders).
    "mlp": Choice(kinds=("vector", "image"), options=_MLP_OPTIONS, build=_mlp),
    "embedding": Choice(
        kinds=("label",), options={**_MLP_OPTIONS, "width": (64, Field(int, low=1)), "depth": (0, Field(int, low=0))}, build=_embedding
    ),
})


def encoder_section(kind: str, name: str, **overrides: Mapping) -> dict:
  """A modality's encoder section: `name` chosen, every encoder of `kind` with its defaults,
  updated by ``overrides[encoder] = {option: value}``.

  >>> section = encoder_section("text", "gru", gru=dict(width=32))
  >>> section["name"], section["gru"]["width"], sorted(section)
  ('gru', 32, ['gru', 'lstm', 'name', 'transformer'])
  """
  return ENCODERS.section(kind, name, **overrides)


def build_encoder(section: Mapping, spec: ModalitySpec, modality: str, features: int, dtype: str, remat: bool) -> nn.Module:
  """The encoder a modality's section chooses, built for `spec`."""
  return ENCODERS.build(section, spec, modality, features, DTYPES[dtype], remat)


def any_batch_statistics(encoders: Mapping, modalities) -> bool:
  """Whether any of the chosen encoders of `modalities` keeps batch statistics."""
  return any(ENCODERS.stateful(encoders[m]) for m in modalities)


def modalities_problems(config, modalities, exactly: int | None = None) -> list[str]:
  """Problems of a model's ``modalities`` and ``encoders`` against the data: every modality the
  model reads exists in the data and has an encoder section that is consistent.

  Args:
    config: the whole config.
    modalities: the modalities the model reads.
    exactly: the number of modalities the model needs, if fixed.
  """
  data = sorted(config.data.modalities)
  problems = []
  if exactly is not None and len(modalities) != exactly:
    problems.append(f"model.modalities: the model reads exactly {exactly} modalities, got {list(modalities)}")
  if len(set(modalities)) != len(modalities):
    problems.append(f"model.modalities: {list(modalities)} names a modality twice")
  for m in modalities:
    if m not in config.data.modalities:
      problems.append(f"model.modalities: {m!r} is not a modality of the data; data modalities: {data}")
    elif m not in config.model.encoders:
      problems.append(f"model.encoders: no encoder section for modality {m!r}")
    else:
      problems.extend(ENCODERS.section_problems(f"model.encoders.{m}", config.model.encoders[m]))
  for m in config.model.encoders:
    if m not in config.data.modalities:
      problems.append(f"model.encoders.{m}: {m!r} is not a modality of the data; data modalities: {data}")
  return problems
