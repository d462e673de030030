"""What the VAE configs on mm_digits share: the data (8×8 digit scans in [0, 1] and their class
as a label modality), the evaluation, the trainer. Each family's config starts from
`get_config` and sets its own model fields; every hidden constant of a family is a field here or
there (see `mmjax.models.vae_common`)."""

import ml_collections
from ml_collections import config_dict

from mmjax.data.input_pipeline import modality
from mmjax.models.decoder_configs import decoder_section
from mmjax.models.encoder_configs import encoder_section
from mmjax.models.vae_common import likelihood_section
from mmjax.reference_classifiers import reference_section


def get_config(family: str, *, num_steps: int, batch_size: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(
      name="mm_digits",
      data_dir="",  # empty: $MMJAX_DATA_DIR or ~/tensorflow_datasets
      modalities=dict(image=modality("image", "image", scaling="unit"), label=modality("label", "label")),
      label="label",
      splits=dict(train="train", eval="test"),
      batch_size=batch_size,
      cache=True,
      modality_dropout=dict(),  # {modality: probability}: training with missing modalities
  )
  config.model = dict(
      name=family,
      modalities=("image", "label"),
      features=512,  # encoder output width, before the posterior heads
      latent_size=64,
      posterior="gaussian",
      # MVAE's MNIST networks: MLPs of 512 Swish units (here 2 encoder and 3 decoder layers).
      encoders=dict(
          image=encoder_section("image", "mlp", mlp=dict(width=512, depth=2, activation="silu", norm="none")),
          label=encoder_section("label", "embedding", embedding=dict(width=512, depth=1, activation="silu", norm="none")),
      ),
      decoders=dict(image=decoder_section("image", "mlp"), label=decoder_section("label", "mlp")),
      likelihoods=dict(image=likelihood_section("bernoulli"), label=likelihood_section("categorical")),
      beta=1.0,
      kl_warmup_steps=0,
      eval_samples=100,  # K of the IWAE log-likelihood
      eval_chunk_size=50,
      eval_prior_samples=500,  # joint coherence
      eval_seed=0,
      reference_classifiers=reference_section(
          num_steps=600, image=encoder_section("image", "conv", conv=dict(channels=(32, 64), strides=(1, 2)))
      ),
      dtype="float32",
      remat=False,
  )
  config.optimizer = dict(
      name="adamw", learning_rate=1e-3, schedule="constant", warmup_steps=0, final_learning_rate_fraction=0.0,
      b1=0.9, b2=0.999, eps=1e-8, momentum=0.9, weight_decay=0.0, grad_clip_norm=0.0, per_objective=dict(),
  )
  config.train = dict(
      num_steps=num_steps, log_every=100, eval_every=num_steps // 2, checkpoint_every=num_steps // 2,
      keep_checkpoints=2, async_checkpointing=True, eval_batch_size=400, accumulation_steps=1,
      prefetch_threads=1, progress_bar=False, nonfinite_policy="halt", max_nonfinite_in_a_row=10,
      peak_flops_per_device=config_dict.placeholder(float), ema_decay=config_dict.placeholder(float),
  )
  config.mesh = dict(data=-1, fsdp=1, model=1)
  config.sharding = dict(rules=((".*", "fsdp"),), fsdp_min_size=2**12)
  config.distributed = dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1, cpu_collectives="gloo")
  return config
