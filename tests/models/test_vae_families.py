"""The VAE families (mvae, mmvae, mopoe) on tiny mm_digits configs: training lowers the loss, the
Generative API under jit, training with missing modalities, and a short run compiles everything once.
The checks themselves are in `tests/models/vae_testing.py`."""

import pytest

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


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_a_short_run_compiles_once(family, data_dir, tmp_path, monkeypatch):
  vae_testing.check_compiles_once(family, data_dir, str(tmp_path), monkeypatch)
