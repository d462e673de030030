"""The training loop end to end on mm_digits: learning, resuming, logging, compiling once."""

import glob
import importlib
import json
import os
import shutil

import jax
import numpy as np
import pytest

from mmjax import experiment
from mmjax.train import loop
from mmjax.train.metric_writers import WALL_CLOCK_KEYS
from tests.conftest import small_config


def _read_metrics(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _params(workdir, step=None):
  _, _, state = experiment.restore(workdir, step)
  return jax.device_get(state)


def test_short_run_lowers_the_loss_and_writes_its_outputs(small, tmp_path):
  config = small(num_steps=40, log_every=10, eval_every=20, checkpoint_every=20)
  final = experiment.train(config, str(tmp_path))
  records = _read_metrics(tmp_path)
  assert [r["step"] for r in records] == [10, 20, 30, 40]
  assert records[-1]["loss"] < records[0]["loss"] - 0.3
  for key in ("loss", "learning_rate", "examples_per_sec", "grad_norm", "logit_scale"):
    assert all(np.isfinite(r[key]) for r in records), key
  # Utilisation: waiting for data is a fraction of the wall time; the step's FLOPs are counted
  # (no MFU on a CPU without train.peak_flops_per_device).
  assert all(0.0 <= r["input_wait_fraction"] < 1.0 for r in records)
  assert all(r["tflops_per_device"] > 0 for r in records) and "mfu" not in records[0]
  assert "eval/zeroshot_top1" in records[1] and "eval/zeroshot_top1" not in records[0]
  with open(tmp_path / "eval.json") as f:
    assert json.load(f) == final
  for key in ("zeroshot_top1", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
    assert 0.0 <= final[key] <= 1.0
  assert final["step"] == 40
  assert final["zeroshot_top1"] > 0.2  # chance is 0.1
  assert os.listdir(tmp_path / "tb")
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["20", "40"]
  assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 40


def _tensorboard_scalars(workdir) -> dict[str, list[int]]:
  """``{tag: [step of each scalar event]}`` as TensorBoard reads the event files of `workdir/tb`.

  Parses the TFRecord framing (length, CRC, payload, CRC) and the Event protos itself, and applies
  TensorBoard's purge rule: a ``SessionLog.START`` at step ``s`` discards the events already read
  at steps ``≥ s`` (how a resumed writer hides what a crashed attempt wrote after the checkpoint).
  """
  import struct

  from tensorboardX.proto import event_pb2

  steps: dict[str, list[int]] = {}
  for path in sorted(glob.glob(os.path.join(workdir, "tb", "**", "events.out.tfevents.*"), recursive=True)):
    data = open(path, "rb").read()
    offset = 0
    while offset < len(data):
      (length,) = struct.unpack("<Q", data[offset:offset + 8])
      event = event_pb2.Event.FromString(data[offset + 12:offset + 12 + length])
      offset += 16 + length
      if event.HasField("session_log") and event.session_log.status == event_pb2.SessionLog.START:
        steps = {tag: [s for s in seen if s < event.step] for tag, seen in steps.items()}
      for value in event.summary.value:
        steps.setdefault(value.tag, []).append(event.step)
  return steps


@pytest.mark.optimized
def test_resume_continues_the_same_trajectory(small, tmp_path):
  """A run that lost everything after its step-8 checkpoint, restarted, ends where an
  uninterrupted run ends, bitwise, with each step logged once."""
  config = small(num_steps=16, checkpoint_every=8, eval_every=None, log_every=2)
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  experiment.train(config, str(straight))
  shutil.copytree(straight, interrupted)
  shutil.rmtree(interrupted / "checkpoints" / "16")
  (interrupted / "eval.json").unlink()

  experiment.train(config, str(interrupted))

  expected, resumed = _params(straight), _params(interrupted)
  assert int(resumed.step) == 16
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(resumed)):
    np.testing.assert_array_equal(a, b)
  straight_records, resumed_records = _read_metrics(straight), _read_metrics(interrupted)
  assert [r["step"] for r in resumed_records] == list(range(2, 17, 2))
  # The copied event files already hold steps 10–16 once; the resumed writer wrote them again.
  scalars = _tensorboard_scalars(interrupted)
  assert scalars["loss"] == list(range(2, 17, 2))
  assert all(seen == sorted(set(seen)) for seen in scalars.values()), scalars
  for a, b in zip(straight_records, resumed_records):
    assert {k: v for k, v in a.items() if k not in WALL_CLOCK_KEYS} == {k: v for k, v in b.items() if k not in WALL_CLOCK_KEYS}


def test_restart_of_a_finished_run_changes_nothing(small, tmp_path):
  config = small(num_steps=6, checkpoint_every=6, eval_every=None, log_every=3)
  first = experiment.train(config, str(tmp_path))
  params = _params(tmp_path)
  assert experiment.train(config, str(tmp_path)) == first
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(_params(tmp_path))):
    np.testing.assert_array_equal(a, b)
  assert [r["step"] for r in _read_metrics(tmp_path)] == [3, 6]


def _tiny_classifier(data_dir, **train):
  """configs/fusion_shapes.py shrunk onto mm_digits: image and caption encoders, tensor fusion."""
  from configs import fusion_shapes
  from mmjax.data.input_pipeline import modality
  from mmjax.models.encoder_configs import encoder_section

  config = fusion_shapes.get_config()
  config.data.update(name="mm_digits", data_dir=data_dir, batch_size=32)
  config.data.modalities = dict(  # replaces (update would merge)
      image=modality("image", "image"), caption=modality("caption", "text", tokenizer="word", length=16)
  )
  config.model.update(modalities=("image", "caption"), features=8, fusion="tensor")
  config.model.encoders = dict(
      image=encoder_section("image", "conv", conv=dict(channels=(8,), strides=(2,))),
      caption=encoder_section("text", "gru", gru=dict(width=8)),
  )
  config.optimizer.warmup_steps = 2
  config.train.update(dict(log_every=2, eval_batch_size=128, progress_bar=False, **train))
  return config


def _tiny(module: str):
  """A family's tiny test config (``tests/models/<module>.py``) with the run's `train` settings."""

  def config(data_dir, **train):
    tiny = importlib.import_module(f"tests.models.{module}").tiny_config(data_dir)
    tiny.optimizer.warmup_steps = 1
    tiny.train.update(dict(log_every=2, progress_bar=False, **train))
    return tiny

  return config


# Every model family: a regression that recompiles the step or the evaluation fails here.
FAMILY_CONFIGS = {
    "contrastive": small_config,
    "classifier": _tiny_classifier,
    "cycle": _tiny("test_cycle"),
    "adversarial_alignment": _tiny("test_adversarial_alignment"),
}
# Families checked by their own tests (they need their reference classifiers trained first).
CHECKED_ELSEWHERE = {
    "gan": "tests/models/test_gan.py",
    "mmae": "tests/models/test_mmae.py",
    "mvae": "tests/models/test_vae_families.py",
    "mmvae": "tests/models/test_vae_families.py",
    "mopoe": "tests/models/test_vae_families.py",
}


def test_every_family_is_checked_for_recompilation():
  from mmjax.models import FAMILIES

  assert set(FAMILY_CONFIGS) | set(CHECKED_ELSEWHERE) == set(FAMILIES)
  root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for family, path in CHECKED_ELSEWHERE.items():
    with open(os.path.join(root, path)) as f:
      source = f.read()
    assert "compiles_once" in source and family in source, (family, path)


@pytest.mark.parametrize("family", sorted(FAMILY_CONFIGS))
def test_step_and_evaluation_compile_once(family, data_dir, tmp_path, monkeypatch):
  from tests import compilations

  config = FAMILY_CONFIGS[family](data_dir, num_steps=6, eval_every=2, checkpoint_every=100)
  assert config.model.name == family
  compilations.assert_compiles_once(config, str(tmp_path), monkeypatch)


def test_unwritable_workdir_fails_before_training(small, tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a directory")
  with pytest.raises(ValueError, match="workdir .* is not writable"):
    experiment.train(small(), str(blocker / "run"))


@pytest.mark.optimized
def test_same_seed_same_run(small, tmp_path):
  """Two runs with one config write the same metrics (wall-clock fields aside) and evaluation."""
  config = small(num_steps=8, log_every=2, eval_every=4, checkpoint_every=4)
  first, second = experiment.train(config, str(tmp_path / "a")), experiment.train(config, str(tmp_path / "b"))
  assert first == second
  strip = lambda records: [{k: v for k, v in r.items() if k not in WALL_CLOCK_KEYS} for r in records]  # noqa: E731
  assert strip(_read_metrics(tmp_path / "a")) == strip(_read_metrics(tmp_path / "b"))
  other = small(num_steps=8, log_every=2, eval_every=4, checkpoint_every=4)
  other.seed = 1
  experiment.train(other, str(tmp_path / "c"))
  assert strip(_read_metrics(tmp_path / "c")) != strip(_read_metrics(tmp_path / "a"))


def test_mfu_is_logged_against_the_configured_peak_and_images_are_written(small, tmp_path, monkeypatch):
  config = small(num_steps=8, log_every=4, eval_every=8, checkpoint_every=8, peak_flops_per_device=1e9)
  grid = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
  original = loop.Trainer.evaluate
  monkeypatch.setattr(loop.Trainer, "evaluate", lambda self, state: {**original(self, state), "samples/grid": grid})
  final = experiment.train(config, str(tmp_path))
  records = _read_metrics(tmp_path)
  for record in records[1:]:
    assert record["mfu"] == pytest.approx(record["tflops_per_device"] * 1e12 / 1e9)
  assert "samples/grid" not in final and "eval/samples/grid" not in records[-1]
  import PIL.Image

  np.testing.assert_array_equal(np.asarray(PIL.Image.open(tmp_path / "images" / "8" / "samples_grid.png")), grid)
