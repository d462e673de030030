"""The mmvae family on tiny mm_digits configs: training lowers its loss, the Generative API under jit,
training with missing modalities, and a short run compiles everything once."""

import pytest

from tests.models import vae_testing

FAMILY = "mmvae"


def test_training_lowers_the_loss(data_dir):
  vae_testing.check_training_lowers_the_loss(FAMILY, data_dir)


def test_generative_api_under_jit(data_dir):
  vae_testing.check_generative_api_under_jit(FAMILY, data_dir)


def test_training_with_missing_modalities(data_dir):
  vae_testing.check_missing_modalities(FAMILY, data_dir)


@pytest.mark.slow
def test_a_short_run_compiles_once(data_dir, tmp_path, monkeypatch):
  vae_testing.check_compiles_once(FAMILY, data_dir, str(tmp_path), monkeypatch)
