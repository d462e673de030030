"""MMAE on mm_digits (image + label): per-modality MLP encoders, mean fusion of the present
embeddings into a 64-d latent, a decoder per modality, every present modality reconstructed from
the joint latent and from each modality alone, plus λ·cosine alignment of the unimodal
embeddings. ``mmjax train --config configs/mmae_digits.py --workdir runs/mmae``; see
docs/generative.md for measured figures."""

from configs import vae_digits_base
from mmjax.models import vae_common
from mmjax.models.fusion_configs import fusion_options


def get_config():
  config = vae_digits_base.get_config("mmae", num_steps=1500, batch_size=100)
  model = config.model
  for key in vae_common.VARIATIONAL_FIELDS:
    del model[key]
  model.likelihoods.label.weight = 50.0  # as MVAE's: the label's one categorical vs 64 pixels
  model.fusion = "mean"
  model.fusion_options = fusion_options()
  model.correlation = "cosine"  # "none", "cosine" or "cca"
  model.correlation_weight = 1.0  # λ
  model.cca_regularization = 1e-3
  model.unimodal_reconstruction = True
  return config
