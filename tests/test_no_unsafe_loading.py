"""No pickle anywhere: not in our code, not at run time, and untrusted files cannot run code."""

import pathlib
import pickle
import re
import shutil

import pytest

from mmjax import experiment
from mmjax.schema import ConfigError

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Ways Python files turn bytes into code or arbitrary objects.
UNSAFE = re.compile(
    r"\bimport pickle\b|\bfrom pickle\b|cloudpickle|\bdill\b|allow_pickle\s*=\s*True|torch\.load|"
    r"marshal\.loads|yaml\.load\(|\bshelve\b|\beval\(|\bexec\("
)


def test_the_code_never_deserialises_with_pickle_or_evaluates_strings():
  offenders = []
  for path in list((ROOT / "mmjax").rglob("*.py")) + list((ROOT / "configs").rglob("*.py")):
    for number, line in enumerate(path.read_text().splitlines(), 1):
      if UNSAFE.search(line):
        offenders.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
  assert not offenders, "\n".join(offenders)


class _Trap:
  """Unpickling this creates a marker file: the proof that untrusted bytes ran code."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (open, (self.marker, "w"))


def test_training_resuming_and_evaluating_never_unpickle(small, tmp_path, monkeypatch):
  def refuse(*args, **kwargs):
    raise AssertionError("pickle used")

  for name in ("load", "loads", "Unpickler"):
    monkeypatch.setattr(pickle, name, refuse)
  config = small(num_steps=4, checkpoint_every=2, eval_every=4, log_every=2)
  experiment.train(config, str(tmp_path))
  shutil.rmtree(tmp_path / "checkpoints" / "4")
  experiment.train(config, str(tmp_path))  # resumes from checkpoint 2
  experiment.evaluate(str(tmp_path))


def test_pickled_payloads_in_a_checkpoint_are_never_executed(small, tmp_path, capsys):
  config = small(num_steps=4, checkpoint_every=2, eval_every=None, log_every=2)
  experiment.train(config, str(tmp_path))
  (tmp_path / "eval.json").unlink()
  marker = tmp_path / "code_ran"
  step_dir = tmp_path / "checkpoints" / "4"
  for path in (step_dir / "data" / "metadata", step_dir / "integrity" / "metadata", step_dir / "state" / "_METADATA"):
    path.write_bytes(pickle.dumps(_Trap(str(marker))))

  experiment.train(config, str(tmp_path))

  assert not marker.exists()
  assert "checkpoint 4 is unusable" in capsys.readouterr().err


def test_a_dataset_with_pickled_metadata_is_refused_without_running_it(data_dir, tmp_path):
  from mmjax.data import input_pipeline

  copy = tmp_path / "data"
  shutil.copytree(data_dir, copy)
  marker = tmp_path / "code_ran"
  for name in ("metadata.json", "dataset_info.json", "features.json"):
    for path in copy.rglob(name):
      path.write_bytes(pickle.dumps(_Trap(str(marker))))
  from configs import clip_digits

  config = clip_digits.get_config().data
  config.data_dir = str(copy)
  with pytest.raises(ConfigError, match=r"the mm_digits dataset in .* is unreadable .* to have it rebuilt"):
    input_pipeline.from_config(config)
  assert not marker.exists()
