"""Starting and watching real training processes, for the tests that signal, kill or join them."""

import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `configs/clip_digits.py` shrunk as `tests.conftest.small_config` shrinks it, as CLI overrides; a
# long run (2,000 steps), logged every step, for tests that stop it themselves.
SMALL_CLI_OVERRIDES = (
    "--config.data.batch_size=32", "--config.model.embed_dim=16", "--config.model.encoders.text.gru.width=16",
    "--config.model.encoders.image.conv.channels=(8,16)", "--config.model.encoders.image.conv.strides=(1,2)",
    "--config.optimizer.warmup_steps=2", "--config.train.log_every=1", "--config.train.eval_every=1000",
    "--config.train.checkpoint_every=100", "--config.train.eval_batch_size=128", "--config.train.num_steps=2000",
    "--config.train.progress_bar=False",  # its lines would fill the pipe the tests read at the end
)


def cpu_environment(devices: int, **variables: str) -> dict[str, str]:
  """This process's environment for a child on `devices` simulated CPU devices, plus `variables`.

  The device count replaces any inherited one (the multi-device session's), and JAX is kept off
  accelerators so that processes on one machine never compete for one."""
  inherited = os.environ.get("XLA_FLAGS", "").split()
  flags = " ".join(f for f in inherited if not f.startswith("--xla_force_host_platform_device_count"))
  environment = {
      **os.environ, "XLA_FLAGS": f"{flags} --xla_force_host_platform_device_count={devices}", "JAX_PLATFORMS": "cpu",
      **variables,
  }
  environment.pop("MMJAX_TEST_DEVICES", None)
  return environment


def start_cli_training(data_dir: str, workdir: str, *overrides: str, env: dict[str, str] | None = None) -> subprocess.Popen:
  """`mmjax train` of the small clip_digits config (`SMALL_CLI_OVERRIDES`, then `overrides`)."""
  return subprocess.Popen(
      [sys.executable, "-m", "mmjax.cli", "train", "--config", "configs/clip_digits.py", "--workdir", workdir,
       *SMALL_CLI_OVERRIDES, *overrides],
      cwd=ROOT, env={**(env or os.environ), "MMJAX_DATA_DIR": data_dir},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
  )


def wait_for_step(workdir: str, step: int, process: subprocess.Popen, timeout: float = 300) -> None:
  """Returns once `workdir/metrics.jsonl` holds `step` lines; fails if `process` ends first."""
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while time.time() < deadline:
    assert process.poll() is None, process.communicate()[1][-3000:]
    if os.path.exists(path):
      with open(path) as f:
        if sum(1 for _ in f) >= step:
          return
    time.sleep(0.2)
  raise TimeoutError(f"no step {step} in {timeout} s")
