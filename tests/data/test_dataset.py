"""The generic N-modality dataset: any TFDS dataset (mocked mnist and svhn_cropped, a local toy
dataset with every kind), statistics computed and stored, stored and random missing modalities,
and errors that name the modality."""

import json
import os
from unittest import mock

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.testing import mocking

from mmjax.data import input_pipeline, statistics
from mmjax.data.dataset import ModalityConfig, MultimodalData
from mmjax.schema import ConfigError
from tests.data import toy_dataset

_MOCK_GETITEMS = mocking._getitems


def _getitems(self, record_keys=None, generator=None, serialized=False):
  # tfds.testing.mock_data binds `__getitems__` as a plain attribute, so the data source is
  # passed where the keys belong (TFDS 4.9.10); this puts the keys back in place.
  return _MOCK_GETITEMS(None, self if record_keys is None else record_keys, generator, serialized)


@pytest.fixture
def mock_tfds():
  with mock.patch.object(mocking, "_getitems", _getitems), tfds.testing.mock_data(num_examples=24):
    yield


def _modalities(**sections):
  return {name: ModalityConfig.from_section(section) for name, section in sections.items()}


def _data_config(name, data_dir, modalities):
  return ml_collections.ConfigDict(dict(
      name=name, data_dir=data_dir, modalities=modalities, label="label",
      splits=dict(train="train", eval="test"), batch_size=8, cache=True, modality_dropout={},
  ))


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("svhn_cropped", (32, 32, 3))])
def test_registered_tfds_datasets_are_read_from_a_config(mock_tfds, tmp_path, name, shape):
  config = _data_config(name, str(tmp_path), {"pixels": input_pipeline.modality("image", "image")})
  assert input_pipeline.config_problems(config) == []
  data = input_pipeline.from_config(config)
  assert data.spec.modalities["pixels"].shape == shape and data.spec.num_classes == 10
  batch = data.train_dataset(8, seed=0)[0]
  assert batch["pixels"].shape == (8, *shape) and batch["pixels"].dtype == np.float32
  assert batch["label"].shape == (8,) and batch["present"]["pixels"].all()
  # Moments computed from the training split on first use, stored under the data directory.
  stored = statistics.read(os.path.join(str(tmp_path), tfds.builder(name, data_dir=str(tmp_path)).info.full_name))
  raw = np.stack([data.sources["train"][i]["image"] for i in range(24)]).astype(np.float64) / 255
  np.testing.assert_allclose(stored["moments"]["image"]["mean"], raw.mean(axis=(0, 1, 2)), rtol=1e-6)
  np.testing.assert_allclose(stored["moments"]["image"]["std"], raw.std(axis=(0, 1, 2)), rtol=1e-6)
  assert abs(float(batch["pixels"].mean())) < 0.5


def test_mnist_and_svhn_as_two_modalities_of_one_dataset_is_refused_clearly(mock_tfds, tmp_path):
  config = _data_config("mnist", str(tmp_path), {"digit": input_pipeline.modality("digit", "image")})
  with pytest.raises(ConfigError, match=r"data.modalities.digit.feature: mnist has no feature 'digit'; its features: \['image', 'label'\]"):
    input_pipeline.from_config(config)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("toy"))
  toy_dataset.prepare(directory)
  return directory


def _toy(toy_dir, cache=True, dropout=None, **overrides):
  sections = dict(
      image=input_pipeline.modality("image", "image", present_feature="image_present"),
      text=input_pipeline.modality("caption", "text", present_feature="caption_present", length=6),
      audio=input_pipeline.modality("wave", "audio", length=48),
      vector=input_pipeline.modality("features", "vector"),
      label=input_pipeline.modality("label", "label"),
  )
  sections.update(overrides)
  return MultimodalData(
      toy_dataset.prepare(toy_dir), _modalities(**sections), label="label",
      splits={"train": "train", "eval": "test"}, cache=cache, modality_dropout=dropout,
      statistics_dir=os.path.join(toy_dir, "stats"),
  )


def test_every_kind_is_read_with_its_shape_dtype_and_spec(toy_dir):
  data = _toy(toy_dir)
  spec = data.spec.modalities
  assert {m: (s.kind, s.shape, s.dtype.name) for m, s in spec.items()} == {
      "image": ("image", (4, 4, 3), "float32"), "text": ("text", (6,), "int32"), "audio": ("audio", (48,), "float32"),
      "vector": ("vector", (5,), "float32"), "label": ("label", (), "int32"),
  }
  assert spec["audio"].sample_rate == toy_dataset.SAMPLE_RATE and spec["label"].num_classes == 3
  assert spec["text"].vocab_size == 4 + len(toy_dataset.WORDS)
  batch = next(data.eval_batches(12))
  for row in range(12):
    raw = toy_dataset.example(int(data.sources["eval"][row]["index"]))
    np.testing.assert_allclose(batch["audio"][row], raw["wave"][:48] / 32768.0, rtol=1e-6)
    assert batch["label"][row] == raw["label"] == batch["label"][row]


def test_vector_moments_are_computed_from_the_train_split_and_stored(toy_dir):
  data = _toy(toy_dir)
  train = np.stack([toy_dataset.example(i)["features"] for i in range(toy_dataset.NUM_TRAIN)]).astype(np.float64)
  with open(os.path.join(toy_dir, "stats", statistics.FILENAME)) as f:
    stored = json.load(f)
  np.testing.assert_allclose(stored["moments"]["features"]["mean"], train.mean(axis=0), rtol=1e-6)
  assert sorted(stored["vocabulary"]["caption"][4:]) == sorted(toy_dataset.WORDS)
  vectors = np.concatenate([b["vector"] for b in data.eval_batches(4, split="train")])
  np.testing.assert_allclose(vectors.mean(axis=0), 0.0, atol=1e-5)
  np.testing.assert_allclose(vectors.std(axis=0), 1.0, rtol=1e-4)


def test_stored_missing_modalities_are_masked_and_zeroed(toy_dir):
  for cache in (True, False):
    data = _toy(toy_dir, cache=cache)
    batch = next(data.eval_batches(12, split="train"))
    indices = [int(data.sources["train"][row]["index"]) for row in range(12)]
    expected_image = np.array([i % 3 != 0 for i in indices])
    expected_text = np.array([i % 4 != 0 for i in indices])
    assert not expected_image.all() and not expected_text.all()
    np.testing.assert_array_equal(batch["present"]["image"], expected_image)
    np.testing.assert_array_equal(batch["present"]["text"], expected_text)
    assert batch["present"]["audio"].all() and batch["present"]["vector"].all()
    assert not batch["image"][~expected_image].any() and not batch["text"][~expected_text].any()
    assert batch["image"][expected_image].any()


def _dropout_stream(data, steps, batch_size=10, **hosts):
  dataset = data.train_dataset(batch_size, seed=3, **hosts)
  return [dataset[step] for step in range(steps)]


def test_modality_dropout_hides_each_modality_at_its_rate(toy_dir):
  data = _toy(toy_dir, dropout={"audio": 0.3, "vector": 0.6})
  batches = _dropout_stream(data, 400)
  kept = {m: np.concatenate([b["present"][m] for b in batches]) for m in ("audio", "vector", "label")}
  assert abs((1 - kept["audio"].mean()) - 0.3) < 0.03 and abs((1 - kept["vector"].mean()) - 0.6) < 0.03
  assert kept["label"].all()
  # Independent draws per modality, and hidden values are zeros.
  both = np.mean(~kept["audio"] & ~kept["vector"])
  assert abs(both - 0.18) < 0.03
  for batch in batches[:20]:
    assert not batch["audio"][~batch["present"]["audio"]].any()
  # Stored absence stays: dropout only hides more.
  plain = _dropout_stream(_toy(toy_dir), 50)
  dropped = _dropout_stream(_toy(toy_dir, dropout={"image": 0.5}), 50)
  for a, b in zip(plain, dropped):
    assert not (b["present"]["image"] & ~a["present"]["image"]).any()


def test_modality_dropout_is_seeded_resumable_and_the_same_on_every_host(toy_dir):
  data = _toy(toy_dir, dropout={"audio": 0.5})
  dataset = data.train_dataset(10, seed=3)
  first = [dataset[step]["present"]["audio"] for step in range(12)]
  assert any(not m.all() for m in first)
  np.testing.assert_array_equal(first, [data.train_dataset(10, seed=3)[s]["present"]["audio"] for s in range(12)])
  assert not np.array_equal(first, [data.train_dataset(10, seed=4)[s]["present"]["audio"] for s in range(12)])
  iterator = iter(dataset.to_iter_dataset())
  for _ in range(5):
    next(iterator)
  resumed = iter(dataset.to_iter_dataset())
  resumed.set_state(iterator.get_state())
  for step in range(5, 12):
    np.testing.assert_array_equal(next(resumed)["present"]["audio"], first[step])
  halves = [data.train_dataset(10, seed=3, process_index=p, process_count=2)[7]["present"]["audio"] for p in range(2)]
  np.testing.assert_array_equal(halves[0], first[7][0::2])
  np.testing.assert_array_equal(halves[1], first[7][1::2])


def test_a_hidden_label_modality_keeps_the_class_label(toy_dir):
  batch = _toy(toy_dir, dropout={"label": 1.0}).train_dataset(10, seed=0)[0]
  assert not batch["present"]["label"].any()
  np.testing.assert_array_equal(batch["label"], _toy(toy_dir).train_dataset(10, seed=0)[0]["label"])
  assert len(set(batch["label"].tolist())) > 1


def test_features_that_do_not_fit_their_kind_are_named_with_the_valid_kinds(toy_dir):
  with pytest.raises(ConfigError) as error:
    _toy(
        toy_dir,
        image=input_pipeline.modality("caption", "image"),
        vector=input_pipeline.modality("colour", "vector"),
        label=input_pipeline.modality("features", "label"),
    )
  message = str(error.value)
  assert "data.modalities.image: feature 'caption' is a Text, which cannot be read as kind 'image'; kinds it can be read as: ['text']" in message
  assert "data.modalities.vector.feature: toy_multimodal has no feature 'colour'; its features: ['caption', 'caption_present', 'features'," in message
  assert "data.modalities.label: feature 'features' is a Tensor of shape (5,), which cannot be read as kind 'label'; kinds it can be read as: ['audio', 'vector']" in message


def test_unknown_dropout_modalities_and_bad_scalings_are_refused(toy_dir):
  with pytest.raises(ConfigError, match=r"data.modality_dropout: unknown modalities \['sound'\]"):
    _toy(toy_dir, dropout={"sound": 0.5}).train_dataset(4, seed=0)
  with pytest.raises(ConfigError, match=r"data.modalities.image.scaling: 'none' is not valid for image; valid choices: \['standardize', 'unit', 'symmetric'\]"):
    _toy(toy_dir, image=input_pipeline.modality("image", "image", scaling="none"))


def test_image_scalings(toy_dir):
  unit = next(_toy(toy_dir, image=input_pipeline.modality("image", "image", "image_present", scaling="unit")).eval_batches(12))
  symmetric = next(_toy(toy_dir, image=input_pipeline.modality("image", "image", "image_present", scaling="symmetric")).eval_batches(12))
  present = unit["present"]["image"]
  assert unit["image"].min() >= 0 and unit["image"].max() <= 1 and unit["image"].max() > 0.9
  np.testing.assert_allclose(symmetric["image"][present], unit["image"][present] * 2 - 1, atol=1e-6)
