"""MoPoE-VAE on mm_digits (image + label): a mixture over the modality subsets of their products
of experts, the prior expert in the full subset's product (as the reference code), the label's
likelihood rescaled to the image's 64 dimensions. ``mmjax train --config configs/mopoe_digits.py
--workdir runs/mopoe``."""

from configs import vae_digits_base


def get_config():
  config = vae_digits_base.get_config("mopoe", num_steps=1500, batch_size=128)
  config.model.likelihoods.label.weight = 64.0  # likelihood_rescaling against the image's 8·8·1
  config.model.update(prior_subsets="full", beta=1.0, kl_warmup_steps=500)
  return config
