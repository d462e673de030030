"""`benchmarks.peer_cases.harness.time_in_turns`: who runs when, and which steps are timed."""

import time

import pytest

from benchmarks.peer_cases import harness


def _recording_runs(names, durations=None):
  calls = []

  def run_of(name):
    def run():
      calls.append(name)
      if durations:
        time.sleep(durations[name](calls))

    return run

  return calls, {name: run_of(name) for name in names}


def test_turns_run_settling_then_timed_steps_back_to_back():
  calls, runs = _recording_runs(["a", "b"])
  summaries = harness.time_in_turns(runs, steps=5, warmup=1, turn_steps=2, settle_steps=1)
  # warm-up in turns, then turns of 1 settling + up to 2 timed steps until each side has 5 timed.
  turn = lambda name, timed: [name] * (1 + timed)  # noqa: E731
  assert calls == ["a", "b"] + turn("a", 2) + turn("b", 2) + turn("a", 2) + turn("b", 2) + turn("a", 1) + turn("b", 1)
  assert set(summaries) == {"a", "b"}
  for summary in summaries.values():
    assert 0 <= summary["min_ms"] <= summary["median_ms"] <= summary["max_ms"]
    assert summary["settle_median_ms"] >= 0


def test_settling_steps_are_excluded_from_the_timed_statistics():
  # Each side's first step of a turn sleeps 30 ms, the others 1 ms: only the latter are timed.
  def slow_after_switch(name):
    return lambda calls: 0.03 if len(calls) < 2 or calls[-2] != name else 0.001

  _, runs = _recording_runs(["a", "b"], {"a": slow_after_switch("a"), "b": slow_after_switch("b")})
  summaries = harness.time_in_turns(runs, steps=4, warmup=0, turn_steps=2, settle_steps=1)
  for summary in summaries.values():
    assert summary["max_ms"] < 20 and summary["settle_median_ms"] >= 30


def test_step_by_step_turns_time_every_step():
  calls, runs = _recording_runs(["a", "b"])
  summaries = harness.time_in_turns(runs, steps=3, warmup=0, turn_steps=1, settle_steps=0)
  assert calls == ["a", "b"] * 3
  assert all("settle_median_ms" not in summary for summary in summaries.values())


@pytest.mark.parametrize("bad", [{"steps": 0}, {"warmup": -1}, {"turn_steps": 0}, {"settle_steps": -1}])
def test_bad_counts_are_refused(bad):
  arguments = {"steps": 2, "warmup": 0, "turn_steps": 1, "settle_steps": 0, **bad}
  with pytest.raises(ValueError, match="turn_steps"):
    harness.time_in_turns({"a": lambda: None}, **arguments)
