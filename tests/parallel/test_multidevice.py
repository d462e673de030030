"""Runs every ``multidevice`` test in a separate pytest process that simulates 8 CPU devices.

JAX fixes the device count when it starts, so these tests cannot share a process with the
single-device ones. Run them directly with
``MMJAX_TEST_DEVICES=8 python -m pytest -m multidevice``.
"""

import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_multidevice_suite_on_8_simulated_devices():
  # CPU pinned, like the multi-host test: the simulated devices are host devices, and a machine
  # with an accelerator would otherwise run these on its one real device.
  env = {**os.environ, "MMJAX_TEST_DEVICES": "8", "JAX_PLATFORMS": "cpu"}
  env.pop("PYTEST_XDIST_WORKER", None)
  done = subprocess.run(
      [sys.executable, "-m", "pytest", "-m", "multidevice", "-p", "no:xdist", "-q", "-o", "addopts=--import-mode=importlib", "tests", "mmjax"],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200,
  )
  summary = done.stdout[-6000:]
  assert done.returncode == 0, summary + done.stderr[-3000:]
  assert " passed" in summary, summary
