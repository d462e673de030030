"""MMAE: a deterministic multimodal autoencoder. Per-modality encoders give unimodal embeddings
``[B, D]``, a fusion chosen by name (`mmjax.models.fusion_configs`) combines those present into the
latent, and a decoder per modality reconstructs every modality from it; an optional correlation
loss between the unimodal embeddings, weighted by λ, aligns the modalities.

Loss per sample: ``−Σ_m w_m log p(x_m | z)`` over the present modalities, with ``z`` the fusion
of all present embeddings and (``unimodal_reconstruction``) also of each present one alone, so
the latent of one modality learns to generate the others (what cross-generation asks of it);
plus ``λ · correlation`` averaged over modality pairs (`mmjax.losses.correlation`: ``cosine``
alignment or Deep CCA's ``cca``; ``none`` to leave it out), each pair over the samples where both
are present.

Config (``model`` section; shared keys in `mmjax.models.vae_common`, without its variational
fields): ``fusion``/``fusion_options`` (a pooled fusion: its output width is ``latent_size``),
``correlation``, ``correlation_weight`` (λ), ``cca_regularization``, ``unimodal_reconstruction``.

``sample`` raises: a plain autoencoder has no prior, and decoding from an arbitrary Gaussian would
give meaningless "samples"; the evaluation therefore reports no joint coherence. Its
``log_likelihood`` is the reconstruction log-likelihood ``log p(x | z)`` of the present
modalities, not a bound on the marginal likelihood.
"""

import itertools
from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax.losses.correlation import cca_loss, cosine_alignment_loss
from mmjax.models import fusion_configs, vae_common
from mmjax.models.base import Family, Variables
from mmjax.numerics import masked_mean
from mmjax.schema import Field

CORRELATIONS = ("none", "cosine", "cca")


class MMAEModule(vae_common.VAEModule):
  """`vae_common.VAEModule` whose heads give one embedding per modality, fused into the latent.

  Attributes:
    fusion: a pooled fusion (`mmjax.fusion` contract) of width ``latent_size``.
  """

  fusion: nn.Module
  outputs_per_latent = 1

  def fuse(self, embeddings: jax.Array, present: jax.Array) -> jax.Array:
    """``[B, D]``: the fusion of the present ones of the embeddings ``[M, B, D]`` (``present`` ``bool[M, B]``)."""
    names = sorted(self.encoders)
    return self.fusion({m: embeddings[i] for i, m in enumerate(names)},
                       {m: present[i] for i, m in enumerate(names)}).astype(jnp.float32)

  def __call__(self, inputs: Mapping[str, jax.Array], train: bool = False):
    embeddings, _ = self.encode(inputs, train)
    return self.decode(self.fuse(embeddings, jnp.ones(embeddings.shape[:2], jnp.bool_)), train)


class MMAE(vae_common.MultimodalVAE):
  """The MMAE family (see the module docstring); honours `base.Model` and `base.Generative`.

  References:
    Ngiam et al., Multimodal Deep Learning, 2011. Andrew et al., Deep Canonical Correlation
    Analysis, 2013 (the ``cca`` loss).

  >>> from configs import mmae_digits
  >>> mmae_digits.get_config().model.fusion
  'mean'
  """

  module_class = MMAEModule
  has_prior = False
  objective = "reconstruction"

  def module_fields(self) -> dict:
    config = self.config
    return {"fusion": fusion_configs.build_fusion(config.fusion, config.fusion_options, config.latent_size, config.dtype)}

  def embeddings(self, params, inputs) -> jax.Array:
    """``[M, B, D]``: every modality's embedding, in sorted order."""
    return self.module.apply({"params": params}, inputs, method=vae_common.VAEModule.encode)[0]

  def fuse(self, params, embeddings: jax.Array, present: jax.Array) -> jax.Array:
    return self.module.apply({"params": params}, embeddings, present, method=MMAEModule.fuse)

  def sample_latent(self, params, inputs, present, key: jax.Array) -> jax.Array:
    """``[B, D]``: the fused latent of the present modalities (deterministic: `key` is unused)."""
    return self.fuse(params, self.embeddings(params, inputs), present)

  def correlation(self, embeddings: jax.Array, present: jax.Array) -> jax.Array:
    """The configured correlation loss, averaged over the modality pairs."""
    config = self.config
    pairs = list(itertools.combinations(range(len(self.modalities)), 2))
    if config.correlation == "cosine":
      terms = [cosine_alignment_loss(embeddings[i], embeddings[j], mask=present[i] & present[j]) for i, j in pairs]
    else:
      terms = [cca_loss(embeddings[i], embeddings[j], regularization=config.cca_regularization, mask=present[i] & present[j])
               for i, j in pairs]
    return jnp.mean(jnp.stack(terms))

  def loss(self, params, model_state, batch, rng, step):
    inputs, present = self.inputs(batch)
    embeddings = self.embeddings(params, inputs)
    count = len(self.modalities)
    # Conditioning subsets [S, M, B]: all present modalities, then each one alone.
    members = present[None]
    if self.config.unimodal_reconstruction:
      members = jnp.concatenate([members, jnp.eye(count, dtype=jnp.bool_)[:, :, None] & present[None]])
    latents = jax.vmap(lambda m: self.fuse(params, embeddings, m))(members)  # [S, B, D]
    subsets, size = members.shape[0], members.shape[2]
    log_likelihoods = self.log_likelihoods(params, self.decode(params, latents.reshape(subsets * size, -1)), inputs, subsets)
    reconstruction = self.weighted(log_likelihoods, jnp.tile(present, (1, subsets))).reshape(subsets, size)
    observed = jnp.any(members, axis=1)  # a subset with none of the sample's modalities adds nothing
    valid = jnp.any(present, axis=0)
    reconstruction_loss = masked_mean(jnp.sum(jnp.where(observed, -reconstruction, 0.0), axis=0), valid)
    metrics = {"reconstruction_loss": reconstruction_loss}
    loss = reconstruction_loss
    if self.config.correlation != "none":
      metrics["correlation_loss"] = self.correlation(embeddings, present)
      loss = loss + self.config.correlation_weight * metrics["correlation_loss"]
    return loss, (metrics, model_state)

  def _log_likelihood(self, params, inputs, present, key) -> jax.Array:
    """``[B]``: the reconstruction log-likelihood ``log p(x | z)`` of the present modalities."""
    latent = self.sample_latent(params, inputs, present, key)
    return jnp.sum(jnp.where(present, self.log_likelihoods(params, self.decode(params, latent), inputs), 0.0), axis=0)

  def sample(self, variables: Variables, num_samples: int, rng: jax.Array) -> dict[str, jax.Array]:
    """Not available: raises ValueError (a plain autoencoder has no prior; see the module docstring)."""
    raise ValueError("mmae: sample: a deterministic autoencoder has no prior to sample from; "
                     "use reconstruct or cross_generate, or a VAE family (mvae, mmvae, mopoe) for prior samples.")


def config_schema(config) -> dict:
  model = config.model
  return vae_common.config_schema(
      config, variational=False, **fusion_configs.schema(model.get("fusion_options", {})),
      correlation=Field(str, choices=CORRELATIONS), correlation_weight=Field(float, low=0.0),
      cca_regularization=Field(float, low=0.0), unimodal_reconstruction=Field(bool))


def config_problems(config) -> list[str]:
  model = config.model
  problems = vae_common.config_problems(config, variational=False)
  if model.fusion in fusion_configs.FUSIONS.choices:
    fusion = fusion_configs.module(model.fusion)
    if fusion.needs_tokens or fusion.outputs_predictions:
      pooled = [name for name in fusion_configs.FUSIONS.choices
                if not (fusion_configs.module(name).needs_tokens or fusion_configs.module(name).outputs_predictions)]
      problems.append(f"model.fusion: MMAE fuses pooled embeddings into a latent; {model.fusion!r} does not, valid: {pooled}")
    problems.extend(fusion_configs.problems(model.fusion, model.fusion_options))
  return problems


FAMILY = Family(
    build=lambda config, data, references: MMAE(config, data.spec, references),
    config_schema=config_schema,
    objectives=lambda config: (MMAE.objective,),
    config_problems=config_problems,
    judged=vae_common.judged,
)
