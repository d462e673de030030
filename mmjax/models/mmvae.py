"""MMVAE: a mixture of unimodal experts trained with MMVAE's "looser" IWAE bound or its DReG
gradient (Shi et al. 2019).

Config (``model`` section; shared keys in `mmjax.models.vae_common`):

* ``estimator``: ``"dreg"`` (the paper's, `dreg_mmvae_looser_surrogate`) or ``"iwae"``
  (`mmvae_looser_bound`);
* ``num_samples``: K, the samples drawn from each modality's posterior (paper: 30);
* ``posterior``: ``"laplace"`` (the paper: scale ``softmax(l)·D + 1e-6``, prior ``Laplace(0, 1)``)
  or ``"gaussian"`` (prior ``N(0, I)``);
* ``likelihoods.<m>``: the paper uses ``laplace`` with ``scale=0.75`` and ``link="sigmoid"`` for
  images; ``weight`` is its likelihood rescaling (`mmjax.losses.likelihood_rescaling`);
* ``beta`` and ``kl_warmup_steps``: a weight on ``log p(z) − log q(z|x)`` in every log-weight,
  annealed like a KL weight (the paper: ``beta=1.0``, ``kl_warmup_steps=0``: the exact bound);
* ``latent_size`` (paper: 20), ``features``, ``encoders``, ``decoders``, ``reference_classifiers``
  and the evaluation keys, as for every VAE family.

Each modality's posterior draws K samples, which every modality's decoder reconstructs; the
log-weights divide by the mixture density of the present modalities' posteriors.
"""

import jax
import jax.numpy as jnp

from mmjax.fusion.experts import mixture_of_experts
from mmjax.losses.distributions import mixture_log_prob
from mmjax.losses.elbo import dreg_mmvae_looser_surrogate, kl_warmup, mmvae_looser_bound
from mmjax.models import vae_common
from mmjax.models.base import Family
from mmjax.numerics import masked_mean
from mmjax.schema import Field

ESTIMATORS = ("dreg", "iwae")


class MMVAE(vae_common.MultimodalVAE):
  """The MMVAE family (see the module docstring); honours `base.Model` and `base.Generative`.

  References:
    Shi et al., Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative
    Models, 2019.
  """

  def sample_latent(self, params, inputs, present, key):
    """A stratified sample of the mixture of the present modalities' posteriors."""
    selected, _ = mixture_of_experts(self.encode(params, inputs), present)
    return selected.sample(key, 1)[0]

  def proposal(self, params, inputs, present, key, num_samples):
    """Samples of the mixture (a random present component for each) and their mixture density."""
    posteriors = self.encode(params, inputs)
    component_key, noise_key = jax.random.split(key)
    logits = jnp.where(present.T, 0.0, -1e9)  # [B, M]
    components = jax.random.categorical(component_key, logits, shape=(num_samples, present.shape[1]))  # [K, B]
    samples = jax.vmap(lambda q: q.sample(noise_key, num_samples))(posteriors)  # [M, K, B, D]; one noise for all
    z = jnp.take_along_axis(samples, components[None, :, :, None], axis=0)[0]
    return z, mixture_log_prob(posteriors, z, present)

  def loss(self, params, model_state, batch, rng, step):
    inputs, present = self.inputs(batch)
    count, size = present.shape
    samples = self.config.num_samples
    posteriors = self.encode(params, inputs)
    z = jax.vmap(lambda q, key: q.sample(key, samples))(posteriors, jax.random.split(rng, count))  # [M, K, B, D]
    beta = kl_warmup(step, self.config.kl_warmup_steps, beta=self.config.beta)
    prior = self.prior(size)

    def log_weights(z, density):
      outputs = self.decode(params, z.reshape(-1, z.shape[-1]))
      log_likelihoods = self.log_likelihoods(params, outputs, inputs, count * samples)
      log_px = self.weighted(log_likelihoods, jnp.tile(present, (1, count * samples))).reshape(z.shape[:-1])
      return log_px + beta * (prior.log_prob(z) - mixture_log_prob(density, z, present))

    if self.config.estimator == "dreg":
      bounds = dreg_mmvae_looser_surrogate(lambda z: log_weights(z, posteriors.stop_gradient()), z, present)
    else:
      bounds = mmvae_looser_bound(log_weights(z, posteriors), present)
    valid = jnp.any(present, axis=0)
    return masked_mean(-bounds, valid), ({"bound": masked_mean(bounds, valid), "beta": beta}, model_state)


def config_schema(config) -> dict:
  return vae_common.config_schema(config, estimator=Field(str, choices=ESTIMATORS), num_samples=Field(int, low=1))


FAMILY = Family(
    build=lambda config, data, references: MMVAE(config, data.spec, references),
    config_schema=config_schema,
    objectives=lambda config: ("elbo",),
    config_problems=vae_common.config_problems,
    judged=vae_common.judged,
)
