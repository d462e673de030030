"""CLIP on mm_digits: a conv image tower and a GRU text tower, symmetric InfoNCE.

Trains in about a minute on a 2-core CPU. Override any field on the command line, e.g.
``mmjax train --config configs/clip_digits.py --workdir runs/clip --config.model.loss=siglip``.
"""

import ml_collections
from ml_collections import config_dict

from mmjax.data.input_pipeline import modality
from mmjax.models.encoder_configs import encoder_section


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="mm_digits",
      data_dir="",  # empty: $MMJAX_DATA_DIR or ~/tensorflow_datasets
      modalities=dict(
          image=modality("image", "image"),
          text=modality("caption", "text", tokenizer="word", length=16),
      ),
      label="label",
      splits=dict(train="train", eval="test"),
      batch_size=256,
      cache=True,
      modality_dropout=dict(),  # {modality: probability of hiding it in a training example}
  )

  config.model = dict(
      name="contrastive",
      modalities=("image", "text"),
      loss="clip",  # or "siglip", "nt_xent"
      embed_dim=64,
      # One section per modality; `name` picks the encoder (e.g. encoders.text.name=transformer).
      encoders=dict(
          image=encoder_section("image", "conv", conv=dict(channels=(32, 64, 128), strides=(1, 2, 2))),
          text=encoder_section("text", "gru", gru=dict(width=64), transformer=dict(width=64, depth=2)),
      ),
      init_log_scale=config_dict.placeholder(float),  # unset: the loss's standard initialisation
      init_bias=config_dict.placeholder(float),
      max_scale=100.0,
      nt_xent_temperature=0.1,
      loss_sharding="global",  # "local": per-device rows, gathered (CLIP) or ring (SigLIP)
      loss_chunk_size=0,  # >0: exact loss in chunks of rows, memory O(B * chunk)
      dtype="float32",
      remat=False,
  )

  config.optimizer = dict(
      name="adamw",
      learning_rate=2e-3,
      schedule="warmup_cosine",
      warmup_steps=100,
      final_learning_rate_fraction=0.0,
      b1=0.9,
      b2=0.98,
      eps=1e-6,
      momentum=0.9,
      weight_decay=0.05,
      grad_clip_norm=1.0,
      per_objective=dict(),  # {objective: {field: value}} overrides, e.g. a GAN's two learning rates
  )

  config.train = dict(
      num_steps=1000,
      log_every=50,
      eval_every=250,
      checkpoint_every=250,
      keep_checkpoints=3,
      async_checkpointing=True,
      eval_batch_size=512,
      accumulation_steps=1,  # >1: micro-batches; contrastive negatives still span the whole batch
      prefetch_threads=1,
      progress_bar=True,
      # A non-finite loss or gradient never reaches the parameters. "halt": save the last good
      # state and stop; "skip": drop that update and go on, halting after this many in a row.
      nonfinite_policy="halt",
      max_nonfinite_in_a_row=10,
      peak_flops_per_device=config_dict.placeholder(float),  # unset: the data-sheet peak where known
      ema_decay=config_dict.placeholder(float),  # set (e.g. 0.999): evaluate a moving average of the params
  )

  # Devices: `data` × `fsdp` × `model`; -1 takes the rest. See docs/scaling.md.
  config.mesh = dict(data=-1, fsdp=1, model=1)
  # First matching (regex on the state path, action) wins; "fsdp" splits a leaf's largest
  # divisible dimension over the fsdp axis when it has at least fsdp_min_size elements.
  config.sharding = dict(rules=((".*", "fsdp"),), fsdp_min_size=2**12)
  # Multi-process runs; the MMJAX_* environment variables override these (docs/scaling.md).
  config.distributed = dict(
      enabled=False, coordinator_address="", num_processes=0, process_id=-1, cpu_collectives="gloo"
  )
  return config
