"""The built-in dataset: contents, captions, determinism and offline reading without TensorFlow."""

import collections
import sys

import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import mm_digits


def test_splits_are_stratified_and_complete(data_dir):
  builder = mm_digits.prepare(data_dir)
  train, test = (builder.as_data_source(split) for split in ("train", "test"))
  assert len(train) + len(test) == 1797
  indices = {int(train[i]["index"]) for i in range(len(train))} | {int(test[i]["index"]) for i in range(len(test))}
  assert indices == set(range(1797))
  test_counts = collections.Counter(int(test[i]["label"]) for i in range(len(test)))
  assert sorted(test_counts) == list(range(10)) and min(test_counts.values()) >= 34


def test_examples_hold_the_real_scans_and_matching_captions(data_dir):
  from sklearn.datasets import load_digits

  digits = load_digits()
  source = mm_digits.prepare(data_dir).as_data_source("test")
  for i in range(0, len(source), 37):
    example = source[i]
    original = digits.images[example["index"]]
    np.testing.assert_array_equal(example["image"][..., 0], np.round(original * 255 / 16).astype(np.uint8))
    assert example["label"] == digits.target[example["index"]]
    caption = example["caption"].decode()
    label = example["label"]
    assert mm_digits.CLASS_NAMES[label] in caption.split() or str(label) in caption.split()


def test_captions_vary_and_describe_the_scan():
  from sklearn.datasets import load_digits

  digits = load_digits()
  captions = mm_digits.make_captions(digits.images, digits.target, seed=0)
  assert len(set(captions)) > 150
  descriptive = [c for c in captions if any(w in c.split() for w in ("bold", "thin", "left", "right"))]
  assert 0.2 < len(descriptive) / len(captions) < 0.8
  # "bold" scans carry more ink than "thin" scans of the same digit.
  ink = digits.images.reshape(len(captions), -1).mean(1)
  bold = [ink[i] for i, c in enumerate(captions) if "bold" in c.split() and digits.target[i] == 0]
  thin = [ink[i] for i, c in enumerate(captions) if "thin" in c.split() and digits.target[i] == 0]
  assert min(bold) > max(thin)
  assert mm_digits.make_captions(digits.images, digits.target, seed=0) == captions
  assert mm_digits.make_captions(digits.images, digits.target, seed=1) != captions


def test_split_depends_only_on_the_seed():
  labels = np.repeat(np.arange(10), 20)
  a = mm_digits.stratified_split(labels, 0.25, seed=3)
  b = mm_digits.stratified_split(labels, 0.25, seed=3)
  c = mm_digits.stratified_split(labels, 0.25, seed=4)
  assert all(np.array_equal(x, y) for x, y in zip(a, b))
  assert not np.array_equal(a[1], c[1])
  assert len(np.intersect1d(*a)) == 0 and len(a[1]) == 50


def test_metadata_and_reading_back_through_tfds_data_source(data_dir):
  source = tfds.data_source("mm_digits", data_dir=data_dir, split="train")
  assert len(source) == 1438
  info = tfds.builder("mm_digits", data_dir=data_dir).info
  assert info.metadata["class_names"][7] == "seven"
  assert info.metadata["vocabulary"]["caption"][:4] == ["<pad>", "<bos>", "<eos>", "<unk>"]
  mean, std = info.metadata["moments"]["image"]["mean"], info.metadata["moments"]["image"]["std"]
  train = np.stack([source[i]["image"] for i in range(len(source))]).astype(np.float64) / 255
  np.testing.assert_allclose([mean[0], std[0]], [train.mean(), train.std()], rtol=1e-9)
  assert "tensorflow" not in sys.modules
