"""Encoders built from config sections: the name selects the encoder (and the recurrent cell), the
section of that name reaches it, and impossible combinations fail as config errors."""

import jax
import jax.numpy as jnp
import pytest

from configs import clip_digits
from mmjax import experiment
from mmjax.data.spec import ModalitySpec
from mmjax.encoders import RecurrentTextEncoder, TransformerTextEncoder
from mmjax.models import encoder_configs
from mmjax.schema import ConfigError

TEXT = ModalitySpec("text", (6,), vocab_size=20)


def _build(section):
  return encoder_configs.build_encoder(section, TEXT, "caption", features=8, dtype="bfloat16", remat=True)


@pytest.mark.parametrize("name,other", [("gru", "lstm"), ("lstm", "gru")])
def test_recurrent_name_selects_the_cell_and_reads_its_own_section(name, other):
  config = clip_digits.get_config()
  section = config.model.encoders.text
  section.name = name
  section[name].update(dict(width=12, depth=2, bidirectional=True, pooling="mean", dropout_rate=0.25))
  section[other].width = 20
  experiment.validate_config(config)
  encoder = _build(section)
  assert isinstance(encoder, RecurrentTextEncoder)
  assert (encoder.cell, encoder.width, encoder.depth, encoder.bidirectional) == (name, 12, 2, True)
  assert (encoder.pooling, encoder.dropout_rate, encoder.remat, encoder.dtype) == ("mean", 0.25, True, jnp.bfloat16)
  assert encoder.modality == "caption"


def test_transformer_section_reaches_the_encoder():
  config = clip_digits.get_config()
  config.model.encoders.text.name = "transformer"
  config.model.encoders.text.transformer.update(dict(causal=True, pooling="last"))
  experiment.validate_config(config)
  encoder = _build(config.model.encoders.text)
  assert isinstance(encoder, TransformerTextEncoder)
  assert (encoder.causal, encoder.pooling, encoder.max_length, encoder.remat) == (True, "last", 6, True)


def test_bad_sections_fail_as_config_errors():
  config = clip_digits.get_config()
  config.model.encoders.text.name = "transformer"
  config.model.encoders.text.transformer.update(dict(causal=True, pooling="first"))
  with pytest.raises(ConfigError, match=r"model.encoders.text.transformer: pooling 'first' with causal attention sees only the first"):
    experiment.validate_config(config)
  config.model.encoders.text.lstm.pooling = "first"
  with pytest.raises(ConfigError, match=r"model.encoders.text.lstm.pooling: 'first' is not a valid choice; valid choices: \['last', 'mean'\]"):
    experiment.validate_config(config)


@pytest.mark.parametrize("kind,spec,inputs", [
    ("image", ModalitySpec("image", (8, 8, 1)), jnp.zeros((2, 8, 8, 1))),
    ("text", TEXT, jnp.ones((2, 6), jnp.int32)),
    ("audio", ModalitySpec("audio", (800,), sample_rate=8000), jnp.zeros((2, 800))),
    ("vector", ModalitySpec("vector", (5,)), jnp.zeros((2, 5))),
    ("label", ModalitySpec("label", (), num_classes=3), jnp.zeros((2,), jnp.int32)),
])
def test_every_encoder_of_every_kind_builds_from_its_default_section(kind, spec, inputs):
  for name in encoder_configs.ENCODERS.names_for(kind):
    section = encoder_configs.encoder_section(kind, name)
    if name == "log_mel_cnn":
      section[name].update(n_fft=128, hop_length=64)
    encoder = encoder_configs.build_encoder(section, spec, kind, features=8, dtype="float32", remat=False)
    variables = encoder.init(jax.random.key(0), inputs)
    assert encoder.apply(variables, inputs).shape == (2, 8), name
    assert encoder.apply(variables, inputs, return_tokens=True).tokens.shape[-1] == 8, name
