"""Mutable model state through the trainer: a ResNet with BatchNorm trains its running statistics,
evaluates with them, checkpoints them, and resumes and repeats runs bitwise."""

import shutil

import jax
import numpy as np
import pytest

from configs import fusion_shapes
from mmjax import experiment
from mmjax.data.input_pipeline import modality
from mmjax.models.encoder_configs import encoder_section

pytestmark = pytest.mark.slow


def resnet_digits(data_dir, **train):
  """A ResNet (BatchNorm) classifier of mm_digits images."""
  config = fusion_shapes.get_config()
  config.data.update(name="mm_digits", data_dir=data_dir, batch_size=32)
  config.data.modalities = dict(image=modality("image", "image"))  # replaces (update would merge)
  config.model.update(modalities=("image",), features=16, fusion="mean")
  config.model.encoders = dict(
      image=encoder_section("image", "resnet", resnet=dict(stage_sizes=(1, 1), width=8, norm="batch"))
  )
  config.optimizer.warmup_steps = 2
  config.train.update(dict(num_steps=8, log_every=2, eval_every=None, checkpoint_every=4, eval_batch_size=128, progress_bar=False))
  config.train.update(train)
  return config


def _state(workdir):
  return jax.device_get(experiment.restore(workdir)[2])


def _assert_bitwise_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_batch_statistics_train_checkpoint_resume_and_repeat_bitwise(data_dir, tmp_path):
  config = resnet_digits(data_dir)
  straight, interrupted, again = tmp_path / "straight", tmp_path / "interrupted", tmp_path / "again"
  final = experiment.train(config, str(straight))
  trained = _state(straight)
  assert "batch_stats" in trained.model_state
  # The running statistics moved away from their initial values (mean 0, variance 1).
  means = [leaf for path, leaf in jax.tree_util.tree_leaves_with_path(trained.model_state) if "mean" in str(path)]
  assert means and all(np.abs(mean).max() > 0 for mean in means)

  # Lose everything after checkpoint 4 and start again: the same statistics, bit for bit.
  shutil.copytree(straight, interrupted)
  shutil.rmtree(interrupted / "checkpoints" / "8")
  (interrupted / "eval.json").unlink()
  assert experiment.train(config, str(interrupted)) == final
  _assert_bitwise_equal(trained, _state(interrupted))
  # The same seed again: the same run.
  assert experiment.train(config, str(again)) == final
  _assert_bitwise_equal(trained, _state(again))


def test_evaluation_uses_the_running_statistics(data_dir, tmp_path):
  """In evaluation a sample's prediction does not depend on the other samples of its batch."""
  config = resnet_digits(data_dir)
  experiment.train(config, str(tmp_path))
  run, trainer, state = experiment.restore(str(tmp_path))
  batch = next(run.data.eval_batches(64))
  half = jax.tree.map(lambda x: x[:32], batch)
  logits = lambda b: np.asarray(run.model._eval_logits(state.variables, b, np.zeros(1, bool)))  # noqa: E731
  np.testing.assert_allclose(logits(half), logits(batch)[:32], rtol=1e-5, atol=1e-5)
  assert run.model.predict(state.variables, batch).shape == (64,)
