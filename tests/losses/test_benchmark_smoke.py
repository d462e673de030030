"""The contrastive-memory benchmark runs end to end at a tiny size and writes its JSON report."""

import json

from benchmarks import contrastive_memory
from mmjax.losses.chunked import DEFAULT_CHUNK_SIZE


def test_benchmark_writes_report_at_tiny_size(tmp_path, capsys):
  output = tmp_path / "report.json"
  argv = ["--sizes", "64", "256", "--dim", "16", "--chunk-sizes", "32", str(DEFAULT_CHUNK_SIZE)]
  argv += ["--repeats", "2", "--sweep-up-to", "64", "--output", str(output)]
  contrastive_memory.main(argv)

  report = json.loads(output.read_text())
  assert {"cpu_count", "jax_version", "date"} <= set(report["machine"])
  results = report["results"]
  # Two losses × two sizes × (dense + two chunk sizes).
  assert len(results) == 12
  peak = {(r["loss"], r["batch"], r["chunk_size"]): r["memory"]["peak_bytes"] for r in results}
  for result in results:
    assert result["memory"]["temp_bytes"] > 0
    if result["method"] == "chunked" and result["chunk_size"] < result["batch"]:
      # What the benchmark is for: chunks smaller than the batch need less memory than the dense
      # loss (XLA's compiled memory analysis, not a formula of the benchmark's own).
      assert result["memory"]["peak_bytes"] < peak[(result["loss"], result["batch"], None)], result
    if result["skipped"] is None:
      assert len(result["times_s"]) == 2 and result["median_s"] > 0
    else:
      assert result["median_s"] is None
  # Above --sweep-up-to only the default chunk size is timed.
  skipped = {(r["loss"], r["batch"], r["chunk_size"]) for r in results if r["skipped"]}
  assert skipped == {("clip", 256, 32), ("siglip", 256, 32)}
  assert "| loss | B | method |" in capsys.readouterr().out
