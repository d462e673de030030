"""The MNIST–SVHN pairs (MMVAE protocol) built from mocked TFDS mnist and svhn_cropped: pairing by
class, each image `pairs` times, fixed by the seed, read as a multimodal dataset."""

import collections
from unittest import mock

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from mmjax.data import input_pipeline, mnist_svhn

_MOCK_GETITEMS = mocking._getitems
NUM_EXAMPLES = 40


def _getitems(self, record_keys=None, generator=None, serialized=False):
  # As in tests/data/test_dataset.py: mock_data binds `__getitems__` as a plain attribute (TFDS 4.9.10).
  return _MOCK_GETITEMS(None, self if record_keys is None else record_keys, generator, serialized)


@pytest.fixture(scope="module")
def sources():
  """Mocked mnist and svhn_cropped examples, read once inside the mock and kept as lists, so the
  pairs are built and read outside it (mock_data also mocks the pairs' own builder)."""
  with mock.patch.object(mocking, "_getitems", _getitems), tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    examples = {}
    for modality, name in mnist_svhn.SOURCES.items():
      data = tfds.builder(name).as_data_source(split="train")
      examples[modality] = data.__getitems__(list(range(len(data))))
  # Mocked datasets may draw the same label sequence: shuffle svhn's so that pairing has work to do.
  order = np.random.default_rng(0).permutation(NUM_EXAMPLES)
  examples["svhn"] = [examples["svhn"][i] for i in order]
  return examples


class _ListSource(list):
  def __getitems__(self, indices):
    return [self[i] for i in indices]


@pytest.fixture
def mocked_sources(sources):
  def source(modality, split, data_dir):
    del split, data_dir  # the mock yields the same examples for every split
    return _ListSource(sources[modality])

  with mock.patch.object(mnist_svhn, "source", source):
    yield


def _labels(examples):
  return np.asarray([example["label"] for example in examples])


def _prepare(tmp_path, **settings):
  config = mnist_svhn.MnistSvhnConfig(name="test", **settings)
  return mnist_svhn.prepare(str(tmp_path), config)


def test_pairs_share_the_class_and_each_kept_image_appears_pairs_times(mocked_sources, sources, tmp_path):
  dataset = _prepare(tmp_path, pairs_per_example=3)
  pairs = dataset.builder.as_data_source("train")
  rows = pairs.__getitems__(list(range(len(pairs))))
  mnist, svhn = (np.asarray([r[f"{m}_index"] for r in rows]) for m in ("mnist", "svhn"))
  labels_mnist, labels_svhn = _labels(sources["mnist"]), _labels(sources["svhn"])
  np.testing.assert_array_equal(labels_mnist[mnist], labels_svhn[svhn])
  np.testing.assert_array_equal(labels_mnist[mnist], [r["label"] for r in rows])
  # Hand count: per class, the first min(#mnist, #svhn) images of each dataset, 3 times each.
  kept = {c: min(np.sum(labels_mnist == c), np.sum(labels_svhn == c)) for c in range(10)}
  assert len(rows) == 3 * sum(kept.values())
  for indices, labels in ((mnist, labels_mnist), (svhn, labels_svhn)):
    counts = collections.Counter(indices.tolist())
    assert set(counts.values()) == {3}
    expected = sorted(i for c in range(10) for i in np.flatnonzero(labels == c)[: kept[c]])
    assert sorted(counts) == expected


def test_pairing_is_fixed_by_the_seed(sources):
  labels = _labels(sources["mnist"]), _labels(sources["svhn"])

  def pairs(seed):
    return mnist_svhn.pair_indices(*labels, 4, 10_000, lambda c: np.random.default_rng((seed, 0, c)))

  first, again, other = pairs(0), pairs(0), pairs(1)
  np.testing.assert_array_equal(np.stack(first), np.stack(again))
  assert not np.array_equal(np.stack(first), np.stack(other))
  # Another seed re-pairs the same images.
  assert sorted(first[0].tolist()) == sorted(other[0].tolist())


def test_max_per_class_caps_the_images_kept():
  mnist, svhn = mnist_svhn.pair_indices(
      np.zeros(5, int), np.zeros(7, int), 2, 3, lambda c: np.random.default_rng(c)
  )
  assert sorted(mnist.tolist()) == sorted(svhn.tolist()) == [0, 0, 1, 1, 2, 2]


@pytest.mark.parametrize("cache", [False, True])
def test_read_as_a_multimodal_dataset(mocked_sources, sources, tmp_path, cache):
  config = ml_collections.ConfigDict(dict(
      name="mnist_svhn", data_dir=str(tmp_path),
      modalities=dict(mnist=input_pipeline.modality("mnist", "image"), svhn=input_pipeline.modality("svhn", "image")),
      label="label", splits=dict(train="train", eval="test"), batch_size=8, cache=cache, modality_dropout={},
  ))
  assert input_pipeline.config_problems(config) == []
  data = input_pipeline.from_config(config)
  assert data.spec.modalities["mnist"].shape == (28, 28, 1) and data.spec.modalities["svhn"].shape == (32, 32, 3)
  assert data.spec.num_classes == 10
  batch = data.train_dataset(8, seed=0)[0]
  assert batch["mnist"].shape == (8, 28, 28, 1) and batch["svhn"].shape == (8, 32, 32, 3)
  assert batch["mnist"].dtype == np.float32 and batch["present"]["svhn"].all()
  # A pair's images are the source examples its indices name.
  example = data.sources["train"][0]
  np.testing.assert_array_equal(example["mnist"], sources["mnist"][example["mnist_index"]]["image"])
  np.testing.assert_array_equal(example["svhn"], sources["svhn"][example["svhn_index"]]["image"])
  assert example["label"] == sources["svhn"][example["svhn_index"]]["label"]
  eval_batch = next(data.eval_batches(8))
  assert eval_batch["label"].shape == (8,)


def test_rebuilding_with_other_settings_under_the_same_name_is_refused(mocked_sources, tmp_path):
  _prepare(tmp_path, pairs_per_example=2)
  with pytest.raises(ValueError, match="pairs_per_example=2 \\(not 5\\)"):
    _prepare(tmp_path, pairs_per_example=5)


def test_missing_sources_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match="'mnist' prepared as array_record"):
    mnist_svhn.prepare(str(tmp_path))


def _tiny_paper_config(data_dir):
  """configs/mmvae_mnist_svhn.py with every size shrunk, nothing else changed."""
  from configs import mmvae_mnist_svhn

  config = mmvae_mnist_svhn.get_config()
  config.data.update(data_dir=data_dir, batch_size=8, splits=dict(train="train", eval="test[:16]"))
  model = config.model
  model.update(latent_size=4, features=8, num_samples=3, eval_samples=2, eval_chunk_size=2, eval_prior_samples=8)
  model.encoders.mnist.mlp.width = 16
  model.encoders.svhn.conv.channels = (4, 4, 4)
  model.decoders.mnist.mlp.width = 16
  model.decoders.svhn.conv_transpose.channels = (8, 4, 4)
  model.reference_classifiers.update(num_steps=2, batch_size=8, features=8)
  for m in ("mnist", "svhn"):
    model.reference_classifiers.encoders[m].conv.channels = (4,) * len(model.reference_classifiers.encoders[m].conv.channels)
  config.train.update(num_steps=2, log_every=1, eval_every=2, checkpoint_every=2, eval_batch_size=8, async_checkpointing=False)
  return config


def test_the_paper_config_is_valid():
  from configs import mmvae_mnist_svhn
  from mmjax import experiment

  config = mmvae_mnist_svhn.get_config()
  experiment.validate_config(config)
  assert config.model.latent_size == 20 and config.model.num_samples == 30 and config.model.estimator == "dreg"
  assert config.model.posterior == "laplace" and config.data.batch_size == 128
  assert config.model.likelihoods.mnist.weight == pytest.approx(3 * 32 * 32 / 784)
  assert config.model.likelihoods.svhn.weight == 1.0
  assert config.train.num_steps == 30 * 1_121_360 // 128
  # Only the two images: nothing left of the mm_digits base config's modalities.
  model = config.model
  for section in (config.data.modalities, model.encoders, model.decoders, model.likelihoods, model.reference_classifiers.encoders):
    assert sorted(section) == ["mnist", "svhn"], section


@pytest.mark.slow
def test_the_paper_config_trains_a_few_steps_on_mocked_pairs(mocked_sources, tmp_path):
  from mmjax import experiment

  metrics = experiment.train(_tiny_paper_config(str(tmp_path)), str(tmp_path / "run"))
  assert all(np.isfinite(v) for v in metrics.values() if isinstance(v, float)), metrics
  assert "coherence/mnist->svhn" in metrics and "coherence/svhn->mnist" in metrics, sorted(metrics)
