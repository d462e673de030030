"""`mnist_svhn`: MNIST digits paired with SVHN house numbers of the same class (the MMVAE protocol).

Built from the TFDS datasets ``mnist`` and ``svhn_cropped``, which must already be prepared as
array_record in the same data directory (``tfds build mnist svhn_cropped --file_format=array_record``
on a machine that can download them; mmjax never downloads). Pairing, per split and per class
``c`` (Shi et al. 2019, ``make_mnist_svhn_idx.py`` of their code, ``rand_match_on_idx``):

1. take the indices of the MNIST and of the SVHN examples of class ``c`` in ascending order and
   keep the first ``n = min(#MNIST of c, #SVHN of c, max_per_class)`` of each;
2. ``pairs_per_example`` times, draw an independent random permutation of each of the two lists and
   pair them position by position.

So each kept MNIST image appears in exactly ``pairs_per_example`` pairs, each time with an SVHN
image of its class drawn anew (repeats possible, as in the paper), and vice versa; the examples of
a class beyond ``n`` are not used. The permutations come from ``numpy.random.default_rng((seed,
split, class))`` (a split's stream: 0 train, 1 test), so a pairing is fixed by the config's seed.

The dataset stores only the two source indices and the label of each pair; `prepare` returns a
`PairedDataset` that reads the images from the source datasets on access, so the pairs serve
``mnist`` (``uint8[28, 28, 1]``), ``svhn`` (``uint8[32, 32, 3]``) and ``label`` like any other
TFDS dataset. Pixel copies would cost 1,121,360 × 3,856 B ≈ 4.3 GB uncompressed for the
training pairs of the default config (arithmetic, not a measured build) and a PNG encoding of every
one, to duplicate images already on disk; the indices and label are three integers per pair. The
metadata holds the class names, the moments of the train images of each modality (over the
distinct images used) and the build settings.

With the full sources the default config (20 pairs, at most 10,000 per class) gives 1,121,360
train pairs (the sum over classes of the smaller class count, 56,068, times 20; computed from the
published class counts of both training sets, not built here).

>>> import numpy as np
>>> mnist, svhn = pair_indices(np.array([0, 1, 0, 1, 0]), np.array([1, 0, 0]), pairs=2,
...                            max_per_class=10, rng_for_class=lambda c: np.random.default_rng(c))
>>> sorted(mnist.tolist()), sorted(svhn.tolist())
([0, 0, 1, 1, 2, 2], [0, 0, 1, 1, 2, 2])
"""

import contextlib
import dataclasses
import io
from collections.abc import Callable, Sequence

from absl import logging
import numpy as np
import tensorflow_datasets as tfds

from mmjax.data import statistics

CLASS_NAMES = tuple(str(digit) for digit in range(10))
SOURCES = {"mnist": "mnist", "svhn": "svhn_cropped"}  # modality → TFDS dataset
IMAGE_SHAPES = {"mnist": (28, 28, 1), "svhn": (32, 32, 3)}
SPLITS = ("train", "test")


@dataclasses.dataclass
class MnistSvhnConfig(tfds.core.BuilderConfig):
  """How to pair. A data directory holds one build per config name: give other settings another name.

  Attributes:
    pairs_per_example: random permutations per class, i.e. pairs each kept image appears in (the
      paper's ``dm``).
    max_per_class: at most this many images of each class and dataset are kept (the paper's
      ``max_d``).
    seed: seed of the permutations (non-negative).
  """

  pairs_per_example: int = 20
  max_per_class: int = 10_000
  seed: int = 0

  def __post_init__(self):
    for field in ("pairs_per_example", "max_per_class"):
      if getattr(self, field) < 1:
        raise ValueError(f"mnist_svhn config {field}: expected at least 1, got {getattr(self, field)}.")
    if self.seed < 0:
      raise ValueError(f"mnist_svhn config seed: expected a non-negative int, got {self.seed}.")

  def settings(self) -> dict:
    """The pairing settings (the fields above), as stored in the dataset's metadata.

    >>> MnistSvhnConfig(name="small", pairs_per_example=2).settings()
    {'pairs_per_example': 2, 'max_per_class': 10000, 'seed': 0}
    """
    inherited = {field.name for field in dataclasses.fields(tfds.core.BuilderConfig)}
    return {field.name: getattr(self, field.name) for field in dataclasses.fields(self) if field.name not in inherited}


def pair_indices(
    labels_a: np.ndarray,
    labels_b: np.ndarray,
    pairs: int,
    max_per_class: int,
    rng_for_class: Callable[[int], np.random.Generator],
) -> tuple[np.ndarray, np.ndarray]:
  """Class-consistent random pairs of examples of two datasets (MMVAE's ``rand_match_on_idx``).

  Args:
    labels_a: ``int[N_a]`` class of every example of the first dataset.
    labels_b: ``int[N_b]`` class of every example of the second dataset.
    pairs: random permutations per class (pairs each kept example appears in).
    max_per_class: at most this many examples of each class and dataset are kept.
    rng_for_class: the random stream of a class.

  Returns:
    ``(index_a, index_b)``, ``int64[P]`` each, class by class in ascending order; ``labels_a[index_a]
    == labels_b[index_b]``.

  References:
    Shi, Siddharth, Paige & Torr, Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep
    Generative Models (MMVAE), NeurIPS 2019.
  """
  index_a, index_b = [], []
  for label in np.unique(labels_a):
    members_a, members_b = np.flatnonzero(labels_a == label), np.flatnonzero(labels_b == label)
    n = min(len(members_a), len(members_b), max_per_class)
    members_a, members_b = members_a[:n], members_b[:n]
    rng = rng_for_class(int(label))
    for _ in range(pairs):
      index_a.append(rng.permutation(members_a))
      index_b.append(rng.permutation(members_b))
  empty = np.zeros(0, np.int64)
  return np.concatenate(index_a or [empty]), np.concatenate(index_b or [empty])


def source(modality: str, split: str, data_dir: str) -> Sequence:
  """The prepared TFDS data source of `modality`'s dataset and `split` in `data_dir`.

  Args:
    modality: a key of `SOURCES` (``"mnist"`` or ``"svhn"``).
    split: a split of the source dataset (``"train"`` or ``"test"``).
    data_dir: root of the TFDS data directory.

  Returns:
    The split as a random-access sequence of examples (``image``, ``label``).

  Raises:
    FileNotFoundError: when the dataset is not prepared there as array_record.
  """
  name = SOURCES[modality]
  builder = tfds.builder(name, data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"mnist_svhn needs the TFDS dataset {name!r} prepared as array_record in {data_dir!r}: run "
        f"`tfds build {name} --file_format=array_record --data_dir=...` where it can be downloaded and copy it here."
    )
  return builder.as_data_source(split=split)


def _labels(examples: Sequence) -> np.ndarray:
  return np.asarray([example["label"] for example in examples], np.int64)


class MnistSvhn(tfds.core.GeneratorBasedBuilder):
  """Indices of MNIST–SVHN pairs of the same digit; read it through `PairedDataset` (`prepare`)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "First release."}
  BUILDER_CONFIGS = [MnistSvhnConfig(name="default", description="MMVAE protocol: 20 pairs per image, seed 0")]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "mnist_index": np.int32,
            "svhn_index": np.int32,
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        metadata=tfds.core.MetadataDict(),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the sources are read from the data directory
    config = self.builder_config
    sources_dir = str(self.data_dir_root)
    pairs = {}
    for stream, split in enumerate(SPLITS):
      examples = {modality: source(modality, split, sources_dir) for modality in SOURCES}
      examples = {m: s.__getitems__(list(range(len(s)))) for m, s in examples.items()}
      mnist, svhn = pair_indices(
          _labels(examples["mnist"]), _labels(examples["svhn"]), config.pairs_per_example, config.max_per_class,
          lambda label, stream=stream: np.random.default_rng((config.seed, stream, label)),
      )
      pairs[split] = (mnist, svhn, _labels(examples["mnist"])[mnist])
      if split == "train":
        used = {"mnist": np.unique(mnist), "svhn": np.unique(svhn)}
        self.info.metadata.update({
            "class_names": list(CLASS_NAMES),
            "moments": {
                m: statistics.image_moments(np.stack([examples[m][i]["image"] for i in used[m]])) for m in SOURCES
            },
            "config": config.settings(),
        })
    return {split: self._generate_examples(*columns) for split, columns in pairs.items()}

  def _generate_examples(self, mnist, svhn, labels):
    for index, (m, s, label) in enumerate(zip(mnist, svhn, labels)):
      yield index, {"mnist_index": m, "svhn_index": s, "label": label}


@dataclasses.dataclass(frozen=True)
class PairedInfo:
  """What `mmjax.data.dataset.MultimodalData` reads of a builder's info, for the paired view."""

  features: tfds.features.FeaturesDict
  metadata: dict
  full_name: str
  splits: object


class PairedSource:
  """A split of the pairs as a data source: each example holds both images, the label and the indices.

  Args:
    pairs: the built split's data source (``mnist_index``, ``svhn_index``, ``label``).
    images: ``{modality: data source of the source dataset's split}``.
  """

  def __init__(self, pairs: Sequence, images: dict[str, Sequence]):
    self._pairs = pairs
    self._images = images

  def __len__(self) -> int:
    return len(self._pairs)

  def __getitem__(self, index: int) -> dict:
    return self.__getitems__([index])[0]

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    pairs = self._pairs.__getitems__(list(indices))
    images = {
        m: self._images[m].__getitems__([int(pair[f"{m}_index"]) for pair in pairs]) for m in self._images
    }
    return [
        {**pair, **{m: images[m][row]["image"] for m in images}} for row, pair in enumerate(pairs)
    ]


class PairedDataset:
  """The built `MnistSvhn` index dataset read as image pairs, in the interface of a TFDS builder that
  `mmjax.data.dataset.MultimodalData` uses (``name``, ``data_dir``, ``info``, ``as_data_source``).

  Args:
    builder: the prepared `MnistSvhn` builder.
    sources_dir: the data directory holding the prepared ``mnist`` and ``svhn_cropped``.
  """

  def __init__(self, builder: MnistSvhn, sources_dir: str):
    self.builder = builder
    self.name = builder.name
    self.data_dir = builder.data_dir
    self._sources_dir = sources_dir
    features = tfds.features.FeaturesDict({
        **{m: tfds.features.Image(shape=shape) for m, shape in IMAGE_SHAPES.items()},
        "mnist_index": np.int32,
        "svhn_index": np.int32,
        "label": tfds.features.ClassLabel(names=CLASS_NAMES),
    })
    self.info = PairedInfo(features, builder.info.metadata, builder.info.full_name, builder.info.splits)

  def as_data_source(self, split: str) -> PairedSource:
    """The pairs of `split` (a TFDS split, slices such as ``"test[:10%]"`` allowed)."""
    base_split = split.split("[")[0]
    return PairedSource(
        self.builder.as_data_source(split=split),
        {m: source(m, base_split, self._sources_dir) for m in SOURCES},
    )


def prepare(data_dir: str, config: str | MnistSvhnConfig = "default") -> PairedDataset:
  """Builds the `mnist_svhn` pairs into `data_dir` unless they are there already.

  Args:
    data_dir: root of the TFDS data directory, which must hold ``mnist`` and ``svhn_cropped``
      prepared as array_record.
    config: a builder config or the name of a registered one (``"default"``).

  Returns:
    The pairs with their images, readable by `mmjax.data.dataset.MultimodalData`.

  Raises:
    FileNotFoundError: when a source dataset is not prepared in `data_dir`.
    ValueError: when `data_dir` holds a build of the same config name with other settings.
  """
  builder = MnistSvhn(data_dir=data_dir, config=config, file_format="array_record")
  if builder.is_prepared():
    built, wanted = builder.info.metadata["config"], builder.builder_config.settings()
    differing = {k: (built[k], v) for k, v in wanted.items() if built[k] != v}
    if differing:
      described = ", ".join(f"{k}={b} (not {w})" for k, (b, w) in differing.items())
      raise ValueError(
          f"mnist_svhn config {builder.builder_config.name!r} in {data_dir} was built with {described}; "
          "give these settings another config name or data_dir."
      )
  else:
    logging.info("Building mnist_svhn into %s", builder.data_dir)
    # TFDS reports its progress on stdout, which belongs to the caller (the CLI prints JSON there).
    with contextlib.redirect_stdout(io.StringIO()):
      builder.download_and_prepare()
  return PairedDataset(builder, data_dir)
