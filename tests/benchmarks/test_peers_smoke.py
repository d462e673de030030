"""Smoke test of the peer benchmark suite (`benchmarks.peers`): the mmjax side of every case
builds, compiles and steps at tiny sizes, and the report holds what docs/performance.md shows.
The PyTorch sides run only where torch is installed (the ``bench`` extra)."""

import importlib.util
import json

import pytest

from benchmarks import peers


def test_quick_suite_reports_every_case(tmp_path):
  output = tmp_path / "peers.json"
  # --plain-runtime: the settings are process-wide, and this process runs the other tests too.
  report = peers.main(["--quick", "--plain-runtime", "--output", str(output)])
  assert json.loads(output.read_text()) == json.loads(json.dumps(report))
  assert set(report["cases"]) == set(peers.CASES)
  assert report["matmul_gflops_per_s"] > 0
  for case, result in report["cases"].items():
    mmjax = result["mmjax"]
    assert result["parameters"] > 0, case
    assert 0 < mmjax["min_ms"] <= mmjax["median_ms"] <= mmjax["max_ms"], case
    assert mmjax["compile_s"] > 0 and result["step_flops"] > 0, case
    assert mmjax["fraction_of_matmul"] > 0, case
    assert "peer" not in result  # --quick times the mmjax side only


@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="the PyTorch peers need the bench extra")
def test_peer_has_the_same_parameters():
  from benchmarks.peer_cases import harness

  mmjax_side, torch_side = peers.case_sides("mvae", quick=False)
  compiled = harness.compile_mmjax(mmjax_side)
  assert compiled.parameters == torch_side.parameters
  torch_side.step()
