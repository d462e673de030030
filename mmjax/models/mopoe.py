"""MoPoE-VAE: a mixture, over every non-empty subset of the present modalities, of the subset's
product of experts (Sutter et al. 2021).

Config (``model`` section; shared keys in `mmjax.models.vae_common`): ``prior_subsets`` (which
subsets' products include the ``N(0, I)`` expert: ``"full"``, the reference code's, ``"all"`` or
``"none"``), ``beta`` (paper, PolyMNIST: 2.5) and ``kl_warmup_steps``. Each sample's latent comes
from one subset chosen by a stratified partition of the batch (`mixture_of_products_of_experts`),
every present modality is reconstructed from it, and the KL is the mean of the available subsets'
KLs, as in the reference implementation. Conditioned on some modalities, the latent is the
product of exactly those.
"""

import jax.numpy as jnp
import numpy as np

from mmjax.fusion.experts import PRIOR_SUBSETS, mixture_of_experts, modality_subsets, subset_products_of_experts
from mmjax.losses.distributions import DiagonalGaussian
from mmjax.losses.elbo import elbo, kl_warmup
from mmjax.models import vae_common
from mmjax.models.base import Family
from mmjax.numerics import masked_mean
from mmjax.schema import Field


class MoPoE(vae_common.MultimodalVAE):
  """The MoPoE-VAE family (see the module docstring); honours `base.Model` and `base.Generative`.

  References:
    Sutter, Daunhawer & Vogt, Generalized Multimodal ELBO, 2021.
  """

  def _subsets(self, params, inputs, present) -> tuple[DiagonalGaussian, jnp.ndarray]:
    experts = self.encode(params, inputs)
    means, log_variances, available = subset_products_of_experts(
        experts.mean, experts.log_variance, present, prior_subsets=self.config.prior_subsets)
    return DiagonalGaussian(means, log_variances), available

  def conditional(self, params, inputs, present) -> DiagonalGaussian:
    subsets, _ = self._subsets(params, inputs, present)
    membership = np.zeros((len(subsets.mean), len(self.modalities)), bool)
    for row, subset in enumerate(modality_subsets(len(self.modalities))):
      membership[row, list(subset)] = True
    exact = jnp.all(membership[:, :, None] == present[None], axis=1)  # [S, B]: the subset of the present ones
    (mean, log_variance), _ = mixture_of_experts((subsets.mean, subsets.log_variance), exact)
    return DiagonalGaussian(mean, log_variance)

  def loss(self, params, model_state, batch, rng, step):
    inputs, present = self.inputs(batch)
    subsets, available = self._subsets(params, inputs, present)
    (mean, log_variance), _ = mixture_of_experts((subsets.mean, subsets.log_variance), available)
    z = DiagonalGaussian(mean, log_variance).sample(rng, 1)[0]
    reconstruction = self.weighted(self.log_likelihoods(params, self.decode(params, z), inputs), present)
    kls = subsets.kl_to_standard_normal()  # [S, B]
    kl = jnp.sum(jnp.where(available, kls, 0.0), axis=0) / jnp.maximum(jnp.sum(available, axis=0), 1)
    beta = kl_warmup(step, self.config.kl_warmup_steps, beta=self.config.beta)
    bounds = elbo(reconstruction, kl, beta=beta)
    valid = jnp.any(present, axis=0)
    return masked_mean(-bounds, valid), ({"elbo": masked_mean(bounds, valid), "kl": masked_mean(kl, valid), "beta": beta}, model_state)


def config_schema(config) -> dict:
  return vae_common.config_schema(config, prior_subsets=Field(str, choices=PRIOR_SUBSETS))


FAMILY = Family(
    build=lambda config, data, references: MoPoE(config, data.spec, references),
    config_schema=config_schema,
    objectives=lambda config: ("elbo",),
    config_problems=lambda config: vae_common.config_problems(config, gaussian_only=True),
    judged=vae_common.judged,
)
