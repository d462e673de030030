"""Conditional GAN on mm_digits: G(z, class) → (8×8 image, label), a projection discriminator.

Generator: one MLP decoder per modality on ``[z, embed(class)]``; the label is a relaxed
(softmax) one-hot. Discriminator: an MLP on the image and a linear layer on the (relaxed) one-hot,
conditioned by projection. Non-saturating loss with a lazy R1 penalty, TTUR learning rates, Adam
β₁ = 0.5, and an EMA of the weights for evaluation. Judged by a conv classifier trained on real
images (`gan/conditional_accuracy`). Override any field on the command line, e.g.
``mmjax train --config configs/gan_digits.py --workdir runs/gan --config.model.loss=hinge``.
"""

import ml_collections
from ml_collections import config_dict

from mmjax.data.input_pipeline import modality
from mmjax.models.decoder_configs import decoder_section
from mmjax.models.encoder_configs import encoder_section
from mmjax.reference_classifiers import reference_section


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="mm_digits",
      data_dir="",  # empty: $MMJAX_DATA_DIR or ~/tensorflow_datasets
      modalities=dict(image=modality("image", "image"), label=modality("label", "label")),
      label="label",
      splits=dict(train="train", eval="test"),
      batch_size=128,
      cache=True,
      modality_dropout=dict(),
  )

  config.model = dict(
      name="gan",
      modalities=("image", "label"),
      latent_dim=32,
      condition_dim=32,
      features=256,
      decoders=dict(
          image=decoder_section("image", "mlp", mlp=dict(width=256, depth=2, activation="relu")),
          label=decoder_section("label", "mlp", mlp=dict(width=64, depth=1, activation="relu")),
      ),
      encoders=dict(image=encoder_section("image", "mlp", mlp=dict(width=256, depth=2, norm="none"))),
      conditioning="projection",  # or "concat"
      loss="non_saturating",  # or "minimax", "hinge", "least_squares", "wasserstein"
      penalty="r1",  # or "gradient_penalty" (with loss="wasserstein"), "none"
      penalty_weight=1.0,  # R1's gamma, or WGAN-GP's lambda
      penalty_every=4,  # lazy R1: every this many steps, scaled by it
      n_critic=1,
      eval_samples_per_class=100,
      eval_seed=0,
      reference_classifiers=reference_section(num_steps=600, image=encoder_section("image", "conv", conv=dict(channels=(32, 64), strides=(1, 2)))),
      dtype="float32",
      remat=False,
  )

  config.optimizer = dict(
      name="adamw",
      learning_rate=2e-4,
      schedule="constant",
      warmup_steps=0,
      final_learning_rate_fraction=0.0,
      b1=0.5,
      b2=0.999,
      eps=1e-8,
      momentum=0.9,
      weight_decay=0.0,
      grad_clip_norm=config_dict.placeholder(float),
      # Two time-scale update rule (Heusel et al. 2017).
      per_objective=dict(discriminator=dict(learning_rate=4e-4), generator=dict(learning_rate=1e-4)),
  )

  config.train = dict(
      num_steps=3000,
      log_every=100,
      eval_every=1000,
      checkpoint_every=1000,
      keep_checkpoints=2,
      async_checkpointing=True,
      eval_batch_size=359,
      accumulation_steps=1,
      prefetch_threads=1,
      progress_bar=False,
      nonfinite_policy="skip",
      max_nonfinite_in_a_row=10,
      peak_flops_per_device=config_dict.placeholder(float),
      ema_decay=0.999,
  )

  config.mesh = dict(data=-1, fsdp=1, model=1)
  config.sharding = dict(rules=((".*", "replicate"),), fsdp_min_size=2**12)
  config.distributed = dict(
      enabled=False, coordinator_address="", num_processes=0, process_id=-1, cpu_collectives="gloo"
  )
  return config
