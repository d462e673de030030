"""Where training metrics go: ``metrics.jsonl``, TensorBoard event files, images and a progress bar.

``metrics.jsonl`` holds one JSON object per logged step: ``step``, ``loss``, ``learning_rate``,
throughput and utilisation (``input_wait_fraction``, ``tflops_per_device``, ``mfu``), the
model's other training metrics, and evaluation metrics (prefixed ``eval/``) when the step was
evaluated. Images an evaluation returns (sample grids) go to ``images/<step>/<name>.png`` and to
TensorBoard. Only process 0 writes.
"""

import json
import math
import os
from collections.abc import Mapping

import numpy as np
import tqdm

# Fields that measure the machine rather than the run: they differ between identical runs.
WALL_CLOCK_KEYS = ("examples_per_sec", "steps_per_sec", "input_wait_fraction", "tflops_per_device", "mfu")


def _jsonable(value):
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN/Inf; keep them visible rather than failing
  return value


class MetricWriter:
  """Appends metrics to ``workdir/metrics.jsonl`` and ``workdir/tb/``.

  On a resumed run, lines after `resume_step` (written after the checkpoint the run resumes from)
  are dropped, so every step is logged once.
  """

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if not enabled:
      return
    self._truncate_after(resume_step)
    from tensorboardX import SummaryWriter  # imported here: only the writing process needs it

    # purge_step hides events a previous attempt wrote after the checkpoint we resume from.
    self._tb = SummaryWriter(os.path.join(workdir, "tb"), purge_step=resume_step + 1 if resume_step else None)
    self._file = open(self.path, "a", encoding="utf-8")

  def _truncate_after(self, step: int) -> None:
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8") as f:
      kept = [line for line in f if (_complete_line_step(line) or step + 1) <= step]
    with open(self.path, "w", encoding="utf-8") as f:
      f.writelines(kept)

  def write(self, step: int, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    record = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
    self._file.write(json.dumps(record) + "\n")
    self._file.flush()
    for name, value in metrics.items():
      if isinstance(value, (int, float)) and not isinstance(value, bool):
        self._tb.add_scalar(name, value, step)
    self._tb.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]) -> None:
    """PNG files under ``images/<step>/`` and TensorBoard images of uint8 ``[H, W, C]`` arrays."""
    if not (self.enabled and images):
      return
    write_pngs(os.path.join(os.path.dirname(self.path), "images"), step, images)
    for name, image in images.items():
      self._tb.add_image(name, _hwc(image), step, dataformats="HWC")
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._file.close()
      self._tb.close()


def _hwc(image: np.ndarray) -> np.ndarray:
  return image[..., None] if image.ndim == 2 else image


def write_pngs(directory: str, step: int, images: Mapping[str, np.ndarray]) -> list[str]:
  """Writes uint8 ``[H, W]`` or ``[H, W, C]`` arrays as ``directory/<step>/<name>.png``."""
  import PIL.Image

  folder = os.path.join(directory, str(step))
  os.makedirs(folder, exist_ok=True)
  paths = []
  for name, image in images.items():
    path = os.path.join(folder, name.replace("/", "_") + ".png")
    image = _hwc(np.asarray(image, np.uint8))
    PIL.Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(path)
    paths.append(path)
  return paths


def _complete_line_step(line: str) -> int | None:
  """The step of a well-formed line, or None for a line cut short by a crash."""
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


class ProgressBar:
  """A tqdm bar over the steps with the latest loss and throughput; ETA comes from tqdm."""

  def __init__(self, total: int, initial: int, enabled: bool):
    self._bar = tqdm.tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True, disable=not enabled)

  def update(self, steps: int, metrics: Mapping[str, float] | None = None) -> None:
    self._bar.update(steps)
    if metrics:
      shown = {k: metrics[k] for k in ("loss", "examples_per_sec", "input_wait_fraction", "mfu") if k in metrics}
      self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)

  def close(self) -> None:
    self._bar.close()
