"""A VAE run through the trainer resumes bit for bit: its KL warm-up counts the steps of the
state, and its sampling keys come from the step, so losing everything after a checkpoint changes
nothing."""

import json
import shutil

import jax
import numpy as np
import pytest

from mmjax import experiment
from mmjax.losses.elbo import kl_warmup
from tests.models.vae_testing import tiny_config

pytestmark = pytest.mark.slow


def _state(workdir):
  return jax.device_get(experiment.restore(str(workdir))[2])


def test_mvae_resumes_its_kl_schedule_and_randomness_bitwise(data_dir, tmp_path):
  # The warm-up spans the interruption at step 4; evaluation only at the end.
  config = tiny_config("mvae", data_dir, num_steps=8, log_every=1, eval_every=8, checkpoint_every=4)
  config.model.kl_warmup_steps = 6
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  final = experiment.train(config, str(straight))
  shutil.copytree(straight, interrupted)
  shutil.rmtree(interrupted / "checkpoints" / "8")
  (interrupted / "eval.json").unlink()
  assert experiment.train(config, str(interrupted)) == final
  for a, b in zip(jax.tree.leaves(_state(straight)), jax.tree.leaves(_state(interrupted)), strict=True):
    np.testing.assert_array_equal(a, b)

  def betas(workdir):
    with open(workdir / "metrics.jsonl", encoding="utf-8") as f:
      return {record["step"]: record["beta"] for record in map(json.loads, f) if "beta" in record}

  resumed = betas(interrupted)
  assert resumed == betas(straight)
  # The logged weight of step s is the warm-up's at update s − 1 (counted from 0).
  np.testing.assert_allclose([resumed[s] for s in range(1, 9)], [float(kl_warmup(s - 1, 6)) for s in range(1, 9)], rtol=1e-6)
