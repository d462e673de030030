"""A fusion classifier on mm_shapes: image, audio and caption encoders, a fusion, a linear head.

The class of an mm_shapes example needs all three modalities (docs/datasets.md), so this is where
fusions show what they do. Pick the fusion on the command line, e.g.
``mmjax train --config configs/fusion_shapes.py --workdir runs/lmf --config.model.fusion=low_rank``;
every name in `mmjax.fusion.FUSIONS` works, each with its options in ``model.fusion_options``.
"""

import ml_collections
from ml_collections import config_dict

from mmjax.data.input_pipeline import modality
from mmjax.models.encoder_configs import encoder_section
from mmjax.models.fusion_configs import fusion_options


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0

  config.data = dict(
      name="mm_shapes",
      data_dir="",  # empty: $MMJAX_DATA_DIR or ~/tensorflow_datasets
      modalities=dict(
          image=modality("image", "image", "image_present"),
          audio=modality("audio", "audio", "audio_present"),
          caption=modality("caption", "text", "caption_present", tokenizer="word", length=16),
      ),
      label="label",
      splits=dict(train="train", eval="test"),
      batch_size=128,
      cache=True,
      modality_dropout=dict(),  # e.g. {"image": 0.3, "audio": 0.3, "caption": 0.3}: robustness to missing inputs
  )

  config.model = dict(
      name="classifier",
      modalities=("image", "audio", "caption"),
      features=64,
      encoders=dict(
          image=encoder_section("image", "conv", conv=dict(channels=(16, 32, 64), strides=(2, 2, 2))),
          # 8 kHz audio: 32 ms windows, 16 ms hop, 32 mel bands.
          audio=encoder_section(
              "audio", "log_mel_cnn", log_mel_cnn=dict(n_fft=256, hop_length=128, n_mels=32, channels=(16, 32), strides=(2, 2))
          ),
          caption=encoder_section("text", "gru", gru=dict(width=64), transformer=dict(width=64, depth=1)),
      ),
      fusion="early",  # any name in mmjax.fusion.FUSIONS
      fusion_options=fusion_options(),
      head_width=0,
      dropout_rate=0.0,
      label_smoothing=0.0,
      dtype="float32",
      remat=False,
  )

  config.optimizer = dict(
      name="adamw",
      learning_rate=2e-3,
      schedule="warmup_cosine",
      warmup_steps=50,
      final_learning_rate_fraction=0.0,
      b1=0.9,
      b2=0.999,
      eps=1e-8,
      momentum=0.9,
      weight_decay=1e-4,
      grad_clip_norm=1.0,
      per_objective=dict(),
  )

  config.train = dict(
      num_steps=600,
      log_every=50,
      eval_every=300,
      checkpoint_every=300,
      keep_checkpoints=2,
      async_checkpointing=True,
      eval_batch_size=400,
      accumulation_steps=1,
      prefetch_threads=1,
      progress_bar=True,
      nonfinite_policy="halt",
      max_nonfinite_in_a_row=10,
      peak_flops_per_device=config_dict.placeholder(float),
      ema_decay=config_dict.placeholder(float),
  )

  config.mesh = dict(data=-1, fsdp=1, model=1)
  config.sharding = dict(rules=((".*", "fsdp"),), fsdp_min_size=2**12)
  config.distributed = dict(
      enabled=False, coordinator_address="", num_processes=0, process_id=-1, cpu_collectives="gloo"
  )
  return config
