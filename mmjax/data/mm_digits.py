"""`mm_digits`: a small image–caption–label dataset that ships with mmjax.

Built offline from scikit-learn's bundled handwritten digits (1,797 real 8×8 scans, UCI
"Optical Recognition of Handwritten Digits"). Each image gets a caption drawn from several
templates; some templates describe the scan itself (thin or bold strokes, slant), measured from
the pixels relative to other scans of the same digit, so captions carry more than the label and
retrieval is not just classification. The train/test split is stratified by class and
deterministic given the builder config's `split_seed`.

Stored as `array_record` and read through `tfds.data_source`: TensorFlow is not needed. The
dataset's metadata holds the class names, the zero-shot prompt templates, the word vocabulary of
the training captions and prompts, and the pixel mean and standard deviation of the training
images (in the layout of `mmjax.data.statistics`).

>>> import tempfile
>>> builder = prepare(tempfile.mkdtemp())
>>> builder.info.splits["train"].num_examples, builder.info.splits["test"].num_examples
(1438, 359)
>>> builder.info.features["label"].names[:3]
['zero', 'one', 'two']
"""

import contextlib
import dataclasses
import io

from absl import logging
import numpy as np
import PIL.Image
import tensorflow_datasets as tfds
from sklearn import datasets as sklearn_datasets

from mmjax.data import statistics
from mmjax.data.prompts import class_prompts

CLASS_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
IMAGE_SHAPE = (8, 8, 1)

# Templates that only name the digit: used for captions and as zero-shot class prompts.
PROMPT_TEMPLATES = (
    "a handwritten {name}",
    "the digit {index}",
    "a scan of the number {name}",
    "a photo of the digit {name}",
    "the number {name} written by hand",
    "a picture of a {index}",
)
# Templates that also describe the scan; a caption uses one only when its attribute applies.
DESCRIPTIVE_TEMPLATES = (
    "a {stroke} handwritten {name}",
    "a {stroke} {index}",
    "the digit {name} in {stroke} strokes",
    "a handwritten {name} slanted to the {side}",
    "a {index} leaning {side}",
    "a {stroke} {name} slanted to the {side}",
)
STROKE_WORDS = ("thin", "bold")  # lowest and highest third of ink per class
SIDE_WORDS = ("left", "right")  # lowest and highest third of slant per class


@dataclasses.dataclass
class MmDigitsConfig(tfds.core.BuilderConfig):
  """Which deterministic split to build."""

  split_seed: int = 0
  test_fraction: float = 0.2


def _slant(image: np.ndarray) -> float:
  """How far the strokes lean right (positive) or left, from the image's second moments."""
  rows, cols = np.indices(image.shape)
  weights = image / image.sum()
  mean_row, mean_col = (weights * rows).sum(), (weights * cols).sum()
  covariance = (weights * (rows - mean_row) * (cols - mean_col)).sum()
  row_variance = (weights * (rows - mean_row) ** 2).sum()
  # Rows grow downwards, so a right lean (top further right) has negative row-column covariance.
  return -covariance / row_variance


def _tercile_words(values: np.ndarray, labels: np.ndarray, words: tuple[str, str]) -> list[str | None]:
  """Per class: `words[0]` for the lowest third of `values`, `words[1]` for the highest."""
  result: list[str | None] = [None] * len(values)
  for label in np.unique(labels):
    members = np.flatnonzero(labels == label)
    low, high = np.quantile(values[members], [1 / 3, 2 / 3])
    for index in members:
      if values[index] <= low:
        result[index] = words[0]
      elif values[index] >= high:
        result[index] = words[1]
  return result


def make_captions(images: np.ndarray, labels: np.ndarray, seed: int) -> list[str]:
  """One caption per image: a random template among those whose attributes the image has."""
  strokes = _tercile_words(images.reshape(len(images), -1).mean(axis=1), labels, STROKE_WORDS)
  sides = _tercile_words(np.array([_slant(image) for image in images]), labels, SIDE_WORDS)
  rng = np.random.default_rng(seed)
  captions = []
  for label, stroke, side in zip(labels, strokes, sides):
    attributes = {"name": CLASS_NAMES[label], "index": label, "stroke": stroke, "side": side}
    usable = [
        template
        for template in PROMPT_TEMPLATES + DESCRIPTIVE_TEMPLATES
        if all(attributes[key] is not None for key in ("stroke", "side") if "{" + key + "}" in template)
    ]
    captions.append(usable[rng.integers(len(usable))].format(**attributes))
  return captions


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Sorted train and test indices holding `test_fraction` of every class in the test part."""
  rng = np.random.default_rng(seed)
  train, test = [], []
  for label in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == label))
    cut = int(round(test_fraction * len(members)))
    test.extend(members[:cut])
    train.extend(members[cut:])
  return np.sort(train), np.sort(test)


class MmDigits(tfds.core.GeneratorBasedBuilder):
  """Handwritten digits with captions; built from data bundled with scikit-learn."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "First release.",
      "1.1.0": "Statistics and vocabulary stored per feature (mmjax.data.statistics); same examples.",
  }
  BUILDER_CONFIGS = [MmDigitsConfig(name="default", description="split_seed=0, 20% test")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            "caption": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            "index": np.int32,
        }),
        supervised_keys=("image", "label"),
        homepage="https://archive.ics.uci.edu/dataset/80",
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is bundled with scikit-learn
    digits = sklearn_datasets.load_digits()
    images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    captions = make_captions(digits.images, labels, self.builder_config.split_seed)
    train, test = stratified_split(labels, self.builder_config.test_fraction, self.builder_config.split_seed)

    prompts = class_prompts(CLASS_NAMES, PROMPT_TEMPLATES)
    self.info.metadata.update({
        "class_names": list(CLASS_NAMES),
        "prompt_templates": list(PROMPT_TEMPLATES),
        # Prompts are in the vocabulary, so zero-shot class prompts never tokenize to UNK.
        "vocabulary": {"caption": statistics.vocabulary([captions[i] for i in train] + sum(prompts, []))},
        "moments": {"image": statistics.image_moments(images[train])},
    })
    examples = {"images": images, "labels": labels, "captions": captions}
    return {
        "train": self._generate_examples(examples, train),
        "test": self._generate_examples(examples, test),
    }

  def _generate_examples(self, examples, indices):
    for index in indices:
      yield int(index), {
          # A PIL image: TFDS encodes those to PNG with Pillow, NumPy arrays only with TensorFlow.
          "image": PIL.Image.fromarray(examples["images"][index][..., 0], mode="L"),
          "caption": examples["captions"][index],
          "label": int(examples["labels"][index]),
          "index": int(index),
      }


def prepare(data_dir: str, config: str | MmDigitsConfig = "default") -> MmDigits:
  """Builds `mm_digits` into `data_dir` unless it is there already; returns the builder.

  Args:
    data_dir: root of the TFDS data directory.
    config: a builder config or the name of a registered one.
  """
  builder = MmDigits(data_dir=data_dir, config=config, file_format="array_record")
  if not builder.is_prepared():
    logging.info("Building mm_digits into %s", builder.data_dir)
    # TFDS reports its progress on stdout, which belongs to the caller (the CLI prints JSON there).
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare()
  return builder
