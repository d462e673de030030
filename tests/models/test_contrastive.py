"""The contrastive model family: loss wiring, errors naming modalities, evaluation."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax import experiment, losses
from mmjax.schema import ConfigError


@pytest.fixture(scope="module")
def built(data_dir):
  from tests.conftest import small_config

  def build(**model):
    config = small_config(data_dir)
    config.model.update(model)
    run = experiment.build(config)
    batch = run.data.train_dataset(8, seed=0)[0]
    variables = jax.jit(run.model.init)(jax.random.key(0), batch)
    return run, batch, variables

  return build


@pytest.mark.parametrize("loss", ["clip", "siglip", "nt_xent"])
def test_loss_is_the_configured_contrastive_loss(built, loss):
  run, batch, variables = built(loss=loss)
  params = variables["params"]
  value, (metrics, _) = jax.jit(run.model.loss)(params, {}, batch, jax.random.key(1), 0)
  embeddings = run.model.module.apply(variables, {m: batch[m] for m in ("image", "text")})
  image, text = embeddings["image"], embeddings["text"]
  expected = {
      "clip": lambda: losses.clip_loss(image, text, params["log_scale"]),
      "siglip": lambda: losses.siglip_loss(image, text, params["log_scale"], params["bias"]),
      "nt_xent": lambda: losses.nt_xent_loss(image, text, 0.1),
  }[loss]()
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  assert ("bias" in params) == (loss == "siglip")
  np.testing.assert_allclose(params["log_scale"], np.log(10.0) if loss == "siglip" else (np.log(1 / 0.07) if loss == "clip" else 0.0), rtol=1e-6)


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_chunked_loss_equals_the_dense_loss(built, loss):
  dense, batch, variables = built(loss=loss)
  chunked, _, _ = built(loss=loss, loss_chunk_size=3)
  value_and_grad = lambda model: jax.jit(jax.value_and_grad(lambda p: model.loss(p, {}, batch, jax.random.key(1), 0)[0]))
  expected, expected_grads = value_and_grad(dense.model)(variables["params"])
  value, grads = value_and_grad(chunked.model)(variables["params"])
  np.testing.assert_allclose(value, expected, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(expected_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * float(np.abs(b).max()))


def test_nt_xent_has_no_local_form(built):
  with pytest.raises(ConfigError, match="'nt_xent' has no local or chunked form"):
    built(loss="nt_xent", loss_sharding="local")


def test_gradients_reach_both_towers_and_the_temperature(built):
  run, batch, variables = built()
  grads = jax.jit(jax.grad(lambda p: run.model.loss(p, {}, batch, jax.random.key(1), 0)[0]))(variables["params"])
  for tower in grads:
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[tower])), tower


def test_absent_pairs_do_not_count(built):
  run, batch, variables = built()
  present = np.arange(8) < 5
  masked = {**batch, "present": {"image": present, "text": present}}
  subset = {k: v[:5] for k, v in batch.items() if k != "present"}
  subset["present"] = {"image": present[:5], "text": present[:5]}
  loss = jax.jit(run.model.loss)
  np.testing.assert_allclose(
      loss(variables["params"], {}, masked, jax.random.key(1), 0)[0],
      loss(variables["params"], {}, subset, jax.random.key(1), 0)[0],
      rtol=1e-5,
  )


def test_input_errors_name_the_modality(built):
  run, batch, variables = built()
  bad = {**batch, "image": batch["image"][..., 0]}
  with pytest.raises(ValueError, match=r"modality 'image': expected shape \(B, 8, 8, 1\), got \(8, 8, 8\)"):
    run.model.loss(variables["params"], {}, bad, jax.random.key(1), 0)
  short = {**batch, "text": batch["text"][:, :10]}
  with pytest.raises(ValueError, match=r"modality 'text': expected shape \(B, 16\), got \(8, 10\)"):
    run.model.loss(variables["params"], {}, short, jax.random.key(1), 0)
  missing = {k: v for k, v in batch.items() if k != "text"}
  with pytest.raises(ValueError, match=r"missing modality 'text'"):
    run.model.loss(variables["params"], {}, missing, jax.random.key(1), 0)


def test_evaluate_reports_the_public_metric_names(built):
  run, _, variables = built()
  metrics = run.model.evaluate(variables, run.data.eval_batches(128))
  for key in ("zeroshot_top1", "i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10"):
    assert 0.0 <= metrics[key] <= 1.0
  assert metrics["num_examples"] == 359


def test_inconsistent_model_config_fails_before_building(data_dir):
  from tests.conftest import small_config

  config = small_config(data_dir)
  config.model.encoders.image.conv.strides = (1,)
  with pytest.raises(ConfigError, match=r"model.encoders.image.conv: channels \(8, 16\) and strides \(1,\) must have the same length"):
    experiment.build(config)


def test_any_two_modalities_audio_and_label_on_mm_shapes(shapes_dir, tmp_path):
  """Contrastive learning is not tied to image–text: a waveform tower (log-mel CNN) and a label
  tower on mm_shapes, whose audio carries the pitch half of the label."""
  from mmjax.data.input_pipeline import modality
  from mmjax.models.encoder_configs import encoder_section
  from tests.conftest import small_config

  config = small_config(shapes_dir, num_steps=60, log_every=20, eval_every=60, checkpoint_every=60, eval_batch_size=200)
  config.data.name = "mm_shapes"
  # Assigned, not updated: ConfigDict.update would merge these sections with clip_digits' ones.
  config.data.modalities = dict(audio=modality("audio", "audio", "audio_present"), label=modality("label", "label"))
  config.model.modalities = ("audio", "label")
  config.model.encoders = dict(
      audio=encoder_section("audio", "log_mel_cnn", log_mel_cnn=dict(n_fft=256, hop_length=128, n_mels=32, channels=(8, 16), strides=(2, 2))),
      label=encoder_section("label", "embedding"))
  config.optimizer.warmup_steps = 5
  final = experiment.train(config, str(tmp_path))
  assert final["num_examples"] == 1200 and "zeroshot_top1" not in final
  # Identical labels are interchangeable, so an audio query is answered by its class's ~100 rows.
  # The sound tells the pitch, 2 of the 12 classes' 3 attributes' values: the right class comes first
  # 1/6 of the time (chance 1/12) and ranks among the 6 of its pitch (~rank 250 of 1200, chance ~550).
  assert final["a2l_r1"] > 0.12 and final["a2l_median_rank"] < 400, final


def test_identical_captions_are_one_group_in_retrieval(built):
  """Every pair given the same caption: the captions embed identically, so any image answers a
  caption query and any caption an image query (R@1 = 1). Ranked one-to-one instead, a caption
  would find its own image at rank 1 only by chance (about 1 in B)."""
  run, _, variables = built()
  batch = dict(next(iter(run.data.eval_batches(32))))
  batch["text"] = jnp.broadcast_to(batch["text"][:1], batch["text"].shape)
  metrics = run.model.evaluate(variables, [batch])
  assert metrics["num_examples"] > 8
  assert metrics["t2i_r1"] == 1.0 and metrics["i2t_r1"] == 1.0, metrics
