"""The `mmjax` command: train, resume, eval and clear failures, through real subprocesses."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--config.data.batch_size=32", "--config.model.embed_dim=16", "--config.model.encoders.text.gru.width=16",
    "--config.model.encoders.image.conv.channels=(8,16)", "--config.model.encoders.image.conv.strides=(1,2)",
    "--config.optimizer.warmup_steps=2", "--config.train.log_every=2", "--config.train.eval_every=4",
    "--config.train.checkpoint_every=4", "--config.train.eval_batch_size=128",
]


def _mmjax(*args, data_dir, cwd=ROOT, env=None):
  env = {**os.environ, "MMJAX_DATA_DIR": data_dir, **(env or {})}
  return subprocess.run(
      [sys.executable, "-m", "mmjax.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
  )


def _compiled_steps(cache: str) -> set[str]:
  return {name for name in os.listdir(cache) if name.startswith("jit_train_step-")} if os.path.isdir(cache) else set()


@pytest.mark.slow
def test_train_then_eval_then_resume_without_compiling_again(data_dir, tmp_path):
  # No $JAX_COMPILATION_CACHE_DIR (the suite's own cache), so the CLI's default cache in $HOME is used.
  env = {"HOME": str(tmp_path), "JAX_COMPILATION_CACHE_DIR": ""}
  cache = str(tmp_path / ".cache" / "mmjax" / "jax-compilation")
  workdir = str(tmp_path / "run")
  # A constant learning rate, so that the longer resumed run is the same program (a schedule's
  # length is compiled into the step).
  train = ("train", "--config", "configs/clip_digits.py", "--workdir", workdir, *SMALL, "--config.optimizer.schedule=constant")
  done = _mmjax(*train, "--config.train.num_steps=8", data_dir=data_dir, env=env)
  assert done.returncode == 0, done.stderr[-3000:]
  printed = json.loads(done.stdout)
  assert printed["step"] == 8 and "zeroshot_top1" in printed
  with open(os.path.join(workdir, "eval.json")) as f:
    assert json.load(f) == printed
  assert "step/s" in done.stderr  # the progress bar
  compiled = _compiled_steps(cache)
  assert len(compiled) == 1, os.listdir(cache) if os.path.isdir(cache) else "no cache directory"

  entries = set(os.listdir(cache))
  evaluated = _mmjax("eval", "--workdir", workdir, "--step", "4", "--compilation_cache_dir=", data_dir=data_dir, env=env)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads(evaluated.stdout)["step"] == 4
  assert set(os.listdir(cache)) == entries  # the cache was off

  resumed = _mmjax(*train, "--config.train.num_steps=12", data_dir=data_dir, env=env)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert json.loads(resumed.stdout)["step"] == 12
  assert _compiled_steps(cache) == compiled  # the resumed run loaded its step: it wrote none


@pytest.mark.parametrize(
    "args,message",
    [
        (["--config.train.num_stepz=3"], 'unknown key in a --config override: num_stepz Did you mean "num_steps"'),
        (["--config.model.loss=triplet"], "model.loss: 'triplet' is not a valid choice; valid choices: ['clip', 'nt_xent', 'siglip']"),
        (["--config.train.num_steps=abc"], "--config.train.num_steps=abc"),
    ],
)
def test_bad_overrides_fail_before_training(args, message, data_dir, tmp_path):
  done = _mmjax("train", "--config", "configs/clip_digits.py", "--workdir", str(tmp_path / "run"), *args, data_dir=data_dir)
  assert done.returncode != 0
  assert message in done.stderr
  assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("form", ["--config={}", "--config {}"])
def test_a_config_that_imports_its_siblings_loads_from_any_working_directory(form, data_dir, tmp_path):
  # mvae_digits_caption imports mvae_digits, which imports vae_digits_base: two levels.
  config = os.path.join(ROOT, "configs", "mvae_digits_caption.py")
  done = _mmjax("train", *form.format(config).split(), data_dir=data_dir, cwd=str(tmp_path))
  assert "ModuleNotFoundError" not in done.stderr, done.stderr[-3000:]
  assert "--workdir is required." in done.stderr  # the config loaded; the missing workdir is next


def test_eval_of_a_directory_without_a_run_says_so(data_dir, tmp_path):
  done = _mmjax("eval", "--workdir", str(tmp_path), data_dir=data_dir)
  assert done.returncode == 2 and "config.json not found" in done.stderr
