"""`mm_shapes`: a procedurally generated image–audio–caption dataset whose label needs all three.

Every example has three independent attributes, each carried by exactly one modality:

- ``image`` (32×32 RGB): the *kind of the large target shape*, circle, square or triangle, in a
  random bright colour, position, size (circumradius 7–10 px) and rotation, on a dark background
  of random colour. One or two small *distractor* shapes (circumradius 2.5–3.5 px) of random kinds
  and colours sit apart from it (never touching), and Gaussian pixel noise (σ = 12 grey levels)
  covers everything. The target is always the largest shape.
- ``audio`` (0.5 s at 8 kHz, int16 PCM; divide by 32768 for [-1, 1)): the *pitch band of the
  target tone*, low (300–600 Hz) or high (1200–2400 Hz), at a random log-uniform frequency
  within the band; it lasts the whole clip under a random slow amplitude envelope. A quieter
  (30–60 % of its amplitude), short (50–150 ms) distractor beep at a random frequency in
  200–3200 Hz, which may fall in either band, and white noise (σ = 0.03) are mixed in.
- ``caption``: the *direction word*, "north" or "south", in one of several templates, among
  distractor words: colour words drawn independently of the image, and names of shapes that are
  never drawn ("star", "hexagon", …). So only the direction word says anything, and nothing in the
  caption says anything true about the image or the sound.

The class is the combination, ``shape-pitch-word`` (12 classes, e.g. ``"circle-low-north"``), and
every split holds every class equally often (up to one example). As the attributes are independent
and uniform, a modality only narrows the class down to those sharing its attribute: the best
accuracy from a subset of the modalities is one over the number of combinations of the attributes
it does not see (`best_accuracies`; chance is 1/12). A model above a subset's ceiling uses a
modality outside it; one near 1 fuses all three.

Measured test accuracies of trained models (`benchmarks/fusion.py`: fusion classifiers of
`configs/fusion_shapes.py` with early fusion, trained on each subset of the modalities with a small
budget of 300 steps of batch 64 and half-width encoders; mean ± half the range over the seeds;
``docs/datasets.md`` holds the same table and docs/fusion.md every fusion's):

=========================  =============  ===============  =====
modalities                 best possible  measured         seeds
=========================  =============  ===============  =====
image                      1/4            0.195 ± 0.003    3
audio                      1/6            0.165 ± 0.016    3
caption                    1/6            0.158 ± 0.003    3
image + audio              1/2            0.379 ± 0.021    3
image + caption            1/2            0.379 ± 0.004    3
audio + caption            1/3            0.322 ± 0.009    3
image + audio + caption    1              0.776 ± 0.008    3
=========================  =============  ===============  =====

Presence: ``image_present``, ``audio_present`` and ``caption_present`` flag each modality. The
``missing`` config (``missing_fraction=0.2``) marks one random modality of 20 % of the examples
absent and stores zeros (or an empty caption) in its place; everything else is identical to the
``default`` config with the same seed. Its best accuracy is 0.8 · 1 + 0.2 · mean(1/2, 1/2, 1/3) ≈
0.889 (`best_accuracy_as_built`).

Generation is deterministic given the config's `seed` (each example has its own random stream, so
it does not depend on the order of generation) and needs no download; the default 3,600 train /
1,200 test examples take about 11 s of CPU to build. Stored as `array_record`, read through
`tfds.data_source` without TensorFlow. The metadata holds the class and attribute names, the
moments of the train images (per channel, scaled to [0, 1]) and of the train audio (one channel,
scaled to [-1, 1)), the caption vocabulary of the train split (all three over present examples
only, in the layout of `mmjax.data.statistics`), the sample rate, the best accuracies and the
generation settings.

>>> import tempfile
>>> builder = prepare(tempfile.mkdtemp(), MmShapesConfig(name="small", num_train=24, num_test=12))
>>> builder.info.splits["train"].num_examples, builder.info.features["label"].names[:2]
(24, ['circle-low-north', 'circle-low-south'])
>>> example = builder.as_data_source("test")[0]
>>> example["image"].shape, example["audio"].dtype, builder.info.metadata["sample_rate"]
((32, 32, 3), dtype('int16'), {'audio': 8000})
"""

import colorsys
import contextlib
import dataclasses
import io
import itertools
import math

from absl import logging
import numpy as np
import PIL.Image
import PIL.ImageDraw
import tensorflow_datasets as tfds

from mmjax.data import statistics

MODALITIES = ("image", "audio", "caption")
SHAPES = ("circle", "square", "triangle")
PITCHES = ("low", "high")
WORDS = ("north", "south")
# The attribute each modality carries, and its values.
ATTRIBUTES = {"shape": SHAPES, "pitch": PITCHES, "word": WORDS}
CARRIER = {"image": "shape", "audio": "pitch", "caption": "word"}
CLASS_NAMES = tuple("-".join(names) for names in itertools.product(SHAPES, PITCHES, WORDS))
SPLITS = ("train", "test")

IMAGE_SIZE = 32
IMAGE_SHAPE = (IMAGE_SIZE, IMAGE_SIZE, 3)
TARGET_RADIUS = (7.0, 10.0)  # circumradius in pixels
DISTRACTOR_RADIUS = (2.5, 3.5)
SHAPE_GAP = 2.0  # pixels kept free between the circumcircles of any two shapes
SIDES = {"square": 4, "triangle": 3}
IMAGE_NOISE_STD = 12.0  # grey levels

SAMPLE_RATE = 8000
NUM_SAMPLES = 4000  # 0.5 s
AUDIO_FULL_SCALE = 32768  # int16 PCM: sample / AUDIO_FULL_SCALE lies in [-1, 1)
PITCH_BANDS = {"low": (300.0, 600.0), "high": (1200.0, 2400.0)}  # Hz, an octave each, an octave apart
BEEP_BAND = (200.0, 3200.0)  # spans both pitch bands
AUDIO_NOISE_STD = 0.03

COLOUR_WORDS = ("red", "green", "blue", "yellow", "purple", "orange", "pink", "grey")
# Kinds of shape that are never drawn, so naming them says nothing true about the image.
DISTRACTOR_SHAPE_WORDS = ("star", "hexagon", "heart", "cross", "crescent", "arrow")
CAPTION_TEMPLATES = (
    "the {colour} {thing} to the {word}",
    "{word} of the {colour} {thing}",
    "the {thing} pointing {word}",
    "the {colour} {thing} and the {other_colour} {other_thing} face {word}",
    "look {word} past the {thing}",
    "heading {word} with the {colour} {thing}",
    "the {word} side of the {colour} {other_thing}",
    "due {word}",
)


@dataclasses.dataclass
class MmShapesConfig(tfds.core.BuilderConfig):
  """What to generate. A data directory holds one build per config name: give other settings
  another name.

  Attributes:
    num_train: examples in the train split.
    num_test: examples in the test split.
    seed: seed of every random choice (non-negative).
    missing_fraction: fraction of the examples of each split with one random modality absent.
    noise: scale of the image and audio noise (0 turns it off, e.g. to check the content).
  """

  num_train: int = 3600
  num_test: int = 1200
  seed: int = 0
  missing_fraction: float = 0.0
  noise: float = 1.0

  def __post_init__(self):
    for field in ("num_train", "num_test"):
      if getattr(self, field) < 1:
        raise ValueError(f"mm_shapes config {field}: expected at least 1 example, got {getattr(self, field)}.")
    if self.seed < 0:
      raise ValueError(f"mm_shapes config seed: expected a non-negative int, got {self.seed}.")
    if not 0 <= self.missing_fraction <= 1:
      raise ValueError(f"mm_shapes config missing_fraction: expected a value in [0, 1], got {self.missing_fraction}.")
    if self.noise < 0:
      raise ValueError(f"mm_shapes config noise: expected a non-negative scale, got {self.noise}.")

  def settings(self) -> dict:
    """The generation settings (the fields above), as stored in the dataset's metadata.

    >>> MmShapesConfig(name="small", num_train=24, num_test=12).settings()
    {'num_train': 24, 'num_test': 12, 'seed': 0, 'missing_fraction': 0.0, 'noise': 1.0}
    """
    inherited = {field.name for field in dataclasses.fields(tfds.core.BuilderConfig)}
    return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name not in inherited}


def _colour(rng: np.random.Generator, value_range: tuple[float, float]) -> tuple[int, int, int]:
  """A random hue whose brightest channel lies in `value_range` (of 1)."""
  rgb = colorsys.hsv_to_rgb(rng.uniform(), rng.uniform(0.4, 1.0), rng.uniform(*value_range))
  return tuple(np.round(np.multiply(rgb, 255)).astype(int).tolist())


def _place(rng: np.random.Generator, placed: list[tuple[float, float, float]], radius: float, tries: int = 100):
  """A centre for a shape of `radius` inside the image and clear of the `placed` shapes, or None."""
  for _ in range(tries):
    x, y = rng.uniform(radius, IMAGE_SIZE - radius, size=2)
    if all(math.hypot(x - px, y - py) >= radius + pr + SHAPE_GAP for px, py, pr in placed):
      return x, y
  return None


def _layout(rng: np.random.Generator, num_distractors: int) -> list[tuple[float, float, float]]:
  """``(x, y, circumradius)`` of the target then of every distractor, none touching another."""
  while True:  # a large target near the centre can leave no room: then start over
    radius = rng.uniform(*TARGET_RADIUS)
    placed = [(*rng.uniform(radius, IMAGE_SIZE - radius, size=2), radius)]
    for _ in range(num_distractors):
      radius = rng.uniform(*DISTRACTOR_RADIUS)
      centre = _place(rng, placed, radius)
      if centre is None:
        break
      placed.append((*centre, radius))
    if len(placed) == num_distractors + 1:
      return placed


def render_image(rng: np.random.Generator, shape: int, noise: float = 1.0) -> np.ndarray:
  """An image whose large target shape is ``SHAPES[shape]``, with distractors and noise.

  Args:
    rng: the example's random stream.
    shape: index of the target's kind in `SHAPES`.
    noise: scale of the pixel noise (σ = ``noise * IMAGE_NOISE_STD``).

  Returns:
    ``uint8[32, 32, 3]``.

  >>> image = render_image(np.random.default_rng(0), shape=1)
  >>> image.shape, image.dtype
  ((32, 32, 3), dtype('uint8'))
  """
  background = _colour(rng, (0.05, 0.3))
  layout = _layout(rng, num_distractors=int(rng.integers(1, 3)))
  kinds = [SHAPES[shape]] + [SHAPES[k] for k in rng.integers(len(SHAPES), size=len(layout) - 1)]
  canvas = PIL.Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), background)
  draw = PIL.ImageDraw.Draw(canvas)
  for (x, y, radius), kind in zip(layout, kinds):
    colour = _colour(rng, (0.65, 1.0))
    if kind == "circle":
      draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    else:
      draw.regular_polygon((x, y, radius), SIDES[kind], rotation=rng.uniform(0, 360), fill=colour)
  pixels = np.asarray(canvas, np.float64) + rng.normal(0.0, noise * IMAGE_NOISE_STD, IMAGE_SHAPE)
  return np.clip(np.round(pixels), 0, 255).astype(np.uint8)


def _log_uniform(rng: np.random.Generator, band: tuple[float, float]) -> float:
  return float(np.exp(rng.uniform(np.log(band[0]), np.log(band[1]))))


def render_audio(rng: np.random.Generator, pitch: int, noise: float = 1.0) -> np.ndarray:
  """A clip whose loud, whole-length target tone lies in the band ``PITCHES[pitch]``, with a
  quieter short beep at a random frequency and white noise.

  Args:
    rng: the example's random stream.
    pitch: index of the target's band in `PITCHES`.
    noise: scale of the white noise (σ = ``noise * AUDIO_NOISE_STD`` of full scale).

  Returns:
    ``int16[NUM_SAMPLES]`` PCM at `SAMPLE_RATE`.

  >>> clip = render_audio(np.random.default_rng(0), pitch=0)
  >>> clip.shape, clip.dtype, int(np.abs(clip).max()) < AUDIO_FULL_SCALE
  ((4000,), dtype('int16'), True)
  """
  time = np.arange(NUM_SAMPLES) / SAMPLE_RATE
  amplitude = rng.uniform(0.2, 0.4)
  envelope = 1 + rng.uniform(0, 0.4) * np.sin(2 * np.pi * rng.uniform(1, 6) * time + rng.uniform(0, 2 * np.pi))
  frequency = _log_uniform(rng, PITCH_BANDS[PITCHES[pitch]])
  waveform = amplitude * envelope * np.sin(2 * np.pi * frequency * time + rng.uniform(0, 2 * np.pi))

  beep_length = int(rng.uniform(0.05, 0.15) * SAMPLE_RATE)
  start = int(rng.integers(NUM_SAMPLES - beep_length + 1))
  beep_frequency = _log_uniform(rng, BEEP_BAND)
  beep = np.hanning(beep_length) * np.sin(2 * np.pi * beep_frequency * time[:beep_length])
  waveform[start : start + beep_length] += rng.uniform(0.3, 0.6) * amplitude * beep

  waveform += rng.normal(0.0, noise * AUDIO_NOISE_STD, NUM_SAMPLES)
  # At most 0.4 · 1.4 (tone) + 0.24 (beep) + 5 σ of noise = 0.95 of full scale: clipping needs more noise.
  return np.clip(np.round(waveform * AUDIO_FULL_SCALE), -AUDIO_FULL_SCALE, AUDIO_FULL_SCALE - 1).astype(np.int16)


def render_caption(rng: np.random.Generator, word: int) -> str:
  """A caption holding the direction word ``WORDS[word]`` once, among words that carry nothing.

  Args:
    rng: the example's random stream.
    word: index of the direction in `WORDS`.

  Returns:
    Lower-case words separated by single spaces.

  >>> render_caption(np.random.default_rng(0), word=1).split().count("south")
  1
  """
  template = CAPTION_TEMPLATES[rng.integers(len(CAPTION_TEMPLATES))]
  colour, other_colour = rng.choice(COLOUR_WORDS, size=2, replace=False)
  thing, other_thing = rng.choice(DISTRACTOR_SHAPE_WORDS, size=2, replace=False)
  return template.format(
      word=WORDS[word], colour=colour, other_colour=other_colour, thing=thing, other_thing=other_thing
  )


def best_accuracies() -> dict[str, float]:
  """The best accuracy any classifier can reach from each non-empty subset of the modalities.

  A subset reveals the attributes its modalities carry; the class is then uniform over the
  combinations of the attributes it does not reveal.

  Returns:
    ``{"image": 0.25, …, "image+audio+caption": 1.0}``, keys joined with "+" in `MODALITIES` order.

  >>> best_accuracies()["image+caption"], round(best_accuracies()["audio+caption"], 3)
  (0.5, 0.333)
  """
  result = {}
  for size in range(1, len(MODALITIES) + 1):
    for subset in itertools.combinations(MODALITIES, size):
      hidden = [len(ATTRIBUTES[CARRIER[m]]) for m in MODALITIES if m not in subset]
      result["+".join(subset)] = 1 / math.prod(hidden)
  return result


def best_accuracy_as_built(missing_fraction: float) -> float:
  """The best accuracy from all modalities when `missing_fraction` of the examples lack one
  (uniformly chosen) of them.

  >>> round(best_accuracy_as_built(0.2), 4)
  0.8889
  """
  ceilings = best_accuracies()
  without_one = [ceilings["+".join(m for m in MODALITIES if m != absent)] for absent in MODALITIES]
  return (1 - missing_fraction) * ceilings["+".join(MODALITIES)] + missing_fraction * float(np.mean(without_one))


def make_split(config: MmShapesConfig, split: str) -> dict[str, np.ndarray]:
  """Generates a split in memory: what the builder stores, as arrays.

  Args:
    config: sizes, seed, missing fraction and noise.
    split: one of `SPLITS`.

  Returns:
    ``{"image": uint8[N, 32, 32, 3], "audio": int16[N, NUM_SAMPLES], "caption": str[N],
    "label", "shape", "pitch", "word": int64[N], "<modality>_present": bool[N]}``.

  >>> split = make_split(MmShapesConfig(name="tiny", num_train=24, num_test=12), "test")
  >>> split["audio"].shape, np.bincount(split["label"]).tolist() == [1] * 12
  ((12, 4000), True)
  """
  if split not in SPLITS:
    raise ValueError(f"mm_shapes split: expected one of {SPLITS}, got {split!r}.")
  size = config.num_train if split == "train" else config.num_test
  stream = SPLITS.index(split)
  # Stream (seed, split, 0) draws the split's labels and absences; (seed, split, 1, index) draws the
  # rest of example `index`, so the examples do not depend on the order in which they are generated.
  split_rng = np.random.default_rng((config.seed, stream, 0))
  labels = split_rng.permutation(np.arange(size) % len(CLASS_NAMES))
  # Class index = (shape * |PITCHES| + pitch) * |WORDS| + word, the order of itertools.product.
  shape, pitch, word = np.unravel_index(labels, (len(SHAPES), len(PITCHES), len(WORDS)))

  images, clips, captions = [], [], []
  for index in range(size):
    rng = np.random.default_rng((config.seed, stream, 1, index))
    images.append(render_image(rng, shape[index], config.noise))
    clips.append(render_audio(rng, pitch[index], config.noise))
    captions.append(render_caption(rng, word[index]))
  split_data = {
      "image": np.stack(images),
      "audio": np.stack(clips),
      "caption": np.array(captions, dtype=object),
      "label": labels.astype(np.int64),
      "shape": shape.astype(np.int64),
      "pitch": pitch.astype(np.int64),
      "word": word.astype(np.int64),
  }

  present = np.ones((size, len(MODALITIES)), bool)
  num_missing = int(round(config.missing_fraction * size))
  present[split_rng.permutation(size)[:num_missing], split_rng.integers(len(MODALITIES), size=num_missing)] = False
  for column, modality in enumerate(MODALITIES):
    split_data[f"{modality}_present"] = present[:, column]
    split_data[modality][~present[:, column]] = "" if modality == "caption" else 0
  return split_data


class MmShapes(tfds.core.GeneratorBasedBuilder):
  """Shapes, tones and direction words whose combination is the class; generated, no download."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [
      MmShapesConfig(name="default", description="3,600 train / 1,200 test, every modality present"),
      MmShapesConfig(name="missing", missing_fraction=0.2, description="as default, one modality absent in 20%"),
  ]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=IMAGE_SHAPE),
            # A plain tensor: tfds.features.Audio needs TensorFlow even for raw arrays. Raw bytes,
            # because the default encoding writes every sample as an int64 (4× the disk, 3× the time).
            "audio": tfds.features.Tensor(
                shape=(NUM_SAMPLES,), dtype=np.int16, encoding=tfds.features.Encoding.BYTES,
                doc=f"int16 PCM at {SAMPLE_RATE} Hz; divide by {AUDIO_FULL_SCALE} for [-1, 1)",
            ),
            "caption": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
            **{attribute: np.int32 for attribute in ATTRIBUTES},
            **{f"{modality}_present": np.bool_ for modality in MODALITIES},
            "index": np.int32,  # position in `make_split`'s output (TFDS stores examples shuffled)
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # everything is generated
    config = self.builder_config
    splits = {split: make_split(config, split) for split in SPLITS}
    train = splits["train"]
    self.info.metadata.update({
        "class_names": list(CLASS_NAMES),
        "attributes": {attribute: list(values) for attribute, values in ATTRIBUTES.items()},
        "moments": {
            "image": statistics.image_moments(train["image"][train["image_present"]]),
            "audio": statistics.moments(train["audio"][train["audio_present"]] / AUDIO_FULL_SCALE, channel_axis=None),
        },
        "vocabulary": {"caption": statistics.vocabulary(train["caption"][train["caption_present"]])},
        "sample_rate": {"audio": SAMPLE_RATE},
        "best_accuracy": best_accuracies(),
        "best_accuracy_as_built": best_accuracy_as_built(config.missing_fraction),
        "config": config.settings(),
    })
    return {split: self._generate_examples(examples) for split, examples in splits.items()}

  def _generate_examples(self, examples):
    for index in range(len(examples["label"])):
      example = {name: values[index] for name, values in examples.items()}
      # A PIL image: TFDS encodes those to PNG with Pillow, NumPy arrays only with TensorFlow.
      example["image"] = PIL.Image.fromarray(example["image"], mode="RGB")
      yield index, {**example, "index": index}


def prepare(data_dir: str, config: str | MmShapesConfig = "default") -> MmShapes:
  """Builds `mm_shapes` into `data_dir` unless it is there already; returns the builder.

  Args:
    data_dir: root of the TFDS data directory.
    config: a builder config or the name of a registered one (``"default"``, ``"missing"``).

  Returns:
    The prepared builder.

  Raises:
    ValueError: when `data_dir` holds a build of the same config name with other settings.
  """
  builder = MmShapes(data_dir=data_dir, config=config, file_format="array_record")
  if builder.is_prepared():
    built, wanted = builder.info.metadata["config"], builder.builder_config.settings()
    differing = {k: (built[k], v) for k, v in wanted.items() if built[k] != v}
    if differing:
      described = ", ".join(f"{k}={b} (not {w})" for k, (b, w) in differing.items())
      raise ValueError(
          f"mm_shapes config {builder.builder_config.name!r} in {data_dir} was built with {described}; "
          "give these settings another config name or data_dir."
      )
    return builder
  logging.info("Building mm_shapes into %s", builder.data_dir)
  # TFDS reports its progress on stdout, which belongs to the caller (the CLI prints JSON there).
  with contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare()
  return builder
