"""Training on 8 simulated devices equals training on one; checkpoints move between topologies."""

import jax
import numpy as np
import pytest

from mmjax import experiment
from mmjax.train import checkpoints, loop

pytestmark = pytest.mark.multidevice


def _assert_trees_close(a, b, rtol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=rtol * float(np.abs(y).max()))


def _one_step(config, devices):
  run = experiment.build(config)
  trainer = loop.Trainer(config, run.model, run.data, devices)
  state = trainer.init_state(config.seed)
  state, metrics = trainer.train_step(state, trainer.put(trainer.train_dataset[0]))
  return trainer, state, metrics


@pytest.mark.parametrize(
    "mesh,accumulation_steps,model,rules",
    [
        pytest.param({"data": 8, "fsdp": 1, "model": 1}, 1, {}, None, marks=pytest.mark.optimized),
        ({"data": 1, "fsdp": 8, "model": 1}, 1, {"loss_sharding": "local"}, None),
        ({"data": 2, "fsdp": 4, "model": 1}, 2, {}, None),
        ({"data": 2, "fsdp": 4, "model": 1}, 1, {"loss": "siglip", "loss_sharding": "local", "loss_chunk_size": 3}, None),
        # Tensor parallelism by an explicit rule: projections split by output over the model axis.
        ({"data": 4, "fsdp": 1, "model": 2}, 1, {"loss_sharding": "local", "loss_chunk_size": 2},
         (("projection/kernel$", (None, "model")), (".*", "replicate"))),
    ],
)
def test_sharded_step_equals_the_single_device_step(small, mesh, accumulation_steps, model, rules):
  """Against one device computing the plain global loss: data/FSDP sharding, accumulation, and
  the per-device (gathered or ring) and chunked losses give the same step."""
  assert jax.device_count() == 8
  config = small()
  config.sharding.fsdp_min_size = 0
  config.model.loss = model.get("loss", "clip")
  _, expected, expected_metrics = _one_step(config, jax.devices()[:1])

  config.mesh.update(mesh)
  config.model.update(model)
  config.train.accumulation_steps = accumulation_steps
  if rules:
    config.sharding.rules = rules
  trainer, state, metrics = _one_step(config, None)

  np.testing.assert_allclose(metrics["loss"], expected_metrics["loss"], rtol=1e-5)
  _assert_trees_close(jax.device_get(state.params), jax.device_get(expected.params))
  _assert_trees_close(jax.device_get(state.opt_state), jax.device_get(expected.opt_state))
  specs = {str(leaf.sharding.spec) for leaf in jax.tree.leaves(state.params)}
  if mesh["fsdp"] > 1:
    assert any("fsdp" in spec for spec in specs), specs  # parameters really are split
    kernel = state.params["encoders_image"]["stage1"]["conv"]["kernel"]
    assert kernel.addressable_shards[0].data.size == kernel.size // mesh["fsdp"]
  elif rules:
    kernel = state.params["encoders_image"]["projection"]["kernel"]
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "model")
    assert kernel.addressable_shards[0].data.shape == (kernel.shape[0], kernel.shape[1] // 2)
  else:
    assert specs == {"P()"}


@pytest.mark.parametrize("written_on,restored_on", [(8, (1, 4)), (1, (8, 4))])
def test_checkpoints_restore_onto_other_topologies(small, tmp_path, written_on, restored_on, monkeypatch):
  config = small(num_steps=3, checkpoint_every=3, eval_every=None)
  config.mesh.update({"data": 1, "fsdp": -1, "model": 1})  # fsdp takes every device there is
  config.sharding.fsdp_min_size = 0
  # The state as trained, taken from memory when it is handed to the checkpointer: restores are
  # compared with it, not with another restore (which a bug common to all restores would pass).
  trained = {}
  save = checkpoints.Checkpointer.save

  def keep_trained(self, step, state, data_state, force=False):
    trained[step] = jax.device_get(state)
    return save(self, step, state, data_state, force)

  monkeypatch.setattr(checkpoints.Checkpointer, "save", keep_trained)
  experiment.train(config, str(tmp_path), devices=jax.devices()[:written_on])
  written = trained[3]
  for count in restored_on:
    _, trainer, restored = experiment.restore(str(tmp_path), devices=jax.devices()[:count])
    assert trainer.mesh.devices.size == count
    assert {d for leaf in jax.tree.leaves(restored) for d in leaf.devices()} == set(jax.devices()[:count])
    for a, b in zip(jax.tree.leaves(written), jax.tree.leaves(jax.device_get(restored))):
      np.testing.assert_array_equal(a, b)
