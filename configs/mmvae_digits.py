"""MMVAE on mm_digits (image + label) with the paper's settings: Laplace prior and posterior,
Laplace image likelihood of scale 0.75 on sigmoid means, DReG with K samples, latent 20, the
label's likelihood rescaled to the image's 64 dimensions. ``mmjax train --config
configs/mmvae_digits.py --workdir runs/mmvae``; see docs/generative.md for measured figures."""

from configs import vae_digits_base
from mmjax.losses.likelihoods import likelihood_rescaling
from mmjax.models.vae_common import likelihood_section


def get_config():
  config = vae_digits_base.get_config("mmvae", num_steps=3000, batch_size=128)
  config.model.update(latent_size=20, posterior="laplace", estimator="dreg", num_samples=30)
  weights = likelihood_rescaling({"image": (8, 8, 1), "label": (1,)}, reference="image")
  config.model.likelihoods = dict(
      image=likelihood_section("laplace", scale=0.75, link="sigmoid", weight=weights["image"]),
      label=likelihood_section("categorical", weight=weights["label"]),
  )
  return config
