"""The Grain pipeline: static shapes, seeded per-epoch shuffles, resumable state, host slices."""

import numpy as np
import pytest

from mmjax.data import input_pipeline
from mmjax.schema import ConfigError


@pytest.fixture(scope="module")
def data(data_dir):
  return input_pipeline.load("mm_digits", data_dir, "word", 16)



def test_batches_have_static_shapes_and_normalised_images(data):
  batch = data.train_dataset(64, seed=0)[0]
  assert batch["image"].shape == (64, 8, 8, 1) and batch["image"].dtype == np.float32
  assert batch["text"].shape == (64, 16) and batch["text"].dtype == np.int32
  assert batch["label"].shape == (64,) and batch["present"]["image"].all()
  assert abs(float(batch["image"].mean())) < 0.3 and 0.7 < float(batch["image"].std()) < 1.3
  assert (batch["text"][:, 0] == 1).all()


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
  assert present.sum() == data.spec.num_examples["test"] == 359
  assert not present[359:].any()


def test_streaming_reads_equal_cached_reads(data_dir, data):
  streaming = input_pipeline.load("mm_digits", data_dir, "word", 16, cache=False)
  for key in ("image", "text", "label"):
    np.testing.assert_array_equal(streaming.train_dataset(16, seed=2)[5][key], data.train_dataset(16, seed=2)[5][key])


def test_class_prompts_are_tokenized_per_class_and_template(data):
  prompts = data.class_prompts()
  assert prompts.shape == (10, len(data.prompt_templates), 16)
  assert not (prompts == 3).any()  # every prompt word is in the vocabulary


def test_unknown_dataset_lists_choices():
  with pytest.raises(ValueError, match=r"Unknown dataset 'coco'; valid choices: \['mm_digits'\]"):
    input_pipeline.load("coco", None, "word", 16)


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
    input_pipeline.load("mm_digits", str(tmp_path / "nowhere"), "word", 16)
  monkeypatch.setenv("MMJAX_DATA_DIR", str(tmp_path / "elsewhere"))
  with pytest.raises(ConfigError, match=r"from \$MMJAX_DATA_DIR\) does not exist"):
    input_pipeline.load("mm_digits", "", "word", 16)
  blocked = tmp_path / "blocked"
  blocked.mkdir()
  (blocked / "mm_digits").write_text("a file where the dataset's directory must go")
  with pytest.raises(ConfigError, match="cannot build mm_digits into"):
    input_pipeline.load("mm_digits", str(blocked), "word", 16)
