"""What a user with existing `pmap` code writes with mmjax's modules and losses, against the
trainer's jit + mesh step."""

import functools

import jax
import numpy as np
import optax
import pytest

from mmjax import experiment, losses
from mmjax.train import loop

pytestmark = pytest.mark.multidevice


@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_pmap_step_matches_the_mesh_step(small, loss):
  config = small()
  config.model.loss = loss
  config.mesh.update({"data": 8, "fsdp": 1, "model": 1})
  run = experiment.build(config)
  trainer = loop.Trainer(config, run.model, run.data)
  state = trainer.init_state(config.seed)
  params = jax.device_get(state.params)
  batch = trainer.train_dataset[0]
  mesh_state, mesh_metrics = trainer.train_step(state, trainer.put(batch))

  # --- user code: a DualEncoder from mmjax, an mmjax loss with axis_name, the usual pmap recipe.
  module, optimizer = run.model.module, trainer.optimizers["contrastive"]

  def loss_fn(params, batch):
    embeddings = module.apply({"params": params}, {"image": batch["image"], "text": batch["text"]})
    if loss == "clip":
      return losses.clip_loss(embeddings["image"], embeddings["text"], params["log_scale"], axis_name="batch")
    return losses.siglip_loss(embeddings["image"], embeddings["text"], params["log_scale"], params["bias"], axis_name="batch")

  @functools.partial(jax.pmap, axis_name="batch")
  def pmap_step(params, opt_state, batch):
    value, grads = jax.value_and_grad(loss_fn)(params, batch)
    grads = jax.lax.pmean(grads, "batch")
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, value

  replicate = lambda tree: jax.tree.map(lambda x: np.broadcast_to(x, (8, *np.shape(x))), tree)  # noqa: E731
  per_device = jax.tree.map(lambda x: x.reshape(8, -1, *x.shape[1:]), batch)
  new_params, _, values = pmap_step(replicate(params), replicate(optimizer.init(params)), per_device)
  # ---

  np.testing.assert_allclose(values, np.full(8, mesh_metrics["loss"]), rtol=1e-5)
  for a, b in zip(jax.tree.leaves(jax.device_get(mesh_state.params)), jax.tree.leaves(new_params)):
    for replica in np.asarray(b):
      np.testing.assert_allclose(replica, a, rtol=1e-5, atol=1e-5 * float(np.abs(a).max()))
