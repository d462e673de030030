"""The VAE families (mvae, mmvae, mopoe) on tiny mm_digits configs: training lowers the loss, the
Generative API under jit, training with missing modalities, a caption and (on mm_shapes) audio
among the modalities, the evaluation with text and audio judges, and a short run compiles
everything once. The checks themselves are in `tests/models/vae_testing.py`."""

import jax
import numpy as np
import pytest

from mmjax import experiment

from tests.models import vae_testing

FAMILIES = ("mvae", "mmvae", "mopoe")


@pytest.mark.parametrize("family", FAMILIES)
def test_training_lowers_the_loss(family, data_dir):
  vae_testing.check_training_lowers_the_loss(family, data_dir)


@pytest.mark.parametrize("family", FAMILIES)
def test_generative_api_under_jit(family, data_dir):
  vae_testing.check_generative_api_under_jit(family, data_dir)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_with_missing_modalities(family, data_dir):
  vae_testing.check_missing_modalities(family, data_dir)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_caption_modality(family, data_dir):
  vae_testing.check_text_and_audio(family, vae_testing.tiny_config(family, data_dir, modalities=("image", "label", "caption")))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_audio_and_caption_modalities(family, shapes_dir):
  vae_testing.check_text_and_audio(family, vae_testing.tiny_shapes_config(family, shapes_dir))


@pytest.mark.slow
def test_evaluation_judges_text_and_audio(shapes_dir):
  """Every direction between image, audio and caption is judged by a classifier of its target kind;
  grids show the image modality only."""
  run = experiment.build(vae_testing.tiny_shapes_config("mvae", shapes_dir))
  batch = next(iter(run.data.eval_batches(128)))
  variables = jax.jit(run.model.init)(jax.random.key(0), batch)
  metrics = run.model.evaluate(variables, [batch])
  modalities = ("audio", "caption", "image")
  for source in modalities:
    assert 0.0 <= metrics[f"classifier_accuracy/{source}"] <= 1.0
    for target in set(modalities) - {source}:
      assert 0.0 <= metrics[f"coherence/{source}->{target}"] <= 1.0
  assert 0.0 <= metrics["coherence/joint"] <= 1.0 and np.isfinite(metrics["log_likelihood"])
  assert 0.0 <= metrics["reconstruction_error/caption"] <= 1.0 and np.isfinite(metrics["reconstruction_error/audio"])
  grids = {key for key in metrics if key.startswith("images/")}
  assert grids == {"images/reconstruction/image", "images/audio->image", "images/caption->image", "images/prior/image"}


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_short_run_compiles_once(family, data_dir, tmp_path, monkeypatch):
  vae_testing.check_compiles_once(family, data_dir, str(tmp_path), monkeypatch)
