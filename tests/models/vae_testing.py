"""Tiny configs and checks shared by the VAE family tests (one test file per family)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from configs import mmae_digits, mmvae_digits, mopoe_digits, mvae_digits, vae_digits_base
from mmjax import experiment
from mmjax.data.input_pipeline import modality
from tests.compilations import assert_compiles_once

CONFIGS = {"mmae": mmae_digits, "mvae": mvae_digits, "mmvae": mmvae_digits, "mopoe": mopoe_digits}


def _shrink(model, name: str, kind: str) -> None:
  """Makes modality `name`'s encoder, decoder and judge tiny (whichever of its sections exist)."""
  encoder, decoder, judge = model.encoders[name], model.decoders[name], model.reference_classifiers.encoders.get(name)
  if kind == "image":
    encoder.mlp.width = 16
    decoder.mlp.update(width=16, depth=1)
    judge.conv.channels = (4, 8)
  elif kind == "label":
    encoder.embedding.width = 16
    decoder.mlp.update(width=16, depth=1)
  elif kind == "text":
    encoder.gru.width = 16
    decoder.transformer.update(width=16, depth=1, num_heads=2, mlp_ratio=2)
    judge.gru.width = 8
  elif kind == "audio":
    encoder.log_mel_cnn.channels = (4, 8)
    decoder.conv_transpose.update(channels=(8, 4, 4, 4), kernel_size=9, output_kernel_size=9)
    judge.log_mel_cnn.channels = (4, 8)


def tiny_config(family: str, data_dir: str, modalities: tuple[str, ...] = ("image", "label"), **train):
  """The family's mm_digits config shrunk to run in seconds, reading `modalities` (``caption``
  is the third)."""
  config = CONFIGS[family].get_config()
  config.data.update(data_dir=data_dir, batch_size=16)
  model = config.model
  model.update(features=16, latent_size=4, modalities=modalities)
  if "eval_samples" in model:  # the variational families
    model.update(eval_samples=4, eval_chunk_size=2, eval_prior_samples=128)  # the eval batch size: the judges compile once
  for name, section in config.data.modalities.items():
    _shrink(model, name, section["kind"])
  model.reference_classifiers.update(num_steps=4, batch_size=32, features=8)
  if family == "mmvae":
    model.num_samples = 3
  config.train.update(dict(num_steps=4, log_every=2, eval_every=2, checkpoint_every=2, eval_batch_size=128))
  config.train.update(train)
  return config


def tiny_shapes_config(family: str, shapes_dir: str, **train):
  """`tiny_config` on mm_shapes: image (32×32×3 in [0, 1]), audio and caption, each with the VAE
  configs' default sections (`vae_digits_base.modality_sections`), shrunk."""
  config = tiny_config(family, shapes_dir, **train)
  config.data.name = "mm_shapes"
  model = config.model
  for section in (config.data.modalities, model.encoders, model.decoders, model.likelihoods, model.reference_classifiers.encoders):
    for name in list(section):
      del section[name]
  for name, kind in (("image", "image"), ("audio", "audio"), ("caption", "text")):
    options = {"scaling": "unit"} if kind == "image" else {}
    vae_digits_base.add_modality(config, name, modality(name, kind, f"{name}_present", **options))
    _shrink(model, name, kind)
  model.modalities = ("image", "audio", "caption")
  return config


def check_compiles_once(family: str, data_dir: str, workdir: str, monkeypatch) -> None:
  """`assert_compiles_once` on a short run, its reference classifiers trained beforehand (their
  own runs evaluate too, which would count as the run's first evaluation)."""
  config = tiny_config(family, data_dir, checkpoint_every=4)  # the first save compiles fingerprints
  experiment.build(config, workdir=workdir).references.prepare()
  assert_compiles_once(config, workdir, monkeypatch)


def build(family: str, data_dir: str, batch_size: int = 16, config=None, **model):
  """The family's model (of `config`, else `tiny_config`), a training batch and initial variables."""
  config = tiny_config(family, data_dir) if config is None else config
  config.model.update(model)
  run = experiment.build(config)
  batch = run.data.train_dataset(batch_size, seed=0)[0]
  variables = jax.jit(run.model.init)(jax.random.key(0), batch)
  return run.model, batch, variables


def losses_while_training(model, batch, variables, steps: int) -> list[float]:
  """Adam on one fixed batch; the loss at every step."""
  optimizer = optax.adam(3e-3)

  @jax.jit
  def update(params, state, step):
    (loss, _), grads = jax.value_and_grad(model.loss, has_aux=True)(params, {}, batch, jax.random.fold_in(jax.random.key(1), step), step)
    updates, state = optimizer.update(grads, state)
    return optax.apply_updates(params, updates), state, loss

  params, state, values = variables["params"], optimizer.init(variables["params"]), []
  for step in range(steps):
    params, state, loss = update(params, state, step)
    values.append(float(loss))
  return values


def check_training_lowers_the_loss(family: str, data_dir: str) -> None:
  values = losses_while_training(*build(family, data_dir), steps=40)
  assert np.all(np.isfinite(values))
  assert np.mean(values[-5:]) < 0.8 * np.mean(values[:5]), values


def check_generative_api_under_jit(family: str, data_dir: str) -> None:
  model, batch, variables = build(family, data_dir)
  key = jax.random.key(2)
  reconstruction = jax.jit(model.reconstruct)(variables, batch, key)
  assert reconstruction["image"].shape == batch["image"].shape and reconstruction["image"].dtype == jnp.float32
  assert reconstruction["label"].shape == batch["label"].shape and reconstruction["label"].dtype == jnp.int32
  label_only = {**batch, "present": {"image": jnp.zeros_like(batch["present"]["image"]), "label": batch["present"]["label"]}}
  cross_generate = jax.jit(model.cross_generate, static_argnames="target")
  image = cross_generate(variables, label_only, target="image", rng=key)
  assert image.shape == batch["image"].shape
  assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0  # the data's [0, 1] scaling
  # Generating from the label alone ignores the image entirely.
  garbage = {**label_only, "image": jnp.full_like(batch["image"], 7.0)}
  np.testing.assert_array_equal(image, cross_generate(variables, garbage, target="image", rng=key))
  samples = jax.jit(model.sample, static_argnums=1)(variables, 5, key)
  assert samples["image"].shape == (5, *batch["image"].shape[1:]) and samples["label"].shape == (5,)


def check_missing_modalities(family: str, data_dir: str) -> None:
  """With half the images absent, the loss and its gradient are finite, and absent values change nothing."""
  model, batch, variables = build(family, data_dir)
  absent = np.arange(batch["label"].shape[0]) % 2 == 0
  present = {"image": batch["present"]["image"] & ~absent, "label": batch["present"]["label"]}
  partial = {**batch, "present": present}
  garbage = {**partial, "image": jnp.where(absent[:, None, None, None], 1e3, batch["image"])}
  loss = _check_absent_values_change_nothing(model, variables, partial, garbage)
  assert losses_while_training(model, partial, variables, 20)[-1] < loss


def _check_absent_values_change_nothing(model, variables, partial, garbage) -> float:
  """The loss of `partial` and its gradient are finite, and equal those of `garbage` (other values
  where modalities are absent); returns the loss."""
  value_and_grad = jax.jit(jax.value_and_grad(lambda p, b: model.loss(p, {}, b, jax.random.key(3), 5)[0]))
  loss, grads = value_and_grad(variables["params"], partial)
  assert np.isfinite(float(loss)) and all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
  garbage_loss, garbage_grads = value_and_grad(variables["params"], garbage)
  np.testing.assert_allclose(garbage_loss, loss, rtol=1e-5)
  for a, b in zip(jax.tree.leaves(garbage_grads), jax.tree.leaves(grads)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
  return float(loss)


def check_text_and_audio(family: str, config) -> None:
  """With a caption (and, on mm_shapes, audio) among the modalities: training lowers the loss, every
  generation comes in the data's representation (token ids ``int32[B, L]`` in ``[0, vocab)``, a
  float waveform), and a missing caption adds nothing to the loss or its gradient."""
  model, batch, variables = build(family, config.data.data_dir, config=config)
  values = losses_while_training(model, batch, variables, steps=20)
  assert np.all(np.isfinite(values)) and np.mean(values[-5:]) < np.mean(values[:5]), values

  key = jax.random.key(2)
  reconstruction = jax.jit(model.reconstruct)(variables, batch, key)
  for m in model.modalities:
    assert reconstruction[m].shape == batch[m].shape, (m, reconstruction[m].shape)
    assert reconstruction[m].dtype == (jnp.int32 if model.specs[m].kind in ("text", "label") else jnp.float32), m
  vocab_size, length = model.specs["caption"].vocab_size, batch["caption"].shape[1]
  without_caption = {**batch, "present": {**batch["present"], "caption": jnp.zeros_like(batch["present"]["caption"])}}
  cross_generate = jax.jit(model.cross_generate, static_argnames="target")
  caption = cross_generate(variables, without_caption, target="caption", rng=key)
  assert caption.shape == batch["caption"].shape and caption.dtype == jnp.int32
  assert 0 <= int(caption.min()) and int(caption.max()) < vocab_size
  garbage = {**without_caption, "caption": (batch["caption"] + 7) % vocab_size}
  np.testing.assert_array_equal(caption, cross_generate(variables, garbage, target="caption", rng=key))
  if "audio" in model.modalities:
    audio = cross_generate(variables, without_caption, target="audio", rng=key)
    assert audio.shape == batch["audio"].shape and audio.dtype == jnp.float32 and np.all(np.isfinite(audio))
  if model.has_prior:
    samples = jax.jit(model.sample, static_argnums=1)(variables, 5, key)
    assert samples["caption"].shape == (5, length) and samples["caption"].dtype == jnp.int32

  # Half the captions missing: finite loss and gradients, and their token ids change nothing.
  absent = np.arange(batch["caption"].shape[0]) % 2 == 0
  partial = {**batch, "present": {**batch["present"], "caption": batch["present"]["caption"] & ~absent}}
  scrambled = {**partial, "caption": jnp.where(absent[:, None], (batch["caption"] + 7) % vocab_size, batch["caption"])}
  _check_absent_values_change_nothing(model, variables, partial, scrambled)
