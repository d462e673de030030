"""What the VAE configs on mm_digits share: the data (8×8 digit scans in [0, 1], their class as a
label modality, and their caption), the evaluation, the trainer. Each family's config starts from
`get_config` and sets its own model fields; every hidden constant of a family is a field here or
there (see `mmjax.models.vae_common`).

The model reads ``image`` and ``label``; the caption has its data, encoder, decoder, likelihood and
reference-classifier sections ready (`modality_sections`), so any family takes it with
``--config.model.modalities="('image', 'label', 'caption')"`` (`configs/mvae_digits_caption.py`
does that for MVAE, with a measured caption weight)."""

import ml_collections
from ml_collections import config_dict

from mmjax.data.input_pipeline import modality
from mmjax.models.decoder_configs import decoder_section
from mmjax.models.encoder_configs import encoder_section
from mmjax.models.vae_common import likelihood_section
from mmjax.reference_classifiers import reference_section


def modality_sections(kind: str) -> dict:
  """The VAE configs' default sections of a modality of `kind`: its ``encoder``, ``decoder`` and
  ``likelihood`` sections, and the ``reference`` encoder section of its reference classifier (None
  for a label, which needs none).

  Text: a GRU encoder, the non-autoregressive transformer decoder, a categorical per token (pads
  included: `mmjax.models.vae_common`). Audio: a log-mel CNN encoder (windows of 256 samples, hop
  128: 32 ms and 16 ms at 8 kHz), a conv-transpose decoder with a ``linear`` output (a saturated
  tanh would stop the likelihood's gradients) and a Gaussian of standard deviation 0.1 over the
  waveform.

  >>> sections = modality_sections("text")
  >>> sections["decoder"]["name"], sections["likelihood"]["name"]
  ('transformer', 'categorical')
  """
  log_mel = dict(n_fft=256, hop_length=128, n_mels=32, channels=(16, 32), strides=(2, 2))
  sections = {
      # MVAE's MNIST networks: MLPs of 512 Swish units (here 2 encoder and 3 decoder layers).
      "image": dict(
          encoder=encoder_section("image", "mlp", mlp=dict(width=512, depth=2, activation="silu", norm="none")),
          decoder=decoder_section("image", "mlp"), likelihood=likelihood_section("bernoulli"),
          reference=encoder_section("image", "conv", conv=dict(channels=(32, 64), strides=(1, 2))),
      ),
      "label": dict(
          encoder=encoder_section("label", "embedding", embedding=dict(width=512, depth=1, activation="silu", norm="none")),
          decoder=decoder_section("label", "mlp"), likelihood=likelihood_section("categorical"), reference=None,
      ),
      "text": dict(
          encoder=encoder_section("text", "gru", gru=dict(width=128)),
          decoder=decoder_section("text", "transformer", transformer=dict(width=64, depth=1)),
          likelihood=likelihood_section("categorical"),
          reference=encoder_section("text", "gru", gru=dict(width=64)),
      ),
      "audio": dict(
          encoder=encoder_section("audio", "log_mel_cnn", log_mel_cnn=log_mel),
          decoder=decoder_section("audio", "conv_transpose", conv_transpose=dict(channels=(64, 32, 16, 8), output="linear")),
          likelihood=likelihood_section("gaussian", scale=0.1),
          reference=encoder_section("audio", "log_mel_cnn", log_mel_cnn=log_mel),
      ),
  }
  if kind not in sections:
    raise ValueError(f"modality_sections: unknown modality kind {kind!r}; valid kinds: {sorted(sections)}.")
  return sections[kind]


def add_modality(config: ml_collections.ConfigDict, name: str, data_section: dict) -> None:
  """Adds a data modality and the model's default sections for it (`modality_sections`); the
  model reads it once ``model.modalities`` names it."""
  sections = modality_sections(data_section["kind"])
  config.data.modalities[name] = data_section
  config.model.encoders[name] = sections["encoder"]
  config.model.decoders[name] = sections["decoder"]
  config.model.likelihoods[name] = sections["likelihood"]
  if sections["reference"] is not None:
    config.model.reference_classifiers.encoders[name] = sections["reference"]


def get_config(family: str, *, num_steps: int, batch_size: int) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = dict(
      name="mm_digits",
      data_dir="",  # empty: $MMJAX_DATA_DIR or ~/tensorflow_datasets
      modalities=dict(),  # add_modality below
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
      encoders=dict(),  # add_modality below
      decoders=dict(),
      likelihoods=dict(),
      beta=1.0,
      kl_warmup_steps=0,
      eval_samples=100,  # K of the IWAE log-likelihood
      eval_chunk_size=50,
      eval_prior_samples=400,  # joint coherence; = train.eval_batch_size, so the judges see one batch shape
      eval_seed=0,
      reference_classifiers=reference_section(num_steps=600),
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
  add_modality(config, "image", modality("image", "image", scaling="unit"))
  add_modality(config, "label", modality("label", "label"))
  add_modality(config, "caption", modality("caption", "text", tokenizer="word", length=16))
  config.mesh = dict(data=-1, fsdp=1, model=1)
  config.sharding = dict(rules=((".*", "fsdp"),), fsdp_min_size=2**12)
  config.distributed = dict(enabled=False, coordinator_address="", num_processes=0, process_id=-1, cpu_collectives="gloo")
  return config
