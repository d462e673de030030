"""mmjax against the PyTorch models users would otherwise pick: same architecture, batch and
optimizer, timed in one process, the two sides taking turns of a few consecutive steps, the first
step of each turn untimed (`harness.time_in_turns`; issue 12).

For each case (`benchmarks.peer_cases`) it reports per side the median, min and max step time,
the speed-up (peer time / mmjax time), the parameter count (asserted equal on both sides), the
mmjax step's first compilation time, and its achieved FLOP/s (XLA's cost analysis of the compiled
step over the median step time) as a fraction of the float32 matmul rate measured in the same run.
The PyTorch sides need the ``bench`` extra (torch, open-clip-torch, multivae).

Usage::

  python -m benchmarks.peers                        # every case, both sides; writes the JSON
  python -m benchmarks.peers --cases clip_mini --steps 10
  python -m benchmarks.peers --quick                # mmjax side only, tiny sizes (the CI smoke test)
  python -m benchmarks.peers --plain-runtime        # without mmjax.cpu_runtime's settings
"""

import argparse
import datetime
import importlib
import json
import os
import platform
import sys

import jax

from benchmarks.peer_cases import harness
from mmjax import cpu_runtime

CASES = ("clip_mini", "mvae", "mmvae", "fusion_tensor", "fusion_attention")
# Modules by case: a module may give several cases (``variant`` selects).
MODULES = {
    "clip_mini": ("clip_mini", None),
    "mvae": ("vae", "mvae"),
    "mmvae": ("vae", "mmvae"),
    "fusion_tensor": ("fusion", "tensor"),
    "fusion_attention": ("fusion", "attention"),
}
RESULTS = os.path.join(os.path.dirname(__file__), "results", "peers.json")


def parse_args(argv=None) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
  parser.add_argument("--steps", type=int, default=20, help="timed steps per side")
  parser.add_argument("--warmup", type=int, default=3, help="untimed steps per side after compilation")
  parser.add_argument("--turn-steps", type=int, default=4, help="timed steps per side per turn")
  parser.add_argument("--settle-steps", type=int, default=1,
                      help="untimed steps starting each turn (0 with --turn-steps 1: the old step-by-step turns)")
  parser.add_argument("--plain-runtime", action="store_true",
                      help="leave out mmjax.cpu_runtime's settings, which the mmjax command applies (glibc's reach the peer too)")
  parser.add_argument("--quick", action="store_true", help="mmjax side only, tiny sizes, 2 steps; writes nothing unless --output")
  parser.add_argument("--output", default=None, help=f"JSON path (default without --quick: {RESULTS})")
  return parser.parse_args(argv)


def case_sides(case: str, quick: bool):
  """``(MmjaxSide, TorchSide or None)`` of one case."""
  module_name, variant = MODULES[case]
  module = importlib.import_module(f"benchmarks.peer_cases.{module_name}")
  extra = {} if variant is None else {"variant": variant}
  mmjax_side = module.mmjax_side(quick=quick, **extra)
  return mmjax_side, None if quick else module.torch_side(**extra)


def machine() -> dict:
  info = {"platform": platform.platform(), "python": platform.python_version(), "jax": jax.__version__,
          "device": jax.devices()[0].device_kind, "cpu_count": os.cpu_count()}
  if hasattr(os, "getloadavg"):
    info["load_average_at_start"] = os.getloadavg()
  try:
    import torch

    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:
    pass
  return info


def table(report: dict) -> str:
  """The report as the Markdown table of docs/performance.md."""
  lines = [
      "| case | parameters | mmjax ms (median, min–max) | peer ms (median, min–max) | speed-up | CPU ms/step mmjax / peer "
      "| compile s (wall / CPU) | GFLOP/s | of matmul |",
      "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  span = lambda side: f"{side['median_ms']:.1f} ({side['min_ms']:.1f}–{side['max_ms']:.1f})"  # noqa: E731
  for case, result in report["cases"].items():
    mmjax, peer = result["mmjax"], result.get("peer")
    peer_cells = f"{span(peer)} | {result['speedup']:.2f}× | {mmjax['median_cpu_ms']:.0f} / {peer['median_cpu_ms']:.0f}" if peer else (
        f"— | — | {mmjax['median_cpu_ms']:.0f} / —")
    lines.append(f"| {case} | {result['parameters']:,} | {span(mmjax)} | {peer_cells} | ")
    lines[-1] += (f"{mmjax['compile_s']:.1f} / {mmjax['compile_cpu_s']:.1f} | {mmjax.get('gflops_per_s', 0):.1f} | "
                  f"{100 * mmjax.get('fraction_of_matmul', 0):.0f}% |")
  return "\n".join(lines)


def main(argv=None) -> dict:
  args = parse_args(argv)
  steps, warmup = (2, 1) if args.quick else (args.steps, args.warmup)
  # As the mmjax command runs (mmjax.cpu_runtime); the allocator settings are process-wide, so the
  # peer runs with them too. Before anything starts JAX's CPU client (`machine()` does), or the
  # dispatch setting would not take.
  if not args.plain_runtime:
    cpu_runtime.use_synchronous_dispatch()
  report = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": machine(), "steps": steps, "warmup": warmup, "turn_steps": args.turn_steps,
            "settle_steps": args.settle_steps, "quick": args.quick}
  if not args.plain_runtime:
    report["kept_freed_host_memory"] = jax.default_backend() == "cpu" and cpu_runtime.keep_freed_host_memory()
  report["synchronous_cpu_dispatch"] = not jax.config.read("jax_cpu_enable_async_dispatch")
  start_cpu = os.times()
  report["matmul_gflops_per_s"] = harness.matmul_flops_per_second(256 if args.quick else 1024) / 1e9
  report["cases"] = {}
  for case in args.cases:
    mmjax_side, torch_side = case_sides(case, args.quick)
    result = harness.run_case(mmjax_side, torch_side, steps, warmup, report["matmul_gflops_per_s"] * 1e9,
                              args.turn_steps, args.settle_steps)
    report["cases"][case] = result
    print(case, json.dumps(result), flush=True)
  end_cpu = os.times()
  report["process_cpu_s"] = {"user": end_cpu.user - start_cpu.user, "system": end_cpu.system - start_cpu.system,
                             "wall": end_cpu.elapsed - start_cpu.elapsed}
  if hasattr(os, "getloadavg"):
    report["machine"]["load_average_at_end"] = os.getloadavg()
  print(f"float32 matmul: {report['matmul_gflops_per_s']:.1f} GFLOP/s")
  print(table(report))
  output = args.output or (None if args.quick else RESULTS)
  if output:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
      json.dump(report, f, indent=2)
  return report


if __name__ == "__main__":
  main(sys.argv[1:])
