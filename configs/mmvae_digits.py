"""MMVAE on mm_digits (image + label) with the paper's settings: Laplace prior and posterior,
Laplace image likelihood of scale 0.75 on sigmoid means, DReG, latent 20, the label's likelihood
rescaled to the image's 64 dimensions; but K = 1 sample per modality (the paper: 30), the
stratified mixture ELBO. Measured (docs/generative.md): with K = 10 the importance-weighted bound
leaves every posterior scale near the prior's (0.5–1.6 in all 20 dimensions), so a single latent
sample decodes the right class only 61–71% of the time (the posterior means: 96–100%); with K = 1
four or five dimensions shrink to 0.2–0.5 and one-sample coherence reaches 0.96/0.99. ``mmjax train --config
configs/mmvae_digits.py --workdir runs/mmvae``; see docs/generative.md for measured figures."""

from configs import vae_digits_base
from mmjax.losses.likelihoods import likelihood_rescaling
from mmjax.models.vae_common import likelihood_section


def get_config():
  config = vae_digits_base.get_config("mmvae", num_steps=1500, batch_size=128)
  # K = 1: larger K trains over-dispersed posteriors (module docstring). 128-unit networks keep
  # the run within minutes of a shared 2-core CPU.
  config.model.update(latent_size=20, posterior="laplace", estimator="dreg", num_samples=1, features=128)
  config.model.encoders.image.mlp.width = 128
  config.model.encoders.label.embedding.width = 128
  config.model.decoders.image.mlp.update(width=128, depth=2)
  config.model.decoders.label.mlp.update(width=128, depth=2)
  weights = likelihood_rescaling({"image": (8, 8, 1), "label": (1,), "caption": (16,)}, reference="image")
  config.model.likelihoods.image = likelihood_section("laplace", scale=0.75, link="sigmoid", weight=weights["image"])
  config.model.likelihoods.label.weight = weights["label"]
  config.model.likelihoods.caption.weight = weights["caption"]  # read once model.modalities names it
  return config
