"""Every fusion trains: a tiny `configs/fusion_shapes.py` classifier lowers its loss with each one.

One dataset (mm_shapes) and one pair of batches serve every fusion; each fusion's classifier takes
a few steps of the real trainer (`mmjax.train.loop.Trainer.train_step`: optimizer, clipping,
schedule) on them, and its loss on those batches must fall well below where it started.
"""

import numpy as np
import pytest

from configs import fusion_shapes
from mmjax import experiment, models
from mmjax.fusion import FUSIONS
from mmjax.train import loop

pytestmark = pytest.mark.slow

STEPS = 30


def tiny_config(data_dir: str, fusion: str = "early"):
  """fusion_shapes at test size: narrow encoders, small batches."""
  config = fusion_shapes.get_config()
  config.data.update(data_dir=data_dir, batch_size=16)
  config.model.update(features=8, fusion=fusion)
  if fusion == "gmu":  # a fusion of exactly two modalities
    config.model.modalities = ("image", "audio")
  encoders = config.model.encoders
  encoders.image.conv.update(channels=(4, 8), strides=(2, 2))
  encoders.audio.log_mel_cnn.update(channels=(4,), strides=(2,), n_mels=16)
  encoders.caption.gru.width = 8
  config.model.fusion_options.graph.width = 8
  config.model.fusion_options.token_graph.width = 8
  for name in ("cross_modal", "co_attention", "transformer", "bottleneck"):
    config.model.fusion_options[name].update(width=8, num_heads=2, depth=1)
  config.model.fusion_options.bottleneck.fusion_layer = 0
  config.optimizer.update(schedule="constant", learning_rate=1e-2)
  config.train.update(dict(num_steps=STEPS, progress_bar=False))
  return config


@pytest.fixture(scope="module")
def built(shapes_dir):
  """The data, built once, and two training batches from it."""
  run = experiment.build(tiny_config(shapes_dir))
  trainer = loop.Trainer(run.config, run.model, run.data)
  return run.data, [trainer.train_dataset[i] for i in range(2)]


@pytest.mark.parametrize("fusion", sorted(FUSIONS))
def test_a_short_run_lowers_the_loss(built, shapes_dir, fusion):
  data, batches = built
  config = tiny_config(shapes_dir, fusion)
  experiment.validate_config(config)
  model = models.FAMILIES["classifier"].build(config.model, data, None)
  trainer = loop.Trainer(config, model, data)
  state = trainer.init_state(0)
  losses = []
  for step in range(STEPS):
    state, metrics = trainer.train_step(state, trainer.put(batches[step % 2]))
    losses.append(float(metrics["loss"]))
  assert np.all(np.isfinite(losses)), losses
  # The first two steps saw both batches at the initial parameters, the last two see them again.
  # The start is about ln 12 ≈ 2.48; fitting the label frequencies of the 32 examples alone (no
  # input) reaches their entropy, about 2.3 expected. The GMU sees two of the three attributes, so
  # it learns more slowly.
  factor = 0.85 if fusion == "gmu" else 0.75
  assert np.mean(losses[-2:]) < factor * np.mean(losses[:2]), (fusion, losses)
