"""The mmae family on tiny mm_digits configs: training lowers its loss (with each correlation
loss), the Generative API under jit, the loss against a hand computation, missing modalities
change nothing, a caption and (on mm_shapes) audio among the modalities, config problems, and a
short run compiles everything once."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import experiment
from mmjax.losses.correlation import cosine_alignment_loss
from mmjax.models import mmae
from tests.models import vae_testing

FAMILY = "mmae"


@pytest.mark.parametrize("correlation", ["cosine", "cca"])
def test_training_lowers_the_loss(data_dir, correlation):
  model, batch, variables = vae_testing.build(FAMILY, data_dir, correlation=correlation)
  values = vae_testing.losses_while_training(model, batch, variables, steps=30)
  assert np.all(np.isfinite(values))
  assert np.mean(values[-5:]) < np.mean(values[:5]) - 0.2 * abs(np.mean(values[:5])), values


def test_loss_against_a_hand_computation(data_dir):
  model, batch, variables = vae_testing.build(FAMILY, data_dir, correlation="cosine", correlation_weight=0.5)
  params = variables["params"]
  inputs, present = model.inputs(batch)
  embeddings = model.embeddings(params, inputs)
  # The mean fusion by hand: the mean of the present embeddings, through its projection.
  expected = 0.0
  for members in [present, present & jnp.array([[True], [False]]), present & jnp.array([[False], [True]])]:
    outputs = model.decode(params, model.fuse(params, embeddings, members))
    log_p = np.asarray(model.log_likelihoods(params, outputs, inputs))
    weights = np.array([model.weights[m] for m in model.modalities])[:, None]
    per_sample = np.sum(np.where(present, weights * log_p, 0.0), axis=0)
    expected = expected - np.where(np.asarray(members).any(0), per_sample, 0.0)
  expected = expected.mean() + 0.5 * float(cosine_alignment_loss(embeddings[0], embeddings[1]))
  loss, (metrics, _) = jax.jit(model.loss)(params, {}, batch, jax.random.key(0), 0)
  np.testing.assert_allclose(float(loss), expected, rtol=1e-5)
  assert set(metrics) == {"reconstruction_loss", "correlation_loss"}


def test_generative_api_under_jit(data_dir):
  model, batch, variables = vae_testing.build(FAMILY, data_dir)
  key = jax.random.key(2)
  reconstruction = jax.jit(model.reconstruct)(variables, batch, key)
  assert reconstruction["image"].shape == batch["image"].shape and reconstruction["image"].dtype == jnp.float32
  assert reconstruction["label"].shape == batch["label"].shape and reconstruction["label"].dtype == jnp.int32
  label_only = {**batch, "present": {"image": jnp.zeros_like(batch["present"]["image"]), "label": batch["present"]["label"]}}
  cross_generate = jax.jit(model.cross_generate, static_argnames="target")
  image = cross_generate(variables, label_only, target="image", rng=key)
  assert image.shape == batch["image"].shape and 0.0 <= float(image.min()) <= float(image.max()) <= 1.0
  # From the label alone: the image's values, however wild, change nothing; the label's do.
  garbage = {**label_only, "image": jnp.full_like(batch["image"], 7.0)}
  np.testing.assert_array_equal(image, cross_generate(variables, garbage, target="image", rng=key))
  other_label = {**label_only, "label": (batch["label"] + 1) % 10}
  assert not np.allclose(image, cross_generate(variables, other_label, target="image", rng=key))
  with pytest.raises(ValueError, match="no prior"):
    model.sample(variables, 5, key)
  with pytest.raises(ValueError, match="'text' is not one of"):
    model.cross_generate(variables, batch, "text", key)


def test_training_with_missing_modalities(data_dir):
  vae_testing.check_missing_modalities(FAMILY, data_dir)


def test_a_caption_modality(data_dir):
  vae_testing.check_text_and_audio(FAMILY, vae_testing.tiny_config(FAMILY, data_dir, modalities=("image", "label", "caption")))


@pytest.mark.slow
def test_audio_and_caption_modalities(shapes_dir):
  vae_testing.check_text_and_audio(FAMILY, vae_testing.tiny_shapes_config(FAMILY, shapes_dir))


def test_config_problems_name_the_valid_fusions(data_dir):
  config = vae_testing.tiny_config(FAMILY, data_dir)
  config.model.fusion = "late"
  problems = mmae.config_problems(config)
  assert any("'late' does not" in p and "'mean'" in p for p in problems), problems
  config.model.fusion = "gated"
  assert mmae.config_problems(config) == []
  config.model.correlation = "pearson"
  with pytest.raises(ValueError, match="cca"):
    experiment.validate_config(config)


@pytest.mark.slow
def test_a_short_run_compiles_once(data_dir, tmp_path, monkeypatch):
  vae_testing.check_compiles_once(FAMILY, data_dir, str(tmp_path), monkeypatch)
