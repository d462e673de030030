"""The conditional GAN family through the trainer: each objective moves only its own parameters,
the NaN guard drops a bad discriminator or generator update, a run resumes bitwise (both optimizer
states and the EMA), the step compiles once, and the config is validated before data is read."""

import shutil
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import gan_digits
from mmjax import experiment
from mmjax.losses.gan import GanLoss
from mmjax.models.decoder_configs import decoder_section
from mmjax.models.encoder_configs import encoder_section
from mmjax.schema import ConfigError
from mmjax.train import step as step_lib
from tests.compilations import assert_compiles_once


def tiny_config(data_dir, **train):
  config = gan_digits.get_config()
  config.data.update(data_dir=data_dir, batch_size=16)
  config.model.update(features=16, latent_dim=4, condition_dim=4, n_critic=2, eval_samples_per_class=4)
  config.model.decoders = dict(image=decoder_section("image", "mlp", mlp=dict(width=16, depth=1)),
                               label=decoder_section("label", "mlp", mlp=dict(width=8, depth=1)))
  config.model.encoders = dict(image=encoder_section("image", "mlp", mlp=dict(width=16, depth=1, norm="none")))
  config.model.reference_classifiers.update(num_steps=5, batch_size=32, features=8)
  config.train.update(dict(num_steps=8, log_every=2, eval_every=None, checkpoint_every=4, eval_batch_size=128, ema_decay=0.9))
  config.train.update(train)
  return config


@pytest.fixture(scope="module")
def setup(data_dir):
  run = experiment.build(tiny_config(data_dir))
  batch = next(iter(run.data.train_dataset(16, 0, 0, 1)))
  return run.model, jax.tree.map(jnp.asarray, batch)


def _one_step(model, objectives, batch, ema_decay=None):
  shim = types.SimpleNamespace(objectives=objectives, init=model.init)
  optimizers = {o.name: optax.adam(1e-2) for o in objectives}
  state = step_lib.make_init(shim, optimizers, batch, ema=ema_decay is not None)(jax.random.key(0))
  new_state, metrics = jax.jit(step_lib.make_train_step(shim, optimizers, ema_decay=ema_decay))(state, batch)
  return state, new_state, metrics


def _changed(before, after) -> bool:
  return any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(before), jax.tree.leaves(after), strict=True))


@pytest.mark.parametrize("index, trained, frozen", [(0, "discriminator", "generator"), (1, "generator", "discriminator")])
def test_each_objective_updates_only_its_own_parameters(setup, index, trained, frozen):
  model, batch = setup
  state, new_state, metrics = _one_step(model, (model.objectives[index],), batch)
  assert bool(metrics["finite"])
  assert _changed(state.params[trained], new_state.params[trained])
  assert not _changed(state.params[frozen], new_state.params[frozen])


def test_objectives_run_discriminator_then_generator_with_n_critic(setup):
  model, _ = setup
  assert [(o.name, o.trains, o.repeats) for o in model.objectives] == [
      ("discriminator", ("discriminator",), 2), ("generator", ("generator",), 1)]


def _nan_generator_loss(model):
  nan = GanLoss(model.loss_pair.discriminator, lambda logits, mask=None: jnp.nan * jnp.mean(logits))
  return types.SimpleNamespace(**{**vars(model), "loss_pair": nan})


@pytest.mark.parametrize("bad", ["discriminator", "generator"])
def test_nonfinite_update_of_either_objective_is_discarded(setup, bad):
  model, batch = setup
  if bad == "discriminator":  # NaN images reach only the discriminator's loss
    batch = {**batch, "image": jnp.full_like(batch["image"], jnp.nan)}
  else:
    model.loss_pair, saved = _nan_generator_loss(model).loss_pair, model.loss_pair
  try:
    state, new_state, metrics = _one_step(model, model.objectives, batch, ema_decay=0.5)
  finally:
    if bad == "generator":
      model.loss_pair = saved
  assert not bool(metrics["finite"]) and not np.isfinite(float(metrics[f"{bad}/loss"]))
  for field in ("params", "opt_state", "ema_params"):
    assert not _changed(getattr(state, field), getattr(new_state, field)), field
  assert int(new_state.skipped_steps) == 1


def test_sample_and_cross_generate_give_the_data_representation(setup):
  model, batch = setup
  variables = model.init(jax.random.key(0), batch)
  samples = jax.jit(model.sample, static_argnums=1)(variables, 6, jax.random.key(1))
  assert samples["image"].shape == (6, 8, 8, 1) and samples["label"].shape == (6,) and samples["label"].dtype == jnp.int32
  images = model.cross_generate(variables, batch, "image", jax.random.key(2))
  assert images.shape == batch["image"].shape
  with pytest.raises(ValueError, match="only from a label modality"):
    model.cross_generate(variables, batch, "label", jax.random.key(2))


def _state(workdir):
  return jax.device_get(experiment.restore(workdir)[2])


@pytest.mark.slow
def test_gan_run_resumes_bitwise_with_both_optimizer_states_and_the_ema(data_dir, tmp_path):
  config = tiny_config(data_dir)
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  final = experiment.train(config, str(straight))
  assert {"gan/conditional_accuracy", "gan/pair_consistency", "gan/diversity"} <= set(final)
  assert (straight / "images" / "8" / "samples.png").exists()
  trained = _state(straight)
  assert set(trained.opt_state) == {"discriminator", "generator"} and trained.ema_params is not None
  assert _changed(trained.params, trained.ema_params)
  shutil.copytree(straight, interrupted)
  shutil.rmtree(interrupted / "checkpoints" / "8")
  (interrupted / "eval.json").unlink()
  assert experiment.train(config, str(interrupted)) == final
  resumed = _state(interrupted)
  for field in ("params", "opt_state", "ema_params", "rng"):
    for a, b in zip(jax.tree.leaves(getattr(trained, field)), jax.tree.leaves(getattr(resumed, field)), strict=True):
      np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_gan_step_compiles_once(data_dir, tmp_path, monkeypatch):
  config = tiny_config(data_dir, eval_every=4, checkpoint_every=100)  # a checkpoint compiles its fingerprints once
  experiment.build(config, workdir=str(tmp_path)).references.prepare()  # their own run's compilations are not counted
  assert_compiles_once(config, str(tmp_path), monkeypatch)


@pytest.mark.parametrize("change, message", [
    (lambda c: c.optimizer.per_objective.update({"critic": {"learning_rate": 1e-3}}), "critic"),
    (lambda c: c.optimizer.per_objective.update({"generator": {"b1": 1.5}}), "b1"),
    (lambda c: c.model.update(n_critic=3), "n_critic"),
    (lambda c: c.model.update(conditioning="sum"), "projection"),
    (lambda c: c.model.update(loss="vanilla"), "hinge"),
    (lambda c: c.model.encoders.update({"image": encoder_section("image", "resnet")}), "batch statistics"),
])
def test_bad_configs_fail_before_data_is_read(tmp_path, change, message):
  config = tiny_config(str(tmp_path / "no_data"))
  config.unlock() if hasattr(config, "unlock") else None
  change(config)
  with pytest.raises(ConfigError, match=message):
    experiment.validate_config(config)
