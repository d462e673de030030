"""The ``mmjax`` command line.

    mmjax train --config configs/clip_digits.py --workdir runs/clip [--config.key=value ...]
    mmjax eval --workdir runs/clip [--step N]

``train`` resumes from the workdir's latest checkpoint if there is one and prints the final
evaluation as JSON; ``eval`` evaluates a checkpoint of a finished or running workdir.

Exit status: 0 done; 2 bad usage, config, workdir or checkpoints (nothing was trained); 1 stopped
on non-finite values (last good state saved); 75 (EX_TEMPFAIL) stopped by SIGTERM/SIGINT after
saving a checkpoint: run the same command again to continue.

Compiled programs are kept on disk (``--compilation_cache_dir``, JAX's persistent compilation
cache), so a resumed run, or another run of the same model and batch shapes, loads its train step
instead of compiling it again. Programs on CPU run synchronously, and the trainer keeps freed host
memory for reuse (`mmjax.cpu_runtime`): steps stop page-faulting their buffers in again.
"""

import json
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

COMMANDS = ("train", "eval")
EXIT_INTERRUPTED = 75  # EX_TEMPFAIL: try again later

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to an ml_collections config file.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and results.")
_STEP = flags.DEFINE_integer("step", None, "eval: the checkpoint step to evaluate (default: latest).")
_COMPILATION_CACHE_DIR = flags.DEFINE_string(
    "compilation_cache_dir", os.path.join("~", ".cache", "mmjax", "jax-compilation"),
    "Where compiled programs are kept between runs, so that a resumed or repeated run skips "
    "compilation ('' turns it off). Unless this flag is given, $JAX_COMPILATION_CACHE_DIR wins.",
)


def _usage() -> str:
  return __doc__.split("\n\n")[1]


def _run(command: str) -> None:
  _use_compilation_cache()  # before anything, mmjax's imports included, compiles
  from mmjax import cpu_runtime

  cpu_runtime.use_synchronous_dispatch()  # before JAX's CPU client exists (docs/performance.md)
  # Imported after flag parsing, so `--help` and flag errors come back at once.
  from mmjax import experiment, schema
  from mmjax.train import checkpoints, faults

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # Orbax and TFDS are chatty at INFO
  if not _WORKDIR.value:
    raise app.UsageError("--workdir is required.")
  try:
    if command == "train":
      if _CONFIG.value is None:
        raise app.UsageError("train needs --config.")
      metrics = experiment.train(_CONFIG.value, _WORKDIR.value)
    else:
      metrics = experiment.evaluate(_WORKDIR.value, _STEP.value)
  except (schema.ConfigError, checkpoints.CheckpointError, FileNotFoundError) as error:
    _fail(command, error, 2)
  except faults.NonFiniteError as error:
    _fail(command, error, 1)
  except faults.Interrupted as error:
    _fail(command, error, EXIT_INTERRUPTED)
  print(json.dumps(metrics, indent=2))


def _use_compilation_cache() -> None:
  """Points JAX's persistent compilation cache at the flag's directory, before anything compiles."""
  import jax

  given = flags.FLAGS["compilation_cache_dir"].present
  if given or not os.environ.get("JAX_COMPILATION_CACHE_DIR"):
    jax.config.update("jax_compilation_cache_dir", os.path.expanduser(_COMPILATION_CACHE_DIR.value) or None)


def _fail(command: str, error: Exception, status: int) -> None:
  logging.error("%s", error)
  print(f"mmjax {command}: {error}", file=sys.stderr)
  sys.exit(status)


def _config_path(argv: list[str]) -> str | None:
  """The file named by ``--config=PATH[:ARG]`` or ``--config PATH[:ARG]`` (not the overrides)."""
  for index, arg in enumerate(argv):
    if arg.startswith("--config="):
      return arg.split("=", 1)[1].split(":")[0]
    if arg == "--config" and index + 1 < len(argv):
      return argv[index + 1].split(":")[0]
  return None


def _let_config_import_its_siblings(argv: list[str]) -> None:
  """Puts the folder above the config's folder on the import path, so that a config can build on
  another as `configs/mvae_digits.py` does (``from configs import vae_digits_base``) wherever
  `mmjax` is started from: the console script's own folder, not the working directory, is first
  on its path."""
  path = _config_path(argv)
  if path:
    root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
    if root not in sys.path:
      sys.path.append(root)  # after the installed packages, which it must not shadow


def _parse_flags(argv: list[str]) -> list[str]:
  _let_config_import_its_siblings(argv)
  try:
    return app.parse_flags_with_usage(argv)
  except AttributeError as error:
    # ml_collections reports an override of a key the config lacks as an AttributeError.
    detail = " ".join(str(error).encode().decode("unicode_escape").replace("'", "").split())
    print(f"FATAL Flags parsing error: unknown key in a --config override: {detail}", file=sys.stderr)
    sys.exit(2)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] not in COMMANDS:
    print(f"usage:\n{_usage()}\n\ncommands: {', '.join(COMMANDS)}", file=sys.stderr)
    sys.exit(2)
  command = argv.pop(1)
  app.run(lambda _: _run(command), argv=argv, flags_parser=_parse_flags)


if __name__ == "__main__":
  main()
