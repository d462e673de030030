"""Readouts of a conditional GAN's samples: are they of the class asked for, do the generated
modalities agree, are they as varied as the real data (mode collapse shows as a low diversity)?

Classes are those a reference classifier trained on real data (`mmjax.reference_classifiers`)
assigns to generated samples; the functions here take those predictions as NumPy arrays.
"""

import numpy as np

from mmjax import checks
from mmjax.eval.images import image_grid


def conditional_accuracy(predicted, requested) -> float:
  """The fraction of generated samples whose predicted class is the class they were generated for.

  Args:
    predicted: ``int[N]`` classes a reference classifier assigns to the samples.
    requested: ``int[N]`` classes the generator was conditioned on.

  Returns:
    The accuracy in ``[0, 1]``.

  >>> conditional_accuracy(np.array([0, 1, 2, 2]), np.array([0, 1, 2, 1]))
  0.75
  """
  predicted, requested = np.asarray(predicted), np.asarray(requested)
  bound = checks.check_shape("conditional_accuracy: predicted", predicted, ("N",))
  checks.check_shape("conditional_accuracy: requested", requested, ("N",), bound)
  return float(np.mean(predicted == requested))


def pair_consistency(first, second) -> float:
  """How often the two generated modalities of a sample are of the same class.

  Args:
    first: ``int[N]`` classes of the first modality (predicted, or generated for a label).
    second: ``int[N]`` classes of the second modality.

  Returns:
    The agreement in ``[0, 1]``.

  >>> pair_consistency(np.array([3, 3, 1]), np.array([3, 2, 1]))
  0.6666666666666666
  """
  first, second = np.asarray(first), np.asarray(second)
  bound = checks.check_shape("pair_consistency: first", first, ("N",))
  checks.check_shape("pair_consistency: second", second, ("N",), bound)
  return float(np.mean(first == second))


def mean_pairwise_distance(samples) -> float:
  """The mean Euclidean distance between distinct samples ``[N, …]`` (N ≥ 2), each flattened.

  >>> mean_pairwise_distance(np.array([[0.0, 0.0], [3.0, 4.0]]))
  5.0
  """
  x = np.asarray(samples, np.float64)
  if x.ndim < 1 or x.shape[0] < 2:
    raise ValueError(f"mean_pairwise_distance: samples: expected shape (N >= 2, ...), got {x.shape}.")
  x = x.reshape(x.shape[0], -1)
  squared = np.sum(x**2, 1)
  distances = np.sqrt(np.maximum(squared[:, None] + squared[None, :] - 2 * x @ x.T, 0.0))
  count = x.shape[0]
  return float((distances.sum() - np.trace(distances)) / (count * (count - 1)))


def diversity_ratio(generated, generated_classes, real, real_classes, num_classes: int) -> float:
  """Same-class spread of generated samples relative to real data's: the mean over classes of
  ``mean_pairwise_distance(generated of c) / mean_pairwise_distance(real of c)``.

  About 1 when samples vary as much as the data within a class; near 0 under mode collapse
  (every sample of a class alike). Classes with fewer than two samples on either side are left out.

  Args:
    generated: ``[N, …]`` generated samples.
    generated_classes: ``int[N]`` their classes.
    real: ``[M, …]`` real samples, same per-sample shape.
    real_classes: ``int[M]`` their classes.
    num_classes: the number of classes.

  Returns:
    The ratio (NaN if no class has two samples on both sides).

  >>> real = np.array([[0.0], [2.0], [10.0], [14.0]])
  >>> generated = np.array([[0.0], [1.0], [10.0], [10.0]])
  >>> diversity_ratio(generated, np.array([0, 0, 1, 1]), real, np.array([0, 0, 1, 1]), 2)  # (1/2 + 0/4) / 2
  0.25
  """
  generated, real = np.asarray(generated), np.asarray(real)
  generated_classes, real_classes = np.asarray(generated_classes), np.asarray(real_classes)
  bound = checks.check_shape("diversity_ratio: generated", generated, ("N", *real.shape[1:]))
  checks.check_shape("diversity_ratio: generated_classes", generated_classes, ("N",), bound)
  bound = checks.check_shape("diversity_ratio: real", real, ("M", *generated.shape[1:]))
  checks.check_shape("diversity_ratio: real_classes", real_classes, ("M",), bound)
  ratios = []
  for c in range(num_classes):
    fake_c, real_c = generated[generated_classes == c], real[real_classes == c]
    if len(fake_c) >= 2 and len(real_c) >= 2:
      ratios.append(mean_pairwise_distance(fake_c) / max(mean_pairwise_distance(real_c), 1e-12))
  return float(np.mean(ratios)) if ratios else float("nan")


def class_grid(images) -> np.ndarray:
  """``[K, n, H, W, C]`` images (n samples of each of K classes) as one uint8 grid, a row per class,
  scaled together by their own min and max.

  >>> class_grid(np.zeros((3, 2, 4, 4, 1))).shape
  (16, 11, 1)
  """
  images = np.asarray(images)
  checks.check_shape("class_grid: images", images, ("K", "n", None, None, None))
  classes, per_class = images.shape[:2]
  return image_grid(images.reshape(classes * per_class, *images.shape[2:]), columns=per_class)
