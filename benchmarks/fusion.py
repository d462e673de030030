"""Every fusion and every subset of modalities trained on mm_shapes with one budget: the comparison.

Each run is `configs/fusion_shapes.py` shrunk to the budget below (``--steps``, encoder widths,
batch size) and trained in-process by `mmjax.experiment.train`; only the fusion, the model's
modalities or ``data.modality_dropout`` change between runs, and every run is repeated with each
of ``--seeds`` (the seed draws the initial parameters and the batch order). The runs:

* ``fusion/<name>``: every fusion of `mmjax.fusion.FUSIONS` on image, audio and caption (``gmu``,
  a fusion of exactly two modalities, on image and audio: see `TWO_MODALITY_FUSIONS`);
* ``subset/<modalities>``: each single modality and each pair, fused by ``early`` (the class
  needs all three, so these show the ceilings of `mmjax.data.mm_shapes.best_accuracies` in
  practice; all three together is ``fusion/early``);
* ``dropout/early``: early fusion trained with every modality dropped with probability
  ``--dropout`` (`data.modality_dropout`), to compare its ``accuracy_without/*`` with
  ``fusion/early``'s.

Every run records its test accuracy, ``accuracy_without/<modality>``, its parameter count, the
median seconds per training step over the logged windows (compilation excluded) and its user CPU
time. Results go to ``--out`` (JSON) after every run, so a sweep cut short keeps what it measured,
and runs already there are skipped when the sweep is started again; ``--table`` rewrites the part
of a markdown file between ``<!-- fusion-table -->`` markers with mean ± spread (half the range
over seeds) of each run.

Usage::

  nice -n 5 python -m benchmarks.fusion                        # all runs, seeds 0 1 2
  python -m benchmarks.fusion --steps 20 --runs fusion/early fusion/mean --seeds 0 --out /tmp/f.json
"""

import argparse
import itertools
import json
import os
import resource
import statistics
import tempfile
import time
from collections.abc import Sequence

import jax
import ml_collections

from configs import fusion_shapes
from mmjax import experiment
from mmjax.fusion import FUSIONS
from mmjax.train import loop

MODALITIES = ("image", "audio", "caption")
# The arguments that change what a run measures.
_BUDGET = ("steps", "batch_size", "features", "width", "dropout")
# Fusions of exactly two modalities (the GMU) run on the pair whose ceiling is highest (1/2).
TWO_MODALITY_FUSIONS = {"gmu": ("image", "audio")}
START, END = "<!-- fusion-table -->", "<!-- /fusion-table -->"


def run_names(modalities: Sequence[str] = MODALITIES) -> list[str]:
  """Every run of the comparison, in the order the sweep trains them."""
  subsets = [c for k in range(1, len(modalities)) for c in itertools.combinations(modalities, k)]
  return (
      [f"fusion/{name}" for name in FUSIONS]
      + [f"subset/{'+'.join(subset)}" for subset in subsets]
      + ["dropout/early"]
  )


def run_config(name: str, seed: int, args: argparse.Namespace) -> ml_collections.ConfigDict:
  """`configs/fusion_shapes.py` at the benchmark's budget, set up for run `name`."""
  config = fusion_shapes.get_config()
  config.seed = seed
  config.data.update(data_dir=args.data_dir, batch_size=args.batch_size)
  config.model.features = args.features
  encoders = config.model.encoders
  encoders.image.conv.channels = tuple(c * args.width // 64 for c in (16, 32, 64))
  encoders.audio.log_mel_cnn.channels = tuple(c * args.width // 64 for c in (16, 32))
  encoders.caption.gru.width = args.width
  config.optimizer.warmup_steps = max(1, args.steps // 12)
  config.train.update(dict(
      num_steps=args.steps, log_every=max(1, args.steps // 10), eval_every=None, checkpoint_every=args.steps,
      keep_checkpoints=1, async_checkpointing=False, progress_bar=False,
  ))
  kind, what = name.split("/")
  if kind == "subset":
    _read_only(config, tuple(what.split("+")))
    config.model.fusion = "early"
  elif kind == "dropout":
    config.model.fusion = what
    config.data.modality_dropout = {m: args.dropout for m in MODALITIES}
  elif kind == "fusion":
    config.model.fusion = what
    if what in TWO_MODALITY_FUSIONS:
      _read_only(config, TWO_MODALITY_FUSIONS[what])
  else:
    raise ValueError(f"unknown run {name!r}: expected one of {run_names()}")
  return config


def _read_only(config: ml_collections.ConfigDict, modalities: tuple[str, ...]) -> None:
  """Restricts the model to `modalities`; the data reads only them (the others would cost
  decoding for nothing)."""
  config.data.modalities = {m: config.data.modalities[m] for m in modalities}
  config.model.modalities = modalities
  config.model.encoders = {m: config.model.encoders[m] for m in modalities}


def _step_seconds(workdir: str) -> float:
  """Median seconds per step over the logged windows (each timed after compilation)."""
  with open(os.path.join(workdir, "metrics.jsonl"), encoding="utf-8") as f:
    rates = [record["steps_per_sec"] for record in map(json.loads, f) if "steps_per_sec" in record]
  return statistics.median(1 / rate for rate in rates)


def _parameters(config, run: experiment.Run) -> int:
  abstract = loop.Trainer(config, run.model, run.data).abstract_state  # shapes only: nothing is computed
  return sum(leaf.size for leaf in jax.tree.leaves(abstract.params))


def _user_cpu() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_utime


def train_one(name: str, seed: int, args: argparse.Namespace, workdir: str) -> dict:
  """Trains run `name` with `seed` in `workdir`; its record for the JSON."""
  wall, cpu = time.perf_counter(), _user_cpu()
  config = run_config(name, seed, args)
  # What `experiment.train` does for a classifier (it has no reference classifiers), keeping the
  # built run to count its parameters.
  run = experiment.build(config, None, workdir)
  evaluation = loop.train(config, workdir, run.model, run.data)
  return {
      "run": name,
      "seed": seed,
      **{k: v for k, v in evaluation.items() if k.startswith("accuracy")},
      "loss": evaluation["loss"],
      "num_examples": evaluation["num_examples"],
      "parameters": _parameters(config, run),
      "step_seconds_median": _step_seconds(workdir),
      "wall_seconds": time.perf_counter() - wall,
      "user_cpu_seconds": _user_cpu() - cpu,
  }


def _mean_spread(values: Sequence[float]) -> str:
  mean = statistics.fmean(values)
  if len(values) == 1:
    return f"{mean:.3f}"
  return f"{mean:.3f} ± {(max(values) - min(values)) / 2:.3f}"


def table(records: Sequence[dict]) -> str:
  """A markdown table: one row per run (in `run_names` order), mean ± half the range over seeds of
  the accuracies, the median over seeds of the step time and of the user CPU time of a whole run
  (building, compiling, training, evaluating)."""
  by_run: dict[str, list[dict]] = {}
  for record in records:
    by_run.setdefault(record["run"], []).append(record)
  order = {name: i for i, name in enumerate(run_names())}
  header = ["run", "seeds", "accuracy"] + [f"without {m}" for m in MODALITIES] + ["parameters", "ms / step", "CPU s / run"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for name in sorted(by_run, key=lambda n: order.get(n, len(order))):
    runs = by_run[name]
    cells = [f"`{name}`", str(len(runs)), _mean_spread([r["accuracy"] for r in runs])]
    for m in MODALITIES:
      key = f"accuracy_without/{m}"
      cells.append(_mean_spread([r[key] for r in runs]) if key in runs[0] else "—")
    cells.append(f"{runs[0]['parameters']:,}")
    cells.append(f"{statistics.median(r['step_seconds_median'] for r in runs) * 1e3:.0f}")
    cells.append(f"{statistics.median(r['user_cpu_seconds'] for r in runs):.0f}")
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_table(path: str, records: Sequence[dict]) -> None:
  """Replaces the text between the table markers of markdown file `path` with `table(records)`."""
  with open(path, encoding="utf-8") as f:
    text = f.read()
  if START not in text or END not in text:
    raise ValueError(f"{path} has no {START} … {END} markers to put the table between")
  head, rest = text.split(START, 1)
  _, tail = rest.split(END, 1)
  with open(path, "w", encoding="utf-8") as f:
    f.write(f"{head}{START}\n{table(records)}\n{END}{tail}")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--steps", type=int, default=300, help="training steps of every run")
  parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
  parser.add_argument("--runs", nargs="+", default=None, help=f"a subset of the runs (default all): {run_names()}")
  parser.add_argument("--batch-size", type=int, default=64)
  parser.add_argument("--features", type=int, default=32, help="encoder output and fusion width")
  parser.add_argument("--width", type=int, default=32, help="encoder width (64 is configs/fusion_shapes.py's)")
  parser.add_argument("--dropout", type=float, default=0.3, help="modality dropout of the dropout run")
  parser.add_argument("--data-dir", default="", help="TFDS data directory holding mm_shapes (default $MMJAX_DATA_DIR)")
  parser.add_argument("--workdir", default=None, help="where runs train (default a temporary directory)")
  parser.add_argument("--compile-cache", default=os.path.expanduser("~/.cache/mmjax/jax_compile"),
                      help="persistent JAX compilation cache directory ('' for none)")
  parser.add_argument("--out", default="benchmarks/results/fusion.json")
  parser.add_argument("--table", default=None, help="markdown file to write the table into (e.g. docs/fusion.md)")
  args = parser.parse_args(argv)
  unknown = sorted(set(args.runs or ()) - set(run_names()))
  if unknown:
    parser.error(f"unknown runs {unknown}; valid: {run_names()}")
  return args


def main(argv=None) -> dict:
  args = parse_args(argv)
  names = args.runs or run_names()
  if args.compile_cache:
    # Seeds of one run compile the same programs: the cache spares all but the first.
    jax.config.update("jax_compilation_cache_dir", args.compile_cache)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
  settings = {k: v for k, v in vars(args).items() if k in _BUDGET}
  results = {"settings": settings, "records": []}
  if os.path.exists(args.out):
    with open(args.out, encoding="utf-8") as f:
      previous = json.load(f)
    if previous.get("settings") == settings:  # another budget's runs are not comparable
      results = previous
  results["machine"] = {"devices": str(jax.devices()), "cpus": os.cpu_count()}
  done = {(r["run"], r["seed"]) for r in results["records"]}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with tempfile.TemporaryDirectory() as scratch:
    root = args.workdir or scratch
    # Seeds outermost: a sweep stopped early still holds every run at least once.
    for seed, name in itertools.product(args.seeds, names):
      if (name, seed) in done:
        continue
      record = train_one(name, seed, args, os.path.join(root, name.replace("/", "-"), str(seed)))
      print(json.dumps(record), flush=True)
      results["records"].append(record)
      with open(args.out, "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
  # Also when every run was already measured: a rerun with --table just rewrites the table.
  if args.table:
    write_table(args.table, [r for r in results["records"] if r["run"] in names])
  return results


if __name__ == "__main__":
  main()
