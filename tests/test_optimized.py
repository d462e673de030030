"""Runs the tests marked ``optimized`` again at XLA's default optimisation level, as users run.

The rest of the suite compiles with ``--xla_backend_optimization_level=0`` (tests/conftest.py):
faster to compile, but not the code users run, and fusion and contraction (FMA) decisions differ
between the levels. Bitwise resume, same-seed determinism and sharded = single-device are
therefore proven at both: here in a pytest process started with ``MMJAX_TEST_OPTIMIZED=1``
(on 8 simulated devices for the ``multidevice`` ones). Run them directly with
``MMJAX_TEST_OPTIMIZED=1 python -m pytest -m optimized`` (add ``MMJAX_TEST_DEVICES=8`` and
``-m "optimized and multidevice"`` for the sharded ones).
"""

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run_optimized(marker: str, **env) -> str:
  env = {**os.environ, "MMJAX_TEST_OPTIMIZED": "1", **env}
  env.pop("PYTEST_XDIST_WORKER", None)
  # The optimisation level this process was given (0) must not reach the child.
  env["XLA_FLAGS"] = " ".join(
      flag for flag in env.get("XLA_FLAGS", "").split() if "xla_backend_optimization_level" not in flag
  )
  done = subprocess.run(
      [sys.executable, "-m", "pytest", "-m", marker, "-p", "no:xdist", "-q", "-o", "addopts=--import-mode=importlib", "tests"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
  )
  summary = done.stdout[-6000:]
  assert done.returncode == 0, summary + done.stderr[-3000:]
  return summary


@pytest.mark.slow
def test_resume_and_determinism_hold_at_the_default_optimisation_level():
  summary = _run_optimized("optimized and not multidevice")
  assert "2 passed" in summary, summary


@pytest.mark.slow
def test_sharded_equals_single_device_at_the_default_optimisation_level():
  summary = _run_optimized("optimized and multidevice", MMJAX_TEST_DEVICES="8", JAX_PLATFORMS="cpu")
  assert "1 passed" in summary, summary
