"""Real two-process runs on 127.0.0.1 (CPU collectives over gloo).

A two-process run equals a one-process run: both use 4 devices, one process with 4 simulated
devices or two processes with 2 each. Each process reads only its rows of every global batch, so
equal losses show the global batch, the collectives, the collective checkpoint and the single log
writer are right. And two `mmjax train` processes started through the MMJAX_* variables alone form
one run, which stops as one when only one of them (the coordinator or the other) is sent SIGTERM.
"""

import json
import os
import signal
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest

from mmjax import experiment
from tests.training_processes import cpu_environment, start_cli_training, wait_for_step

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "multihost_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _start(devices, *args):
  return subprocess.Popen(
      [sys.executable, WORKER, *args], env=cpu_environment(devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
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


def _start_through_the_environment(data_dir, workdir, *overrides):
  """`mmjax train` as two processes that know of each other only through the MMJAX_* variables
  (the config's ``distributed`` section is left as it is: off)."""
  address = f"127.0.0.1:{_free_port()}"
  return [
      start_cli_training(
          data_dir, workdir, *overrides,
          env=cpu_environment(2, MMJAX_COORDINATOR_ADDRESS=address, MMJAX_NUM_PROCESSES="2", MMJAX_PROCESS_ID=str(i)),
      )
      for i in range(2)
  ]


def _outputs(processes, timeout):
  """Each process's (exit status, stdout, stderr); a process still running after `timeout` seconds
  is killed, and reported by its status -9."""
  outputs = []
  for process in processes:
    try:
      out, err = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      out, err = process.communicate()
    outputs.append((process.returncode, out, err))
  return outputs


def _preempt_one_process(data_dir, workdir: str, signalled: int) -> tuple[int, list[dict]]:
  """Starts a 2-process run, sends SIGTERM to process `signalled` alone after step 3, and checks
  that both stop at the same step with status 75 and one checkpoint. Returns that step and the
  logged records."""
  processes = _start_through_the_environment(data_dir, workdir)
  wait_for_step(workdir, 3, processes[0])  # process 0 writes the logs
  processes[signalled].send_signal(signal.SIGTERM)
  outputs = _outputs(processes, timeout=120)  # stopping takes seconds; a process left alone trains on

  logged = _records(workdir)
  stopped_at = logged[-1]["step"]
  for index, (status, _, err) in enumerate(outputs):
    assert f"mmjax: process {index} of 2 joined" in err, err[-3000:]
    assert status == 75, (index, err[-3000:])
    expected = f"stopped by SIGTERM to process {signalled} after step {stopped_at}; checkpoint {stopped_at} saved"
    assert expected in err, err[-3000:]
    assert "Traceback" not in err
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(stopped_at)]
  assert [r["step"] for r in logged] == list(range(1, stopped_at + 1))
  return stopped_at, logged


@pytest.mark.slow
def test_sigterm_to_the_coordinator_alone_stops_both_at_the_same_step(data_dir, tmp_path):
  _preempt_one_process(data_dir, str(tmp_path / "run"), signalled=0)


@pytest.mark.slow
def test_sigterm_to_one_process_stops_both_at_the_same_step_and_the_run_resumes(data_dir, tmp_path):
  workdir = str(tmp_path / "run")
  stopped_at, logged = _preempt_one_process(data_dir, workdir, signalled=1)  # not the coordinator

  # Both go on from that checkpoint: the lines logged before it are kept as they were (their
  # wall-clock fields included), and the two processes end with one evaluation.
  restarted = _start_through_the_environment(data_dir, workdir, f"--config.train.num_steps={stopped_at + 2}")
  outputs = _outputs(restarted, timeout=600)
  for status, _, err in outputs:
    assert status == 0, err[-3000:]
  resumed = _records(workdir)
  assert resumed[:stopped_at] == logged
  assert [r["step"] for r in resumed] == list(range(1, stopped_at + 3))
  # The CLI prints the evaluation last, after gloo's connection messages.
  evaluations = [json.loads(out[out.index("{\n"):]) for _, out, _ in outputs]
  assert evaluations[0] == evaluations[1] and evaluations[0]["step"] == stopped_at + 2
