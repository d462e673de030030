"""MVAE: a product of Gaussian experts with a prior expert, trained on the joint, unimodal and
random-subset ELBOs (Wu & Goodman 2018).

Config (``model`` section; shared keys in `mmjax.models.vae_common`): ``random_subsets`` (k,
the random modality subsets whose ELBO is added each step; the paper uses them with more than two
modalities), ``beta`` and ``kl_warmup_steps`` (KL weight, linearly annealed: `kl_warmup`),
``likelihoods.<m>.weight`` (the paper's label weight 50 on MNIST). Every ELBO term reconstructs
only the modalities of its subset, as in the reference code.
"""

import jax
import jax.numpy as jnp

from mmjax.fusion.experts import product_of_experts
from mmjax.losses.distributions import DiagonalGaussian
from mmjax.losses.elbo import elbo, kl_warmup
from mmjax.models import vae_common
from mmjax.models.base import Family
from mmjax.numerics import masked_mean
from mmjax.schema import Field


class MVAE(vae_common.MultimodalVAE):
  """The MVAE family (see the module docstring); honours `base.Model` and `base.Generative`.

  References:
    Wu & Goodman, Multimodal Generative Models for Scalable Weakly-Supervised Learning, 2018.
  """

  def subsets(self, rng: jax.Array) -> jax.Array:
    """``bool[S, M]``: the joint, each modality alone, then `random_subsets` random subsets."""
    count = len(self.modalities)
    fixed = jnp.concatenate([jnp.ones((1, count), jnp.bool_), jnp.eye(count, dtype=jnp.bool_)])
    random = jax.random.bernoulli(rng, 0.5, (self.config.random_subsets, count))
    return jnp.concatenate([fixed, random])

  def conditional(self, params, inputs, present) -> DiagonalGaussian:
    posterior = self.encode(params, inputs)
    return DiagonalGaussian(*product_of_experts(posterior.mean, posterior.log_variance, present))

  def loss(self, params, model_state, batch, rng, step):
    inputs, present = self.inputs(batch)
    subset_key, noise_key = jax.random.split(rng)
    members = self.subsets(subset_key)[:, :, None] & present[None]  # [S, M, B]
    experts = self.encode(params, inputs)
    posteriors = DiagonalGaussian(*jax.vmap(product_of_experts, in_axes=(None, None, 0))(
        experts.mean, experts.log_variance, members))  # [S, B, D]
    z = posteriors.sample(noise_key, 1)[0]
    count, size = members.shape[0], members.shape[2]
    log_likelihoods = self.log_likelihoods(params, self.decode(params, z.reshape(count * size, -1)), inputs, count)
    reconstruction = self.weighted(log_likelihoods, jnp.transpose(members, (1, 0, 2)).reshape(len(self.modalities), -1))
    beta = kl_warmup(step, self.config.kl_warmup_steps, beta=self.config.beta)
    kl = posteriors.kl_to_standard_normal().reshape(-1)
    bounds = elbo(reconstruction, kl, beta=beta).reshape(count, size)
    observed = jnp.any(members, axis=1)  # a subset with none of the sample's modalities adds nothing
    valid = jnp.any(present, axis=0)
    loss = masked_mean(jnp.sum(jnp.where(observed, -bounds, 0.0), axis=0), valid)
    metrics = {"joint_elbo": masked_mean(bounds[0], valid), "kl": masked_mean(kl.reshape(count, size)[0], valid), "beta": beta}
    return loss, (metrics, model_state)


def config_schema(config) -> dict:
  return vae_common.config_schema(config, random_subsets=Field(int, low=0))


FAMILY = Family(
    build=lambda config, data, references: MVAE(config, data.spec, references),
    config_schema=config_schema,
    objectives=lambda config: ("elbo",),
    config_problems=lambda config: vae_common.config_problems(config, gaussian_only=True),
    judged=vae_common.judged,
)
