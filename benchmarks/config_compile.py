"""First-step compilation time of every ``configs/*`` run (issue 12 target: ≤ 3 s each).

Each config trains 2 steps the way `mmjax.experiment.train` does (no checkpoints, no periodic
evaluation) while a `jax.monitoring` listener records XLA's backend compilation events; the
report gives, per config, the compile time of the train step (``jit(train_step)``) and of
everything compiled for the run (initialisation, evaluation, …), and apart from them what the
reference classifiers of a generative config compiled while they were trained first.
Compilation is mostly single-threaded, but on a loaded machine its wall time still grows with the
load: the load average is recorded alongside. A config whose data cannot be built here (``mmvae_mnist_svhn``
needs the real MNIST and SVHN) is reported as skipped, with the reason.

With ``--compilation-cache-dir`` the runs use JAX's persistent compilation cache there, as the
``mmjax`` command does by default: run it twice and the second run reports what a resumed or
repeated run pays (``train_step_s`` is then the time to load the step from the cache).

Usage::

  MMJAX_DATA_DIR=/tmp/data python -m benchmarks.config_compile [--configs clip_digits fusion_shapes]
"""

import argparse
import collections
import glob
import importlib
import json
import os
import re
import sys
import tempfile

import jax
from jax._src import dispatch  # the event name of a backend compilation

from mmjax import experiment
from mmjax.schema import ConfigError
from mmjax.train import loop

# Recorded by JAX on a persistent-cache hit: the compile time the original compilation took.
COMPILE_TIME_SAVED_EVENT = "/jax/compilation_cache/compile_time_saved_sec"


def _is_run_config(path: str) -> bool:
  """A config file defines ``get_config()`` with no argument; helpers that configs build on
  (``vae_digits_base.get_config(family, ...)``) are not runs."""
  with open(path) as f:
    return re.search(r"^def get_config\(\)", f.read(), re.MULTILINE) is not None


CONFIGS = sorted(
    os.path.basename(p)[:-3]
    for p in glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py"))
    if _is_run_config(p)
)


def measure(name: str, data_dir: str) -> dict:
  """Compile seconds by function name for a 2-step run of ``configs/<name>.py``.

  A generative config first trains the reference classifiers that judge it (as `experiment.train`
  does); their compilations, their own ``jit(train_step)`` included, are reported apart, so that
  ``train_step_s`` is the config's own step.
  """
  config = importlib.import_module(f"configs.{name}").get_config()
  config.data.data_dir = data_dir
  config.train.update(num_steps=2, log_every=1, eval_every=None, checkpoint_every=1000, progress_bar=False)
  config.optimizer.warmup_steps = 1  # must stay below num_steps
  durations = {"references": collections.defaultdict(float), "run": collections.defaultdict(float)}
  saved = [0.0]
  phase = "references"

  def listen(event, duration, **metadata):
    if event == dispatch.BACKEND_COMPILE_EVENT:
      durations[phase][metadata.get("fun_name", "?")] += duration
    elif event == COMPILE_TIME_SAVED_EVENT and phase == "run":
      saved[0] += duration

  jax.monitoring.register_event_duration_secs_listener(listen)
  try:
    with tempfile.TemporaryDirectory() as workdir:
      run = experiment.build(config, workdir=workdir)
      if run.references is not None:
        run.references.prepare()
      phase = "run"
      loop.train(config, workdir, run.model, run.data)
  finally:
    jax.monitoring.unregister_event_duration_listener(listen)
  by_function = durations["run"]
  return {"train_step_s": by_function.get("jit(train_step)"), "all_compilation_s": sum(by_function.values()),
          "by_function_s": dict(sorted(by_function.items(), key=lambda kv: -kv[1])),
          "reference_classifiers_compilation_s": sum(durations["references"].values()),
          "compile_time_saved_by_cache_s": saved[0]}


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--configs", nargs="+", choices=CONFIGS, default=CONFIGS)
  parser.add_argument("--data-dir", default=os.environ.get("MMJAX_DATA_DIR", ""))
  parser.add_argument("--compilation-cache-dir", default=None, help="use JAX's persistent compilation cache there")
  parser.add_argument("--output", default=os.path.join(os.path.dirname(__file__), "results", "config_compile.json"))
  args = parser.parse_args(argv)
  jax.config.update("jax_compilation_cache_dir", args.compilation_cache_dir)
  report = {"load_average_at_start": os.getloadavg(), "compilation_cache_dir": args.compilation_cache_dir, "configs": {}}
  for name in args.configs:
    try:
      report["configs"][name] = measure(name, args.data_dir)
    except ConfigError as error:  # e.g. a dataset that needs a download this machine cannot make
      report["configs"][name] = {"skipped": str(error)}
    print(name, json.dumps(report["configs"][name]), flush=True)
  report["load_average_at_end"] = os.getloadavg()
  with open(args.output, "w") as f:
    json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
