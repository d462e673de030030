"""Config validation: every problem reported at once, with the valid choices, before any work."""

import pytest

from configs import clip_digits
from mmjax import experiment
from mmjax.schema import ConfigError


def test_default_config_is_valid():
  experiment.validate_config(clip_digits.get_config())


@pytest.mark.parametrize(
    "change,message",
    [
        (lambda c: setattr(c.model, "loss", "triplet"), r"model.loss: 'triplet' is not a valid choice; valid choices: \['clip', 'nt_xent', 'siglip'\]"),
        (lambda c: setattr(c.model.encoders.text, "name", "resnet"), r"model.encoders.text.name: 'resnet' is not a valid choice; valid choices: \['gru', 'lstm', 'transformer'\]"),
        (lambda c: setattr(c.train, "num_steps", 0), r"train.num_steps: 0 is below the minimum 1"),
        (lambda c: setattr(c.optimizer, "b2", 1.5), r"optimizer.b2: 1.5 is above the maximum 1.0"),
        (lambda c: setattr(c.data.modalities.text, "tokenizer", "bpe"), r"data.modalities.text.tokenizer: 'bpe' is not a valid choice; valid choices: \['byte', 'word'\]"),
        (lambda c: c.train.update({"num_stepz": 3}), r"train.num_stepz: unknown key; valid keys here: \[.*'num_steps'"),
        (lambda c: c.model.encoders.image.conv.update({"channels": (8, "16")}), r"model.encoders.image.conv.channels: every item must be int"),
        (lambda c: setattr(c.model, "name", "vae"), r"model.name: 'vae' is not a valid choice; valid choices: \[.*'contrastive'.*\]"),
    ],
)
def test_bad_configs_fail_with_the_problem_and_the_choices(change, message, tmp_path):
  config = clip_digits.get_config()
  with config.unlocked():
    change(config)
  with pytest.raises(ConfigError, match=message):
    experiment.train(config, str(tmp_path))
  assert not (tmp_path / "checkpoints").exists()


def test_all_problems_are_listed_together():
  config = clip_digits.get_config()
  config.model.loss = "triplet"
  config.train.num_steps = -1
  with pytest.raises(ConfigError) as error:
    experiment.validate_config(config)
  assert "model.loss" in str(error.value) and "train.num_steps" in str(error.value)


def test_mesh_that_does_not_fit_the_devices_fails_clearly(data_dir, tmp_path):
  from tests.conftest import small_config

  config = small_config(data_dir)
  config.mesh.data = 3
  with pytest.raises(ConfigError, match=r"mesh: .* needs 3 devices, 1 are present"):
    experiment.train(config, str(tmp_path))


def test_warmup_longer_than_the_run_fails(data_dir, tmp_path):
  from tests.conftest import small_config

  config = small_config(data_dir)
  config.optimizer.warmup_steps = 20
  with pytest.raises(ConfigError, match=r"warmup_steps \(20\) must be below train.num_steps \(12\)"):
    experiment.train(config, str(tmp_path))


def test_batch_that_does_not_split_into_micro_batches_fails_before_compiling(data_dir, tmp_path):
  from tests.conftest import small_config

  config = small_config(data_dir)
  config.train.accumulation_steps = 3
  with pytest.raises(ConfigError, match=r"data.batch_size \(32\) must be divisible by .* times train.accumulation_steps \(3\)"):
    experiment.train(config, str(tmp_path))


def test_wrong_types_are_named_with_the_expected_type():
  config = clip_digits.get_config().to_dict()
  config["train"]["num_steps"] = "ten"
  config["model"]["remat"] = 1
  config["sharding"]["rules"] = "fsdp"
  with pytest.raises(ConfigError) as error:
    experiment.validate_config(config)
  message = str(error.value)
  assert "train.num_steps: expected int, got str 'ten'" in message
  assert "model.remat: expected bool, got int 1" in message
  assert "sharding.rules: expected list or tuple, got str 'fsdp'" in message


def test_problems_across_fields_are_listed_together_before_data_or_workdir_are_touched(tmp_path):
  config = clip_digits.get_config()
  data_dir, workdir = tmp_path / "data", tmp_path / "run"
  data_dir.mkdir()
  config.data.data_dir = str(data_dir)
  config.optimizer.warmup_steps = 5000
  config.train.accumulation_steps = 7
  config.model.encoders.image.conv.strides = (1, 2)
  config.data.modality_dropout = {"text": 0.5}
  with pytest.raises(ConfigError) as error:
    experiment.train(config, str(workdir))
  message = str(error.value)
  assert "optimizer.warmup_steps (5000) must be below train.num_steps (1000)" in message
  assert "data.batch_size (256) must be divisible by the data-parallel mesh size (1) times train.accumulation_steps (7)" in message
  assert "model.encoders.image.conv: channels (32, 64, 128) and strides (1, 2) must have the same length" in message
  assert list(data_dir.iterdir()) == [] and not workdir.exists()


def test_model_modalities_must_exist_in_the_data():
  config = clip_digits.get_config()
  config.model.modalities = ("image", "audio")
  with pytest.raises(ConfigError, match=r"model.modalities: 'audio' is not a modality of the data; data modalities: \['image', 'text'\]"):
    experiment.validate_config(config)


@pytest.mark.parametrize(
    "fusion,modalities,message",
    [
        ("gmu", ("image", "audio", "caption"), r"model.fusion: 'gmu' fuses exactly 2 modalities; model.modalities names 3"),
        ("cross_modal", ("image",), r"model.fusion: 'cross_modal' fuses at least 2 modalities; model.modalities names 1"),
        ("multiplicative", ("audio",), r"model.fusion: 'multiplicative' fuses at least 2 modalities"),
    ],
)
def test_a_fusion_given_the_wrong_number_of_modalities_fails_before_data_is_read(fusion, modalities, message, tmp_path):
  from configs import fusion_shapes

  config = fusion_shapes.get_config()
  config.data.data_dir = str(tmp_path / "no_data_here")
  config.model.fusion = fusion
  config.model.modalities = modalities
  with pytest.raises(ConfigError, match=message):
    experiment.validate_config(config)
  assert not (tmp_path / "no_data_here").exists()
