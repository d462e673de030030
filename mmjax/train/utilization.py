"""How well a run uses its devices: FLOPs of the compiled step, model FLOPs utilisation (MFU) and
the fraction of wall time spent waiting for the input pipeline.

MFU is the FLOP rate a step achieves (XLA's cost analysis of the compiled step, which counts the
FLOPs of one device's program, over the step's wall time) divided by the device's peak. Peaks are
dense bfloat16 matrix-multiply rates from the vendors' data sheets, so a float32 run reads lower;
CPUs have no fixed peak: set ``train.peak_flops_per_device`` (e.g. a measured matmul rate) to get
an MFU there.
"""

from collections.abc import Sequence

import jax

# Dense bf16 peak FLOP/s per device, by a substring of `jax.Device.device_kind` (first match wins).
PEAK_FLOPS = (
    ("H200", 989e12),
    ("H100", 989e12),  # SXM; the PCIe card peaks at 756e12
    ("A100", 312e12),
    ("L4", 121e12),
    ("TPU v6", 918e12),
    ("TPU v5p", 459e12),
    ("TPU v5", 197e12),  # v5e ("TPU v5 lite")
    ("TPU v4", 275e12),
)


def peak_flops(device: jax.Device, override: float | None = None) -> float | None:
  """Peak FLOP/s of `device`: `override` if given, else the data-sheet value, else None.

  >>> peak_flops(jax.devices("cpu")[0]) is None, peak_flops(jax.devices("cpu")[0], 2e11)
  (True, 200000000000.0)
  """
  if override:
    return float(override)
  return next((peak for kind, peak in PEAK_FLOPS if kind in device.device_kind), None)


def step_flops(compiled: jax.stages.Compiled) -> float | None:
  """FLOPs of one device's program of a compiled step, from XLA's cost analysis (None if unknown)."""
  analysis = compiled.cost_analysis()
  if isinstance(analysis, Sequence):  # older JAX versions return one dict per program
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


def window_metrics(seconds: float, waiting: float, steps: int, flops: float | None, peak: float | None) -> dict[str, float]:
  """Utilisation over a window of `steps` steps that took `seconds`, `waiting` of them in the
  input pipeline.

  >>> window_metrics(seconds=2.0, waiting=0.5, steps=4, flops=1e12, peak=4e12)
  {'input_wait_fraction': 0.25, 'tflops_per_device': 2.0, 'mfu': 0.5}
  """
  metrics = {"input_wait_fraction": waiting / seconds if seconds > 0 else 0.0}
  if flops and seconds > 0:
    rate = flops * steps / seconds
    metrics["tflops_per_device"] = rate / 1e12
    if peak:
      metrics["mfu"] = rate / peak
  return metrics
