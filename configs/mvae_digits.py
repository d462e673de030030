"""MVAE on mm_digits (image + label): product of experts with a prior expert, joint + unimodal
ELBOs, the paper's label weight 50, KL annealed linearly. ``mmjax train --config
configs/mvae_digits.py --workdir runs/mvae``; see docs/generative.md for measured figures."""

from configs import vae_digits_base


def get_config():
  config = vae_digits_base.get_config("mvae", num_steps=3000, batch_size=100)
  config.model.likelihoods.label.weight = 50.0
  config.model.kl_warmup_steps = 1000
  config.model.random_subsets = 0  # k random subsets: useful with more than two modalities
  return config
