"""The generated dataset: determinism, contents checked by independent means, missing modalities,
metadata statistics and the theoretical ceilings."""

import collections
import itertools
import math
import sys

import numpy as np
import pytest
from scipy import ndimage

from mmjax.data import mm_shapes

SMALL = dict(num_train=120, num_test=60)


@pytest.fixture(scope="module")
def build(tmp_path_factory):
  """``build(name, **settings)``: a small config built into a fresh data directory, once per module."""
  built = {}

  def make(name, **settings):
    if name not in built:
      config = mm_shapes.MmShapesConfig(name=name, **{**SMALL, **settings})
      built[name] = mm_shapes.prepare(str(tmp_path_factory.mktemp(name)), config)
    return built[name]

  return make


def read(builder, split):
  """Every stored example of `split`, as stacked arrays (captions decoded)."""
  source = builder.as_data_source(split)
  examples = [source[i] for i in range(len(source))]
  stacked = {name: np.stack([np.asarray(e[name]) for e in examples]) for name in examples[0] if name != "caption"}
  stacked["caption"] = [e["caption"].decode("utf-8") for e in examples]
  return stacked


def test_examples_depend_only_on_the_seed(build, tmp_path):
  first = build("seed0")
  again = mm_shapes.prepare(str(tmp_path), mm_shapes.MmShapesConfig(name="seed0", **SMALL))
  other = build("seed1", seed=1)
  for split in mm_shapes.SPLITS:
    a, b, c = read(first, split), read(again, split), read(other, split)
    for name in a:
      np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert not np.array_equal(a["label"], c["label"])
    assert not any(np.array_equal(x, y) for x, y in zip(a["image"], c["image"]))
    assert not any(np.array_equal(x, y) for x, y in zip(a["audio"], c["audio"]))


def test_sizes_feature_shapes_and_dtypes_and_no_tensorflow(build):
  builder = build("seed0")
  assert {name: split.num_examples for name, split in builder.info.splits.items()} == {"train": 120, "test": 60}
  train = read(builder, "train")
  assert train["image"].shape == (120, 32, 32, 3) and train["image"].dtype == np.uint8
  assert train["audio"].shape == (120, 4000) and train["audio"].dtype == np.int16
  for name in ("label", "shape", "pitch", "word"):
    assert train[name].shape == (120,) and np.issubdtype(train[name].dtype, np.integer), name
  for modality in ("image", "audio", "caption"):
    assert train[f"{modality}_present"].dtype == np.bool_ and train[f"{modality}_present"].all()
  assert builder.info.features["label"].num_classes == 12
  assert sorted(train["index"].tolist()) == list(range(120))
  generated = mm_shapes.make_split(builder.builder_config, "train")  # stored losslessly
  for name, values in generated.items():
    np.testing.assert_array_equal(np.asarray(train[name])[np.argsort(train["index"])], values, err_msg=name)
  assert builder.info.metadata["sample_rate"] == {"audio": 8000}
  assert "8000 Hz" in builder.info.features["audio"].doc.desc
  assert "tensorflow" not in sys.modules


def test_label_is_the_combination_of_the_attributes_and_classes_are_balanced(build):
  builder = build("seed0")
  names = builder.info.features["label"].names
  for split, size in (("train", 120), ("test", 60)):
    data = read(builder, split)
    for label, shape, pitch, word in zip(data["label"], data["shape"], data["pitch"], data["word"]):
      expected = [("circle", "square", "triangle")[shape], ("low", "high")[pitch], ("north", "south")[word]]
      assert names[label].split("-") == expected
    assert collections.Counter(data["label"].tolist()) == {label: size // 12 for label in range(12)}
    assert collections.Counter(data["shape"].tolist()) == {k: size // 3 for k in range(3)}
    for attribute in ("pitch", "word"):
      assert collections.Counter(data[attribute].tolist()) == {0: size // 2, 1: size // 2}, attribute


def test_caption_names_the_direction_once_and_nothing_else_that_matters(build):
  data = read(build("seed0"), "train")
  assert len(set(data["caption"])) > 60
  for caption, word in zip(data["caption"], data["word"]):
    words = caption.split()
    directions = [w for w in words if w in ("north", "south")]
    assert directions == [("north", "south")[word]], caption
    # No word of the other attributes: no drawn shape kind, no pitch.
    assert not set(words) & {"circle", "square", "triangle", "low", "high"}, caption


def test_target_tone_is_the_strongest_frequency_in_its_band(build):
  data = read(build("seed0"), "train")
  frequencies = np.fft.rfftfreq(4000, d=1 / 8000)
  for clip, pitch in zip(data["audio"], data["pitch"]):
    peak = frequencies[np.argmax(np.abs(np.fft.rfft(clip.astype(np.float64))))]
    low, high = ((300, 600), (1200, 2400))[pitch]
    assert low - 4 <= peak <= high + 4, (peak, pitch)  # bins are 2 Hz wide
    assert np.abs(clip).max() < 0.97 * 32768  # never clipped


def test_target_shape_kind_is_recoverable_from_a_clean_image(build):
  """The largest blob's area over its squared circumradius is π for a circle, 2 for a square and
  3√3/4 ≈ 1.3 for a triangle, whatever its size and rotation."""
  data = read(build("clean", noise=0.0), "train")
  kinds = []
  for image in data["image"]:
    colours, counts = np.unique(image.reshape(-1, 3), axis=0, return_counts=True)
    # 8-connected: a thin rotated corner may touch the rest of its shape only diagonally.
    blobs, num_blobs = ndimage.label(np.any(image != colours[counts.argmax()], axis=-1), structure=np.ones((3, 3)))
    assert num_blobs in (2, 3)  # the target and one or two distractors, apart
    largest = blobs == np.argmax(np.bincount(blobs.ravel())[1:]) + 1
    rows, cols = np.nonzero(largest)
    circumradius2 = ((rows - rows.mean()) ** 2 + (cols - cols.mean()) ** 2).max()
    ratio = largest.sum() / circumradius2
    kinds.append(0 if ratio > 2.65 else 1 if ratio > 1.8 else 2)
  np.testing.assert_array_equal(kinds, data["shape"])


def test_noise_only_adds_noise_of_the_stated_scale(build):
  clean, noisy = read(build("clean", noise=0.0), "train"), read(build("seed0"), "train")
  for name in ("label", "shape", "pitch", "word", "caption"):
    np.testing.assert_array_equal(clean[name], noisy[name], err_msg=name)
  image_noise = noisy["image"].astype(np.float64) - clean["image"]
  unclipped = (clean["image"] > 60) & (clean["image"] < 195)  # 5 σ from both ends
  assert 11.5 < image_noise[unclipped].std() < 12.5 and abs(image_noise[unclipped].mean()) < 0.2
  audio_noise = (noisy["audio"].astype(np.float64) - clean["audio"]) / 32768
  assert 0.029 < audio_noise.std() < 0.031
  assert clean["image"].reshape(120, -1, 3).std(axis=1).min() > 0  # shapes drawn without noise too


def test_missing_config_blanks_one_modality_in_the_given_fraction(build):
  complete, missing = build("seed0"), build("small_missing", missing_fraction=0.2)
  assert missing.info.metadata["best_accuracy_as_built"] == pytest.approx(0.8 + 0.2 * (1 / 2 + 1 / 2 + 1 / 3) / 3)
  for split, size in (("train", 120), ("test", 60)):
    full, data = read(complete, split), read(missing, split)
    present = np.stack([data[f"{m}_present"] for m in ("image", "audio", "caption")], axis=1)
    assert sorted(collections.Counter(present.sum(axis=1).tolist()).items()) == [(2, size // 5), (3, size - size // 5)]
    assert (~present).any(axis=0).all()  # each modality is absent somewhere
    for name, blank in (("image", 0), ("audio", 0)):
      absent = ~data[f"{name}_present"]
      assert (data[name][absent] == blank).all()
      np.testing.assert_array_equal(data[name][~absent], full[name][~absent])
    for caption, original, present_caption in zip(data["caption"], full["caption"], data["caption_present"]):
      assert caption == (original if present_caption else "")
    np.testing.assert_array_equal(data["label"], full["label"])


def test_metadata_statistics_are_those_of_the_present_train_examples(build):
  builder = build("small_missing", missing_fraction=0.2)
  metadata, train = builder.info.metadata, read(builder, "train")
  images = train["image"][train["image_present"]].astype(np.float64) / 255
  for channel in range(3):
    values = images[..., channel].ravel()
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((values - mean) ** 2) / len(values))
    assert metadata["moments"]["image"]["mean"][channel] == pytest.approx(mean, rel=1e-9)
    assert metadata["moments"]["image"]["std"][channel] == pytest.approx(std, rel=1e-9)
  samples = train["audio"][train["audio_present"]].ravel() / 32768
  audio_mean = math.fsum(samples) / len(samples)
  audio_std = math.sqrt(math.fsum((samples - audio_mean) ** 2) / len(samples))
  assert metadata["moments"]["audio"]["mean"] == [pytest.approx(audio_mean, abs=1e-12)]
  assert metadata["moments"]["audio"]["std"] == [pytest.approx(audio_std, rel=1e-9)]
  captions = [caption for caption, present in zip(train["caption"], train["caption_present"]) if present]
  words = {word for caption in captions for word in caption.split()}
  assert metadata["vocabulary"]["caption"] == ["<pad>", "<bos>", "<eos>", "<unk>"] + sorted(words)
  assert metadata["class_names"] == builder.info.features["label"].names
  assert metadata["config"] == {"num_train": 120, "num_test": 60, "seed": 0, "missing_fraction": 0.2, "noise": 1.0}


def test_best_accuracies_are_those_of_the_bayes_classifier():
  """Brute force: given the attributes a subset of modalities reveals, the best guess is right
  once among the classes that agree with them."""
  classes = list(itertools.product(range(3), range(2), range(2)))
  carried = {"image": 0, "audio": 1, "caption": 2}
  expected = {}
  for size in (1, 2, 3):
    for subset in itertools.combinations(("image", "audio", "caption"), size):
      seen = [carried[m] for m in subset]
      agreeing = [sum(all(o[i] == c[i] for i in seen) for o in classes) for c in classes]
      expected["+".join(subset)] = float(np.mean([1 / n for n in agreeing]))
  assert mm_shapes.best_accuracies() == pytest.approx(expected)
  assert expected["image"] == pytest.approx(1 / 4) and expected["audio+caption"] == pytest.approx(1 / 3)
  assert mm_shapes.best_accuracy_as_built(0.0) == 1.0


@pytest.mark.parametrize(
    "settings, field",
    [
        (dict(num_train=0), "num_train"),
        (dict(num_test=-1), "num_test"),
        (dict(seed=-2), "seed"),
        (dict(missing_fraction=1.5), "missing_fraction"),
        (dict(noise=-0.1), "noise"),
    ],
)
def test_bad_settings_raise_a_value_error_naming_them(settings, field):
  with pytest.raises(ValueError, match=f"config {field}: expected .*, got {list(settings.values())[0]}"):
    mm_shapes.MmShapesConfig(name="bad", **settings)


def test_bad_split_raises():
  with pytest.raises(ValueError, match="split: expected one of .*'validation'"):
    mm_shapes.make_split(mm_shapes.MmShapesConfig(name="tiny", num_train=1, num_test=1), "validation")


def test_prepare_refuses_a_build_of_the_same_name_with_other_settings(build):
  data_dir = str(build("seed0").data_dir).split("/mm_shapes/")[0]
  with pytest.raises(ValueError, match=r"'seed0' .* built with seed=0 \(not 3\)"):
    mm_shapes.prepare(data_dir, mm_shapes.MmShapesConfig(name="seed0", seed=3, **SMALL))
  reused = mm_shapes.prepare(data_dir, mm_shapes.MmShapesConfig(name="seed0", **SMALL))
  assert reused.info.splits["test"].num_examples == 60
