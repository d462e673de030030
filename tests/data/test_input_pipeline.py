"""The Grain pipeline on mm_digits: static shapes, seeded per-epoch shuffles, resumable state, host
slices, padded evaluation; the data config and the data directory."""

import numpy as np
import pytest

from configs import clip_digits
from mmjax.data import input_pipeline
from mmjax.schema import ConfigError


def _config(data_dir, **changes):
  config = clip_digits.get_config().data
  config.data_dir = data_dir
  config.update(changes)
  return config


@pytest.fixture(scope="module")
def data(data_dir):
  return input_pipeline.from_config(_config(data_dir))


def test_batches_have_static_shapes_and_normalised_images(data):
  batch = data.train_dataset(64, seed=0)[0]
  assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["text"].shape == (64, 16) and batch["text"].dtype == np.int32
  assert batch["label"].shape == (64,) and batch["present"]["image"].all() and batch["present"]["text"].all()
  assert abs(float(batch["image"].mean())) < 0.3 and 0.7 < float(batch["image"].std()) < 1.3
  assert (batch["text"][:, 0] == 1).all()


def test_spec_describes_every_modality(data):
  image, text = data.spec.modalities["image"], data.spec.modalities["text"]
  assert (image.kind, image.shape, image.dtype) == ("image", (8, 8, 1), np.float32)
  assert (text.kind, text.shape, text.dtype) == ("text", (16,), np.int32)
  assert text.vocab_size == len(data.preprocessors["text"].tokenizer.vocabulary)
  assert data.spec.class_names[:2] == ("zero", "one") and data.spec.num_examples == {"train": 1438, "eval": 359}


def test_the_same_examples_as_before_the_generic_data_layer(data):
  # clip_digits' figures depend on these: images standardised with the training split's moments.
  from sklearn.datasets import load_digits

  digits = load_digits()
  batch = data.eval_batches(8).__next__()
  source = data.sources["eval"]
  raw = np.stack([source[i]["image"] for i in range(8)]).astype(np.float64) / 255
  moments = data.preprocessors["image"]
  np.testing.assert_allclose(batch["image"], (raw - moments.mean) / moments.std, rtol=1e-6, atol=1e-6)
  pixels = np.round(digits.images * 255 / 16) / 255
  assert abs(float(moments.mean[0]) - pixels.mean()) < 0.01  # the train split's mean is near the whole set's


def test_epochs_are_reshuffled_and_cover_the_split(data):
  per_epoch = data.spec.num_examples["train"]
  dataset = data.train_dataset(1, seed=0)
  first = [int(dataset[i]["label"][0]) for i in range(per_epoch)]
  second = [int(dataset[per_epoch + i]["label"][0]) for i in range(per_epoch)]
  assert sorted(first) == sorted(second) and first != second
  assert first == [int(data.train_dataset(1, seed=0)[i]["label"][0]) for i in range(per_epoch)]
  assert first != [int(data.train_dataset(1, seed=1)[i]["label"][0]) for i in range(per_epoch)]


def test_iterator_state_resumes_the_same_batches(data):
  dataset = data.train_dataset(32, seed=0)
  iterator = iter(dataset.to_iter_dataset())
  for _ in range(7):
    next(iterator)
  state = iterator.get_state()
  expected = [next(iterator)["text"] for _ in range(3)]
  resumed = iter(dataset.to_iter_dataset())
  resumed.set_state(state)
  for batch in expected:
    np.testing.assert_array_equal(next(resumed)["text"], batch)


def test_hosts_read_disjoint_slices_of_each_global_batch(data):
  whole = data.train_dataset(8, seed=0)[3]
  parts = [data.train_dataset(8, seed=0, process_index=p, process_count=2)[3] for p in range(2)]
  assert all(part["image"].shape[0] == 4 for part in parts)
  np.testing.assert_array_equal(parts[0]["image"], whole["image"][0::2])
  np.testing.assert_array_equal(parts[1]["image"], whole["image"][1::2])


def test_eval_batches_cover_the_split_once_with_padding_marked(data):
  batches = list(data.eval_batches(100))
  assert [b["image"].shape[0] for b in batches] == [100] * 4
  present = np.concatenate([b["present"]["image"] for b in batches])
  assert present.sum() == data.spec.num_examples["eval"] == 359
  assert not present[359:].any()


def test_streaming_reads_equal_cached_reads(data_dir, data):
  streaming = input_pipeline.from_config(_config(data_dir, cache=False))
  for key in ("image", "text", "label"):
    np.testing.assert_array_equal(streaming.train_dataset(16, seed=2)[5][key], data.train_dataset(16, seed=2)[5][key])


def test_class_prompts_are_tokenized_per_class_and_template(data):
  prompts = data.class_prompts("text")
  assert prompts.shape == (10, len(data.spec.prompt_templates), 16)
  assert not (prompts == 3).any()  # every prompt word is in the vocabulary


def test_config_problems_name_the_field_and_the_choices(data_dir):
  config = _config(data_dir, name="coco_captionz", modality_dropout={"audio": 0.5})
  config.modalities.label = input_pipeline.modality("image", "image")
  problems = input_pipeline.config_problems(config)
  assert any("data.name: 'coco_captionz' is neither one of mmjax's datasets ['mm_digits'" in p for p in problems)
  assert any("data.modalities.label: a modality named 'label' is the class label and must be of kind 'label'" in p for p in problems)
  from mmjax import schema

  found = schema.problems(config, input_pipeline.config_schema(config))
  assert "modality_dropout.audio: unknown name; valid names here: ['image', 'label', 'text']" in found


def test_modality_sections_follow_their_kind():
  assert input_pipeline.modality("wave", "audio", sample_rate=8000)["sample_rate"] == 8000
  with pytest.raises(ValueError, match=r"options \['tokenizer'\] do not apply to kind 'image'; its options: \['scaling'\]"):
    input_pipeline.modality("image", "image", tokenizer="word")


def test_data_dir_comes_from_config_then_environment_then_home(monkeypatch, tmp_path):
  monkeypatch.setenv("MMJAX_DATA_DIR", str(tmp_path))
  assert input_pipeline.resolve_data_dir("") == str(tmp_path)
  assert input_pipeline.resolve_data_dir(str(tmp_path / ".")) == str(tmp_path)
  monkeypatch.delenv("MMJAX_DATA_DIR")
  monkeypatch.setenv("HOME", str(tmp_path))
  assert input_pipeline.resolve_data_dir("") == str(tmp_path / "tensorflow_datasets")
  assert (tmp_path / "tensorflow_datasets").is_dir()


def test_a_missing_or_unusable_data_dir_fails_clearly(monkeypatch, tmp_path):
  with pytest.raises(ConfigError, match=r"data directory .*/nowhere' \(from data.data_dir\) does not exist"):
    input_pipeline.from_config(_config(str(tmp_path / "nowhere")))
  monkeypatch.setenv("MMJAX_DATA_DIR", str(tmp_path / "elsewhere"))
  with pytest.raises(ConfigError, match=r"from \$MMJAX_DATA_DIR\) does not exist"):
    input_pipeline.from_config(_config(""))
  blocked = tmp_path / "blocked"
  blocked.mkdir()
  (blocked / "mm_digits").write_text("a file where the dataset's directory must go")
  with pytest.raises(ConfigError, match="cannot build mm_digits into"):
    input_pipeline.from_config(_config(str(blocked)))


def test_mm_shapes_serves_image_audio_and_caption(shapes_dir):
  from mmjax.data import mm_shapes

  config = _config(shapes_dir, name="mm_shapes")
  config.modalities = dict(
      image=input_pipeline.modality("image", "image", "image_present"),
      audio=input_pipeline.modality("audio", "audio", "audio_present"),
      caption=input_pipeline.modality("caption", "text", "caption_present", length=12),
  )
  data = input_pipeline.from_config(config)
  spec = data.spec.modalities
  assert spec["audio"].shape == (mm_shapes.NUM_SAMPLES,) and spec["audio"].sample_rate == mm_shapes.SAMPLE_RATE
  assert spec["image"].shape == (32, 32, 3) and data.spec.class_names == mm_shapes.CLASS_NAMES
  batch = next(data.eval_batches(64))
  raw = data.sources["eval"][0]
  np.testing.assert_allclose(batch["audio"][0], raw["audio"] / 32768.0, rtol=1e-6)
  assert np.abs(batch["audio"]).max() <= 1.0 and (batch["caption"][:, 0] == 1).all()
  assert not (batch["caption"] == 3).any()  # test captions use only words of the training vocabulary
