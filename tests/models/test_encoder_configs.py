"""Encoders built from config sections: the name selects the encoder (and the recurrent cell), the
section of that name reaches it, and impossible combinations fail as config errors."""

import jax.numpy as jnp
import pytest

from configs import clip_digits
from mmjax import experiment
from mmjax.encoders import RecurrentTextEncoder, TransformerTextEncoder
from mmjax.models import encoder_configs
from mmjax.schema import ConfigError


def _build(model):
  return encoder_configs.text_encoder(model, features=8, vocab_size=20, max_length=6, dtype="bfloat16", remat=True)


@pytest.mark.parametrize("name,other", [("gru", "lstm"), ("lstm", "gru")])
def test_recurrent_name_selects_the_cell_and_reads_its_own_section(name, other):
  config = clip_digits.get_config()
  config.model.text_encoder = name
  config.model[name].update(dict(width=12, depth=2, bidirectional=True, pooling="mean", dropout_rate=0.25))
  config.model[other].width = 20
  experiment.validate_config(config)
  encoder = _build(config.model)
  assert isinstance(encoder, RecurrentTextEncoder)
  assert (encoder.cell, encoder.width, encoder.depth, encoder.bidirectional) == (name, 12, 2, True)
  assert (encoder.pooling, encoder.dropout_rate, encoder.remat, encoder.dtype) == ("mean", 0.25, True, jnp.bfloat16)


def test_transformer_section_reaches_the_encoder():
  config = clip_digits.get_config()
  config.model.text_encoder = "transformer"
  config.model.transformer.update(dict(causal=True, pooling="last"))
  experiment.validate_config(config)
  encoder = _build(config.model)
  assert isinstance(encoder, TransformerTextEncoder)
  assert (encoder.causal, encoder.pooling, encoder.max_length, encoder.remat) == (True, "last", 6, True)


def test_bad_sections_fail_as_config_errors():
  config = clip_digits.get_config()
  config.model.text_encoder = "transformer"
  config.model.transformer.update(dict(causal=True, pooling="first"))
  with pytest.raises(ConfigError, match=r"transformer: pooling 'first' with causal attention sees only the first"):
    _build(config.model)
  config.model.lstm.pooling = "first"
  expected = r"model.lstm.pooling: 'first' is not a valid choice; valid choices: \['last', 'mean'\]"
  with pytest.raises(ConfigError, match=expected):
    experiment.validate_config(config)
