"""Peak memory and time of dense vs chunked CLIP (softmax) and SigLIP (sigmoid) losses.

Each configuration is ``jax.jit(jax.value_and_grad(loss, argnums=all))``: the loss and its
gradients w.r.t. both ``[B, D]`` embeddings, the log-scale and (SigLIP) the bias, as in a training
step. Memory is XLA's own accounting of the compiled program (`Compiled.memory_analysis()`):

* ``temp_bytes``: ``temp_size_in_bytes``, the buffers the program allocates while it runs;
* ``peak_bytes``: ``argument_size_in_bytes + output_size_in_bytes + temp_size_in_bytes -
  alias_size_in_bytes``, everything live at once in the worst case.

Every configuration is compiled (which needs no memory for the data, so the dense loss is
analysed even where it could never run); it is run only when its temporaries fit under
``--fit-gib``. Times are the median of ``--repeats`` runs after ``--warmup`` runs, the
configurations of one (loss, B) taking turns run by run so that a change in machine load touches
them alike. Above ``--sweep-up-to`` only the default chunk size is timed (the others are still
compiled and analysed): at B = 65,536 one run is four 65,536 × 65,536 × 256 matrix products.

Usage::

  python benchmarks/contrastive_memory.py                       # the full run (10 to 20 minutes on 2 cores)
  python benchmarks/contrastive_memory.py --sizes 4096 --chunk-sizes 512 --repeats 2
"""

import argparse
import datetime
import functools
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import losses
from mmjax.losses.chunked import DEFAULT_CHUNK_SIZE

GIB = 2**30
MIB = 2**20

# Each loss: (dense function, chunked function, number of scalar arguments after the embeddings).
LOSSES = {
    "clip": (losses.clip_loss, losses.chunked_clip_loss, 1),
    "siglip": (losses.siglip_loss, losses.chunked_siglip_loss, 2),
}
# The initial scalars of CLIP (1/0.07) and SigLIP (scale 10, bias -10).
SCALARS = {"clip": (np.log(1 / 0.07),), "siglip": (np.log(10.0), -10.0)}


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384, 65536], help="global batch sizes B")
  parser.add_argument("--dim", type=int, default=256, help="embedding dimension D")
  parser.add_argument("--chunk-sizes", type=int, nargs="+", default=[256, 512, 1024, 2048])
  parser.add_argument("--losses", nargs="+", choices=sorted(LOSSES), default=sorted(LOSSES))
  parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (the median is kept)")
  parser.add_argument("--warmup", type=int, default=1, help="untimed runs before the timed ones")
  parser.add_argument("--fit-gib", type=float, default=12.0, help="run only programs whose temporaries fit under this")
  parser.add_argument(
      "--sweep-up-to", type=int, default=16384, help=f"above this B, time only chunk size {DEFAULT_CHUNK_SIZE}"
  )
  parser.add_argument(
      "--output",
      default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results", "contrastive_memory.json"),
  )
  return parser.parse_args(argv)


def _machine() -> dict:
  return {
      "cpu_count": os.cpu_count(),
      "processor": platform.processor() or platform.machine(),
      "platform": platform.platform(),
      "python": platform.python_version(),
      "jax_version": jax.__version__,
      "jaxlib_version": jax.lib.__version__,
      "device": str(jax.devices()[0]),
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      "load_average_start": os.getloadavg(),
  }


def _memory(compiled) -> dict:
  analysis = compiled.memory_analysis()
  memory = {
      "argument_bytes": analysis.argument_size_in_bytes,
      "output_bytes": analysis.output_size_in_bytes,
      "temp_bytes": analysis.temp_size_in_bytes,
      "alias_bytes": analysis.alias_size_in_bytes,
  }
  memory["peak_bytes"] = memory["argument_bytes"] + memory["output_bytes"] + memory["temp_bytes"] - memory["alias_bytes"]
  return memory


def _inputs(loss: str, batch: int, dim: int, concrete: bool) -> tuple:
  scalars = tuple(jnp.float32(value) for value in SCALARS[loss])
  if not concrete:
    embedding = jax.ShapeDtypeStruct((batch, dim), jnp.float32)
    return (embedding, embedding, *scalars)
  keys = jax.random.split(jax.random.key(batch), 2)
  # Unit-norm rows, as the dual-encoder models produce them.
  image, text = (jax.random.normal(key, (batch, dim), jnp.float32) for key in keys)
  return (image / jnp.linalg.norm(image, axis=1, keepdims=True), text / jnp.linalg.norm(text, axis=1, keepdims=True), *scalars)


def _configs(loss: str, batch: int, args: argparse.Namespace) -> list[dict]:
  dense, chunked, num_scalars = LOSSES[loss]
  configs = [{"loss": loss, "batch": batch, "method": "dense", "chunk_size": None, "fn": dense}]
  for chunk in args.chunk_sizes:
    fn = functools.partial(chunked, chunk_size=chunk)
    configs.append({"loss": loss, "batch": batch, "method": "chunked", "chunk_size": chunk, "fn": fn})
  for config in configs:
    config["argnums"] = tuple(range(2 + num_scalars))
  return configs


def _skip_reason(config: dict, args: argparse.Namespace) -> str | None:
  if config["memory"]["temp_bytes"] > args.fit_gib * GIB:
    return f"does not fit: temporaries over {args.fit_gib:g} GiB"
  if config["method"] == "chunked" and config["batch"] > args.sweep_up_to and config["chunk_size"] != DEFAULT_CHUNK_SIZE:
    return f"not timed: chunk sweep only up to B={args.sweep_up_to}"
  return None


def _time_group(configs: list[dict], inputs: tuple, args: argparse.Namespace) -> None:
  """Runs the configurations in turn, `warmup` untimed then `repeats` timed rounds."""
  runnable = [config for config in configs if config["skipped"] is None]
  for config in runnable:
    config["times_s"] = []
  for round_index in range(args.warmup + args.repeats):
    for config in runnable:
      start = time.perf_counter()
      jax.block_until_ready(config["compiled"](*inputs))
      if round_index >= args.warmup:
        config["times_s"].append(time.perf_counter() - start)
  for config in runnable:
    config["median_s"] = statistics.median(config["times_s"])


def run(args: argparse.Namespace) -> list[dict]:
  results = []
  for loss in args.losses:
    for batch in args.sizes:
      configs = _configs(loss, batch, args)
      shapes = _inputs(loss, batch, args.dim, concrete=False)
      for config in configs:
        step = jax.jit(jax.value_and_grad(config["fn"], argnums=config["argnums"]))
        config["compiled"] = step.lower(*shapes).compile()
        config["memory"] = _memory(config["compiled"])
        config["skipped"] = _skip_reason(config, args)
        config["times_s"], config["median_s"] = [], None
      if any(config["skipped"] is None for config in configs):
        _time_group(configs, _inputs(loss, batch, args.dim, concrete=True), args)
      for config in configs:
        results.append({key: value for key, value in config.items() if key not in ("fn", "compiled", "argnums")})
        print(_row(results[-1], results), file=sys.stderr, flush=True)
  return results


def _dense(result: dict, results: list[dict]) -> dict:
  return next(r for r in results if r["loss"] == result["loss"] and r["batch"] == result["batch"] and r["method"] == "dense")


def _row(result: dict, results: list[dict]) -> str:
  memory = result["memory"]
  dense = _dense(result, results)
  time_text = "—" if result["median_s"] is None else f"{result['median_s']:.3f}"
  if result["method"] == "dense":
    ratio, reduction = "", ""
  else:
    both_timed = result["median_s"] is not None and dense["median_s"] is not None
    ratio = f"{result['median_s'] / dense['median_s']:.2f}×" if both_timed else "—"
    reduction = f"{dense['memory']['peak_bytes'] / memory['peak_bytes']:.0f}×"
  note = result["skipped"] or ""
  chunk = "" if result["chunk_size"] is None else str(result["chunk_size"])
  return (
      f"| {result['loss']} | {result['batch']:,} | {result['method']} | {chunk} | {memory['temp_bytes'] / MIB:,.1f} "
      f"| {memory['peak_bytes'] / MIB:,.1f} | {time_text} | {ratio} | {reduction} | {note} |"
  )


def table(results: list[dict]) -> str:
  """The results as a Markdown table, with chunked/dense time and dense/chunked peak memory."""
  header = (
      "| loss | B | method | chunk | temp (MiB) | peak (MiB) | median time (s) | time / dense | memory reduction | note |\n"
      "|---|---:|---|---:|---:|---:|---:|---:|---:|---|"
  )
  return "\n".join([header] + [_row(result, results) for result in results])


def main(argv=None) -> dict:
  """Runs the benchmark, writes the JSON report, prints the Markdown table; returns the report."""
  args = parse_args(argv)
  machine = _machine()
  results = run(args)
  machine["load_average_end"] = os.getloadavg()
  settings = {key: value for key, value in vars(args).items() if key != "output"}
  settings["default_chunk_size"] = DEFAULT_CHUNK_SIZE
  settings["peak_bytes"] = "argument_size_in_bytes + output_size_in_bytes + temp_size_in_bytes - alias_size_in_bytes"
  report = {"machine": machine, "settings": settings, "results": results}
  os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
  with open(args.output, "w") as file:
    json.dump(report, file, indent=2)
  print(table(results))
  return report


if __name__ == "__main__":
  main()
