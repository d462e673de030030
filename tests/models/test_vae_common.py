"""What the VAE families share for every modality kind: text and audio log-likelihoods against
NumPy by hand (under jit and vmap), their generations in the data's representation, and config
validation of their likelihoods. (The families training with them: test_vae_families.py, test_mmae.py.)"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import experiment
from mmjax.data.spec import KINDS
from mmjax.decoders.registry import DECODERS
from mmjax.models import vae_common
from mmjax.models.vae_common import likelihood_section
from mmjax.schema import ConfigError
from tests.models import vae_testing


def _log_softmax(logits: np.ndarray) -> np.ndarray:
  shifted = logits - logits.max(-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def _jit_and_vmap(section, outputs, targets, log_scale):
  """The log-likelihoods of a batch under jit, and of each row alone under vmap."""
  batched = jax.jit(lambda o, t, s: vae_common.log_likelihood(section, o, t, s))(outputs, targets, log_scale)
  rows = jax.vmap(lambda o, t: vae_common.log_likelihood(section, o[None], t[None], log_scale)[0])(outputs, targets)
  return np.asarray(batched), np.asarray(rows)


def test_text_log_likelihood_sums_every_position_pads_included():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 7)).astype(np.float32)
  tokens = np.array([[1, 4, 2, 0, 0], [1, 6, 5, 3, 2], [1, 2, 0, 0, 0]], np.int32)  # BOS … EOS, then PAD = 0
  log_probs = _log_softmax(logits.astype(np.float64))
  expected = np.array([sum(log_probs[b, l, tokens[b, l]] for l in range(5)) for b in range(3)])
  for values in _jit_and_vmap(likelihood_section("categorical"), jnp.asarray(logits), jnp.asarray(tokens), 0.0):
    np.testing.assert_allclose(values, expected, rtol=1e-5)
  # The pads count: a decoder sure of PAD after the end scores higher than one that is not.
  sure = logits.copy()
  sure[0, 3:, 0] += 10.0
  gain = vae_common.log_likelihood(likelihood_section("categorical"), jnp.asarray(sure), jnp.asarray(tokens), 0.0) - expected
  assert float(gain[0]) > 1.0 and np.allclose(gain[1:], 0.0, atol=1e-5)


@pytest.mark.parametrize("name", ["gaussian", "laplace"])
def test_audio_log_likelihood_by_hand(name):
  rng = np.random.default_rng(1)
  outputs = rng.normal(size=(4, 50)).astype(np.float32)
  waveforms = np.clip(rng.normal(scale=0.3, size=(4, 50)), -1, 1).astype(np.float32)
  scale = 0.1
  if name == "gaussian":
    per_sample = -0.5 * ((waveforms - outputs) / scale) ** 2 - math.log(scale) - 0.5 * math.log(2 * math.pi)
  else:
    per_sample = -np.abs(waveforms - outputs) / scale - math.log(2 * scale)
  expected = per_sample.astype(np.float64).sum(1)
  section = likelihood_section(name, scale=scale)
  for values in _jit_and_vmap(section, jnp.asarray(outputs), jnp.asarray(waveforms), jnp.float32(math.log(scale))):
    np.testing.assert_allclose(values, expected, rtol=1e-5)


def test_generations_are_token_ids_and_waveform_means():
  logits = jnp.asarray(np.random.default_rng(2).normal(size=(2, 4, 6)), jnp.float32)
  tokens = vae_common.mean_value(likelihood_section("categorical"), logits)
  assert tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, np.argmax(np.asarray(logits), -1))
  waveform = jnp.linspace(-2.0, 2.0, 8)[None]
  np.testing.assert_array_equal(vae_common.mean_value(likelihood_section("gaussian"), waveform), waveform)


def test_every_modality_kind_has_likelihoods_and_decoders():
  assert set(vae_common.LIKELIHOODS) == set(KINDS) == set(DECODERS)


@pytest.mark.parametrize("family", sorted(vae_testing.CONFIGS))
def test_configs_accept_text_and_audio(family, data_dir):
  experiment.validate_config(vae_testing.tiny_config(family, data_dir, modalities=("image", "label", "caption")))
  experiment.validate_config(vae_testing.tiny_shapes_config(family, data_dir))  # validation reads no data


def test_configs_reject_an_unknown_kind_and_a_likelihood_of_another_kind(data_dir):
  config = vae_testing.tiny_config("mvae", data_dir, modalities=("image", "label", "caption"))
  config.data.modalities.caption.kind = "video"
  with pytest.raises(ConfigError, match=r"caption.kind: 'video' is not a valid choice; valid choices: \['audio', 'image', 'label', 'text', 'vector'\]"):
    experiment.validate_config(config)
  config = vae_testing.tiny_shapes_config("mvae", data_dir)
  config.model.likelihoods.audio.name = "bernoulli"
  config.model.likelihoods.caption.name = "gaussian"
  with pytest.raises(ConfigError) as error:
    experiment.validate_config(config)
  assert "model.likelihoods.audio.name: 'bernoulli' is not a valid choice; valid choices: ['gaussian', 'laplace']" in str(error.value)
  assert "model.likelihoods.caption.name: 'gaussian' is not a valid choice; valid choices: ['categorical']" in str(error.value)


def test_the_caption_config_reads_three_modalities_with_every_section():
  from configs import mvae_digits_caption

  config = mvae_digits_caption.get_config()
  experiment.validate_config(config)
  assert tuple(config.model.modalities) == ("image", "label", "caption")
  assert config.model.decoders.caption.name == "transformer" and config.model.likelihoods.caption.name == "categorical"
  assert config.model.reference_classifiers.encoders.caption.name == "gru"
