"""Reference classifiers: trained by mmjax on the run's own data, cached in the workdir, judging
real and generated values of one modality."""

import json
import os

import jax
import numpy as np
import pytest

from mmjax import experiment
from mmjax.data.input_pipeline import modality
from mmjax.models.encoder_configs import encoder_section
from mmjax.reference_classifiers import ReferenceClassifiers, reference_section
from tests.conftest import small_config


@pytest.fixture
def run_config(data_dir):
  config = small_config(data_dir)
  config.data.modalities.label = modality("label", "label")
  config.train.eval_batch_size = 128
  return config


def _settings(num_steps=120):
  return reference_section(num_steps=num_steps, image=encoder_section("image", "conv", conv=dict(channels=(16, 32), strides=(1, 2))))


def test_a_classifier_per_modality_is_trained_once_and_judges_real_images(run_config, tmp_path):
  references = ReferenceClassifiers(run_config, _settings(), ("image", "label"), str(tmp_path))
  accuracies = references.prepare()
  assert accuracies["label"] == 1.0 and accuracies["image"] > 0.8, accuracies
  with open(tmp_path / "classifiers" / "image" / "eval.json") as f:
    assert json.load(f)["accuracy"] == accuracies["image"]
  data = experiment.build(run_config).data
  batch = next(data.eval_batches(128))
  predicted = np.asarray(references.predict("image", batch["image"]))
  assert np.mean(predicted == batch["label"]) > 0.8
  np.testing.assert_array_equal(references.predict("label", batch["label"]), batch["label"])

  # A new bank over the same workdir loads the finished classifier instead of training it again.
  stamp = os.path.getmtime(tmp_path / "classifiers" / "image" / "eval.json")
  again = ReferenceClassifiers(run_config, _settings(), ("image", "label"), str(tmp_path))
  assert again.prepare() == accuracies
  assert os.path.getmtime(tmp_path / "classifiers" / "image" / "eval.json") == stamp
  np.testing.assert_array_equal(again.predict("image", batch["image"]), predicted)
  # Other settings: trained afresh.
  changed = ReferenceClassifiers(run_config, _settings(num_steps=30), ("image",), str(tmp_path))
  changed.prepare()
  assert os.path.getmtime(tmp_path / "classifiers" / "image" / "eval.json") > stamp
  with open(tmp_path / "classifiers" / "image" / "config.json") as f:
    assert json.load(f)["train"]["num_steps"] == 30


def test_predict_takes_generated_values(run_config, tmp_path):
  references = ReferenceClassifiers(run_config, _settings(num_steps=10), ("image",), str(tmp_path))
  fake = jax.random.normal(jax.random.key(0), (5, 8, 8, 1))
  assert references.predict("image", fake).shape == (5,)
