"""A real two-process run on 127.0.0.1 (CPU collectives over gloo) equals a one-process run.

Both runs use 4 devices: one process with 4 simulated devices, or two processes with 2 each. Each
process reads only its rows of every global batch, so equal losses show the global batch, the
collectives, the collective checkpoint and the single log writer are right.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax import experiment

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(devices, *args):
  inherited = os.environ.get("XLA_FLAGS", "").split()
  flags = " ".join(f for f in inherited if not f.startswith("--xla_force_host_platform_device_count"))
  env = {**os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu"}
  env.pop("MMJAX_TEST_DEVICES", None)
  return subprocess.Popen(
      [sys.executable, WORKER, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
  )


def _finish(process):
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-4000:]


def _records(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


@pytest.mark.slow
def test_two_processes_match_one_process(data_dir, tmp_path):
  single, multi = str(tmp_path / "single"), str(tmp_path / "multi")
  address = f"127.0.0.1:{_free_port()}"
  processes = [_start(2, data_dir, multi, address, "2", str(i)) for i in range(2)]
  reference = _start(4, data_dir, single)
  for process in processes + [reference]:
    _finish(process)

  expected, got = _records(single), _records(multi)
  assert [r["step"] for r in got] == [r["step"] for r in expected] == list(range(1, 7))
  for a, b in zip(expected, got):
    np.testing.assert_allclose(b["loss"], a["loss"], rtol=1e-5)
    np.testing.assert_allclose(b["grad_norm"], a["grad_norm"], rtol=1e-5)
  for key in ("eval/zeroshot_top1", "eval/i2t_r5", "eval/t2i_r5"):
    np.testing.assert_allclose(got[-1][key], expected[-1][key], atol=1e-6)

  # The checkpoint the two processes wrote together holds the same parameters.
  one_device = {"devices": jax.devices()[:1], "mesh": {"data": -1, "fsdp": 1, "model": 1}}
  _, _, single_state = experiment.restore(single, **one_device)
  _, _, multi_state = experiment.restore(multi, **one_device)
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["3", "6"]
  for a, b in zip(jax.tree.leaves(jax.device_get(single_state)), jax.tree.leaves(jax.device_get(multi_state))):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
