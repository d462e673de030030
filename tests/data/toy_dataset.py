"""A tiny TFDS dataset with every modality kind and stored missing modalities, built offline.

It stores no statistics in its metadata (only the audio sample rate), so reading it exercises the
path of datasets that mmjax did not build: moments and vocabularies computed on first use.
"""

import contextlib
import io

import numpy as np
import PIL.Image
import tensorflow_datasets as tfds

NUM_TRAIN, NUM_TEST = 40, 12
WAVE_LENGTH, SAMPLE_RATE = 64, 8000
WORDS = ("red", "green", "blue", "round", "square")


class ToyMultimodal(tfds.core.GeneratorBasedBuilder):
  """Image, caption, waveform, feature vector and label; images and captions sometimes missing."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(4, 4, 3)),
            "caption": tfds.features.Text(),
            "wave": tfds.features.Tensor(shape=(WAVE_LENGTH,), dtype=np.int16),
            "features": tfds.features.Tensor(shape=(5,), dtype=np.float32),
            "label": tfds.features.ClassLabel(names=("a", "b", "c")),
            "index": np.int32,
            "image_present": np.bool_,
            "caption_present": np.bool_,
        }),
        metadata=tfds.core.MetadataDict(sample_rate={"wave": SAMPLE_RATE}),
    )

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(0, NUM_TRAIN), "test": self._generate_examples(NUM_TRAIN, NUM_TRAIN + NUM_TEST)}

  def _generate_examples(self, start, stop):
    for index in range(start, stop):
      yield index, example(index)


def example(index: int) -> dict:
  """Example `index`, the same every time; every third lacks its image, every fourth its caption."""
  rng = np.random.default_rng(index)
  image_present, caption_present = index % 3 != 0, index % 4 != 0
  pixels = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8) if image_present else np.zeros((4, 4, 3), np.uint8)
  return {
      "image": PIL.Image.fromarray(pixels),
      "caption": " ".join(rng.choice(WORDS, 3)) if caption_present else "",
      "wave": rng.integers(-(2**15), 2**15, WAVE_LENGTH).astype(np.int16),
      "features": rng.normal(3.0, 2.0, 5).astype(np.float32),
      "label": index % 3,
      "index": index,
      "image_present": image_present,
      "caption_present": caption_present,
  }


def prepare(data_dir: str) -> ToyMultimodal:
  builder = ToyMultimodal(data_dir=data_dir, file_format="array_record")
  if not builder.is_prepared():
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare()
  return builder
