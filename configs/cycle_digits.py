"""Image ↔ label translation on mm_digits with cycle consistency (image → label → image and
label → image → label), on top of paired translation losses.

Set ``model.paired_weight=0.0`` for purely cycle-consistent (unpaired) training.
"""

import ml_collections

from configs import gan_digits
from mmjax.models.decoder_configs import decoder_section
from mmjax.models.encoder_configs import encoder_section


def get_config() -> ml_collections.ConfigDict:
  config = gan_digits.get_config()  # the same data: image and label of mm_digits
  config.model = dict(
      name="cycle",
      modalities=("image", "label"),  # (source, label)
      features=128,
      encoder=encoder_section("image", "mlp", mlp=dict(width=128, depth=2, norm="none")),
      decoder=decoder_section("image", "mlp", mlp=dict(width=128, depth=2, activation="relu")),
      paired_weight=1.0,
      cycle_weight=1.0,
      cycle_distance="l1",  # or "l2"
      dtype="float32",
      remat=False,
  )
  config.optimizer.update(learning_rate=1e-3, b1=0.9)
  config.optimizer.per_objective = {}  # replaces (update would merge) the GAN's two entries
  config.train.update(num_steps=1000, eval_every=500, checkpoint_every=500, ema_decay=None)
  return config
