"""benchmarks/fusion.py end to end at a tiny size: its runs, its JSON, its table and its resume."""

import json

import pytest

from benchmarks import fusion as benchmark
from mmjax.fusion import FUSIONS

pytestmark = pytest.mark.slow


def test_run_names_cover_every_fusion_every_proper_subset_and_dropout():
  names = benchmark.run_names()
  assert [n for n in names if n.startswith("fusion/")] == [f"fusion/{f}" for f in FUSIONS]
  assert sorted(n for n in names if n.startswith("subset/")) == sorted(
      f"subset/{s}" for s in ("image", "audio", "caption", "image+audio", "image+caption", "audio+caption")
  )
  assert "dropout/early" in names


def test_run_configs_differ_only_where_the_run_says(tmp_path):
  args = benchmark.parse_args(["--data-dir", str(tmp_path)])
  early = benchmark.run_config("fusion/early", 1, args)
  pair = benchmark.run_config("subset/audio+caption", 1, args)
  dropout = benchmark.run_config("dropout/early", 1, args)
  assert early.seed == 1 and early.model.fusion == "early" and not early.data.modality_dropout
  assert tuple(pair.model.modalities) == ("audio", "caption") and sorted(pair.data.modalities) == ["audio", "caption"]
  assert dict(dropout.data.modality_dropout) == {m: args.dropout for m in benchmark.MODALITIES}
  assert benchmark.run_config("fusion/graph", 1, args).model.fusion == "graph"
  gmu = benchmark.run_config("fusion/gmu", 1, args)
  assert gmu.model.fusion == "gmu" and tuple(gmu.model.modalities) == ("image", "audio")


def test_benchmark_writes_json_and_table_and_skips_measured_runs(shapes_dir, tmp_path):
  out, doc = tmp_path / "fusion.json", tmp_path / "fusion.md"
  doc.write_text(f"# Fusion\n\nbefore\n{benchmark.START}\nold table\n{benchmark.END}\nafter\n")
  argv = ["--steps", "4", "--seeds", "0", "--runs", "fusion/mean", "subset/caption", "--batch-size", "16",
          "--features", "8", "--width", "8", "--data-dir", shapes_dir, "--compile-cache", "",
          "--out", str(out), "--table", str(doc), "--workdir", str(tmp_path / "runs")]
  benchmark.main(argv)

  results = json.loads(out.read_text())
  assert results["settings"]["steps"] == 4
  records = {r["run"]: r for r in results["records"]}
  assert set(records) == {"fusion/mean", "subset/caption"}
  fused, caption = records["fusion/mean"], records["subset/caption"]
  assert {f"accuracy_without/{m}" for m in benchmark.MODALITIES} <= set(fused)
  assert not any(k.startswith("accuracy_without") for k in caption)  # one modality: nothing to drop
  for record in (fused, caption):
    assert 0 <= record["accuracy"] <= 1 and record["num_examples"] == 1200
    assert record["parameters"] > 0 and record["step_seconds_median"] > 0 and record["seed"] == 0
  assert fused["parameters"] > caption["parameters"]  # three encoders against one

  text = doc.read_text()
  assert text.startswith("# Fusion\n\nbefore\n") and text.endswith("after\n") and "old table" not in text
  rows = [line for line in text.splitlines() if line.startswith("| `")]
  assert [row.split("|")[1].strip() for row in rows] == ["`fusion/mean`", "`subset/caption`"]
  assert f"{fused['accuracy']:.3f}" in rows[0] and "—" in rows[1]

  # Measured runs are not trained again.
  benchmark.main(argv)
  assert json.loads(out.read_text())["records"] == results["records"]


def test_table_reports_mean_and_half_range_over_seeds():
  records = [
      {"run": "fusion/sum", "seed": s, "accuracy": a, "parameters": 10, "step_seconds_median": 0.01,
       "user_cpu_seconds": 20.0 + s,
       **{f"accuracy_without/{m}": 0.5 for m in benchmark.MODALITIES}}
      for s, a in enumerate((0.6, 0.8, 0.7))
  ]
  row = benchmark.table(records).splitlines()[2]
  assert row == "| `fusion/sum` | 3 | 0.700 ± 0.100 | 0.500 ± 0.000 | 0.500 ± 0.000 | 0.500 ± 0.000 | 10 | 10 | 21 |"
