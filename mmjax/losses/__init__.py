"""Losses as pure functions (optax style): one module per family."""

from mmjax.losses.alignment import cycle_consistency_loss, domain_adversarial_loss, gradient_reversal
from mmjax.losses.chunked import chunked_clip_loss, chunked_siglip_loss
from mmjax.losses.contrastive import clamped_scale, clip_loss, nt_xent_loss, siglip_loss
from mmjax.losses.correlation import canonical_correlations, cca_loss, cosine_alignment_loss
from mmjax.losses.distributions import DiagonalGaussian, DiagonalLaplace, mixture_log_prob
from mmjax.losses.elbo import (
    dreg_iwae_surrogate,
    dreg_mmvae_looser_surrogate,
    elbo,
    iwae_bound,
    iwae_log_likelihood,
    kl_warmup,
    mmvae_looser_bound,
)
from mmjax.losses.gan import (
    GAN_LOSSES,
    GanLoss,
    gan_loss,
    gradient_penalty,
    hinge_discriminator_loss,
    hinge_generator_loss,
    lazy_r1_penalty,
    least_squares_discriminator_loss,
    least_squares_generator_loss,
    minimax_discriminator_loss,
    minimax_generator_loss,
    non_saturating_generator_loss,
    r1_penalty,
    wasserstein_discriminator_loss,
    wasserstein_generator_loss,
)
from mmjax.losses.likelihoods import (
    bernoulli_log_likelihood,
    categorical_log_likelihood,
    gaussian_log_likelihood,
    laplace_log_likelihood,
    likelihood_rescaling,
    token_log_likelihood,
)
from mmjax.losses.soft_dtw import pairwise_squared_distances, soft_dtw_alignment, soft_dtw_cost

__all__ = [
    # alignment
    "cycle_consistency_loss",
    "domain_adversarial_loss",
    "gradient_reversal",
    # contrastive (dense and chunked)
    "chunked_clip_loss",
    "chunked_siglip_loss",
    "clamped_scale",
    "clip_loss",
    "nt_xent_loss",
    "siglip_loss",
    # correlation
    "canonical_correlations",
    "cca_loss",
    "cosine_alignment_loss",
    # distributions
    "DiagonalGaussian",
    "DiagonalLaplace",
    "mixture_log_prob",
    # elbo
    "dreg_iwae_surrogate",
    "dreg_mmvae_looser_surrogate",
    "elbo",
    "iwae_bound",
    "iwae_log_likelihood",
    "kl_warmup",
    "mmvae_looser_bound",
    # gan
    "GAN_LOSSES",
    "GanLoss",
    "gan_loss",
    "gradient_penalty",
    "hinge_discriminator_loss",
    "hinge_generator_loss",
    "lazy_r1_penalty",
    "least_squares_discriminator_loss",
    "least_squares_generator_loss",
    "minimax_discriminator_loss",
    "minimax_generator_loss",
    "non_saturating_generator_loss",
    "r1_penalty",
    "wasserstein_discriminator_loss",
    "wasserstein_generator_loss",
    # likelihoods
    "bernoulli_log_likelihood",
    "categorical_log_likelihood",
    "gaussian_log_likelihood",
    "laplace_log_likelihood",
    "likelihood_rescaling",
    "token_log_likelihood",
    # soft-DTW alignment
    "pairwise_squared_distances",
    "soft_dtw_alignment",
    "soft_dtw_cost",
]
