"""Variational bounds on ``log p(x)`` and their gradient estimators: ELBO with β and warm-up, IWAE,
DReG, MMVAE's "looser" multimodal bound, and a chunked IWAE estimate for evaluation.

The importance-weighted estimators take log-weights ``log w_k = log p(x, z_k) − log q(z_k | x)``
of ``K`` samples ``z_k ~ q(z | x)`` drawn with the reparameterisation trick (the ``sample`` of
`mmjax.losses.distributions`), stacked as ``[K, B]``. Every bound is per sample (``[B]``) and is
to be maximised: a training loss is ``-mean(bound)``. All functions are pure and work under `jit`,
`grad` and `vmap`. The DReG surrogates take a function computing the log-weights from the samples,
so that they can reweight the gradient that reaches the encoder through those samples.
"""

import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.numerics import masked_logsumexp

LogWeightsFn = Callable[[jax.Array], jax.Array]


def elbo(log_likelihood: jax.Array, kl: jax.Array, *, beta: float | jax.Array = 1.0) -> jax.Array:
  """The evidence lower bound with a weighted KL term: ``E_q[log p(x|z)] − β·KL(q(z|x) ‖ p(z))``.

  Args:
    log_likelihood: ``[B]`` log-likelihoods of one sample ``z ~ q(z|x)`` each, or ``[K, B]`` of
      K samples (averaged: the Monte Carlo estimate of the expectation).
    kl: ``[B]`` KL divergences (analytic, e.g. `DiagonalGaussian.kl_to_standard_normal`), or, with
      the shape of `log_likelihood`, their single-sample estimates ``log q(z|x) − log p(z)`` at
      the same samples (then ``elbo`` with ``β = 1`` equals `iwae_bound` with K = 1).
    beta: the KL weight (β-VAE; `kl_warmup` anneals it).

  Returns:
    ``[B]`` bounds (float32).

  References:
    Kingma & Welling, Auto-Encoding Variational Bayes, 2014. Higgins et al., β-VAE, 2017.

  >>> elbo(jnp.array([-3.0, -5.0]), jnp.array([1.0, 2.0]), beta=0.5)
  Array([-3.5, -6. ], dtype=float32)
  """
  checks.check_dtype("elbo: log_likelihood", log_likelihood, "float")
  checks.check_dtype("elbo: kl", kl, "float")
  samples_axis = (None,) if jnp.ndim(log_likelihood) == 2 else ()
  bound = checks.check_shape("elbo: log_likelihood", log_likelihood, (*samples_axis, "B"))
  if jnp.ndim(kl) == 2:
    checks.check_shape("elbo: kl (per sample)", kl, log_likelihood.shape)
  else:
    checks.check_shape("elbo: kl", kl, ("B",), bound)
  checks.check_shape("elbo: beta", beta, ())
  terms = log_likelihood.astype(jnp.float32) - jnp.asarray(beta, jnp.float32) * kl.astype(jnp.float32)
  return jnp.mean(terms, axis=0) if terms.ndim == 2 else terms


def kl_warmup(step: int | jax.Array, warmup_steps: int | jax.Array, *, beta: float | jax.Array = 1.0) -> jax.Array:
  """The KL weight at `step` (counted from 0): β·min((step + 1) / warmup_steps, 1), a linear warm-up.

  This is MVAE's annealing factor (``(global_step + 1) / (annealing_epochs · steps_per_epoch)``),
  which is never 0: the first update already sees a little of the KL. Its reference code applies
  it only while ``epoch < annealing_epochs`` (epochs counted from 1), so there the factor stops at
  ``(A − 1)/A`` and jumps to 1; here it rises linearly to 1 at step ``warmup_steps − 1``.

  Args:
    step: the (0-based) update being computed; may be traced (the train state's step).
    warmup_steps: steps to reach β; 0 gives β from the start. Steps before the first (negative)
      give 0.
    beta: the final KL weight.

  Returns:
    A float32 scalar.

  References:
    Bowman et al., Generating Sentences from a Continuous Space, 2016 (KL annealing).
    Wu & Goodman, Multimodal Generative Models for Scalable Weakly-Supervised Learning, 2018.

  >>> [round(float(kl_warmup(step, 4, beta=2.0)), 2) for step in range(6)]
  [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
  """
  checks.check_shape("kl_warmup: step", step, ())
  checks.check_shape("kl_warmup: warmup_steps", warmup_steps, ())
  checks.check_shape("kl_warmup: beta", beta, ())
  progress = (jnp.asarray(step, jnp.float32) + 1.0) / jnp.maximum(jnp.asarray(warmup_steps, jnp.float32), 1.0)
  return jnp.asarray(beta, jnp.float32) * jnp.clip(progress, 0.0, 1.0)


def _logsumexp(log_weights: jax.Array, axis: int) -> jax.Array:
  # `masked_logsumexp` rather than `jax.nn.logsumexp`: it stays finite at any finite magnitude.
  return masked_logsumexp(log_weights, jnp.ones((), jnp.bool_), axis=axis)


def _log_mean_exp(log_weights: jax.Array, axis: int) -> jax.Array:
  return _logsumexp(log_weights, axis) - math.log(log_weights.shape[axis])


def _check_log_weights(where: str, log_weights, expected: tuple[str, ...]) -> dict[str, int]:
  bound = checks.check_shape(f"{where}: log_weights", log_weights, expected)
  checks.check_dtype(f"{where}: log_weights", log_weights, "float")
  return bound


def iwae_bound(log_weights: jax.Array) -> jax.Array:
  """The importance-weighted bound ``log (1/K) Σ_k w_k`` of K samples, per sample.

  Equals the ELBO's estimate for K = 1, never decreases with K in expectation, and tends to
  ``log p(x)`` as K grows. Its gradient is the IWAE estimator (normalised weights
  ``w̃_k = w_k / Σ_j w_j`` on each sample's ``∇ log w_k``).

  Args:
    log_weights: ``[K, B]`` ``log p(x, z_k) − log q(z_k|x)`` for ``z_k ~ q(z|x)``.

  Returns:
    ``[B]`` bounds (float32).

  References:
    Burda et al., Importance Weighted Autoencoders, 2016.

  >>> iwae_bound(jnp.log(jnp.array([[1.0], [3.0]])))  # log((1 + 3) / 2)
  Array([0.6931...], dtype=float32)
  """
  _check_log_weights("iwae_bound", log_weights, ("K", "B"))
  return _log_mean_exp(log_weights.astype(jnp.float32), axis=0)


@jax.custom_vjp
def _reweighting_tap(z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
  """``z`` and two zero taps ``[...]``; the gradient reaching ``z`` is scaled by their cotangents' ratio."""
  zeros = jnp.zeros(z.shape[:-1], jnp.float32)
  return z, zeros, zeros


def _reweighting_tap_fwd(z):
  return _reweighting_tap(z), None


def _reweighting_tap_bwd(_, cotangents):
  z_cotangent, weighted, plain = cotangents
  # The surrogate adds Σ_k w̃_k·weighted_k + Σ_k plain_k to each bound, so `weighted` receives
  # c·w̃_k and `plain` receives c, the caller's cotangent of that bound: their ratio is w̃_k
  # whatever the caller does with the bound. Where c is 0, z's cotangent is 0 too.
  nonzero = plain != 0
  ratio = jnp.where(nonzero, weighted / jnp.where(nonzero, plain, 1.0), 0.0)
  return ((z_cotangent * ratio[..., None]).astype(z_cotangent.dtype),)


_reweighting_tap.defvjp(_reweighting_tap_fwd, _reweighting_tap_bwd)


def _dreg_bounds(log_weights_fn: LogWeightsFn, z: jax.Array, where: str, axis: int) -> jax.Array:
  """IWAE bounds along `axis` whose gradient is DReG's (see `dreg_iwae_surrogate`)."""
  checks.check_dtype(f"{where}: z", z, "float")
  tapped, weighted, plain = _reweighting_tap(z)
  log_weights = log_weights_fn(tapped)
  checks.check_shape(f"{where}: log_weights_fn(z) (one log-weight per sample of z)", log_weights, z.shape[:-1])
  checks.check_dtype(f"{where}: log_weights_fn(z)", log_weights, "float")
  log_weights = log_weights.astype(jnp.float32)
  fixed = jax.lax.stop_gradient(log_weights)
  total = _logsumexp(fixed, axis)
  normalised = jnp.exp(jnp.minimum(fixed - jnp.expand_dims(total, axis), 0.0))
  # Value: the IWAE bound. Gradient: w̃_k ∇ log w_k for the generative model's parameters (IWAE);
  # through z, w̃_k once more from the tap, hence w̃_k² for the encoder (DReG).
  bound = total - math.log(log_weights.shape[axis])
  return bound + jnp.sum(normalised * (log_weights - fixed + weighted) + plain, axis=axis)


def dreg_iwae_surrogate(log_weights_fn: LogWeightsFn, z: jax.Array) -> jax.Array:
  """The IWAE bound, as a surrogate whose gradient is the doubly reparameterised (DReG) estimator.

  The value is `iwae_bound` of ``log_weights_fn(z)``. Its gradient is, for the parameters of the
  generative model, the IWAE gradient ``Σ_k w̃_k ∇ log w_k``, and for the encoder, reached only
  through the reparameterised samples ``z``, ``Σ_k w̃_k² (∂ log w_k / ∂z_k)(∂z_k / ∂φ)``
  (Tucker et al., eq. 5), where ``w̃_k`` are the normalised importance weights. Unlike the IWAE
  gradient, its variance for the encoder vanishes as q approaches the true posterior, and its
  signal-to-noise ratio does not decay with K.

  `log_weights_fn` must compute ``log p(x, z_k) − log q(z_k|x)`` with the posterior's parameters
  under `jax.lax.stop_gradient` (``q.stop_gradient().log_prob(z)``): the score-function term is
  what DReG removes. Each log-weight must depend on its own sample only. The surrogate scales the
  gradient reaching ``z`` inside `log_weights_fn` only, whatever the caller does with the result
  (a mean over the batch, a weighted sum…). Reverse mode only (`jax.grad`, `jax.vjp`).

  Args:
    log_weights_fn: maps ``z`` ``[K, B, D]`` to log-weights ``[K, B]``.
    z: ``[K, B, D]`` reparameterised samples of q (they carry the encoder's gradient).

  Returns:
    ``[B]`` IWAE bounds (float32) with the DReG gradient.

  References:
    Tucker et al., Doubly Reparameterized Gradient Estimators for Monte Carlo Objectives, 2019.
    Shi et al. 2019 (MMVAE) train with it, as ``dreg`` in their reference code (a PyTorch hook
    multiplies the gradient of ``z`` by the normalised weights).

  >>> from mmjax.losses.distributions import DiagonalGaussian
  >>> def bound(mean):
  ...   q = DiagonalGaussian(mean, jnp.zeros_like(mean))
  ...   z = q.sample(jax.random.key(0), 4)  # [K=4, B=1, D=1]
  ...   prior = DiagonalGaussian(jnp.zeros((1, 1)), jnp.zeros((1, 1)))
  ...   log_weights = lambda z: prior.log_prob(z) - q.stop_gradient().log_prob(z)
  ...   return dreg_iwae_surrogate(log_weights, z)[0]
  >>> value, gradient = jax.value_and_grad(bound)(jnp.ones((1, 1)))
  >>> bool(value < 0), bool(gradient[0, 0] < 0)  # q = N(1, 1) is pulled towards p(z|x) = N(0, 1)
  (True, True)
  """
  checks.check_shape("dreg_iwae_surrogate: z", z, ("K", "B", "D"))
  return _dreg_bounds(log_weights_fn, z, "dreg_iwae_surrogate", axis=0)


def _masked_modality_mean(bounds: jax.Array, present, where: str) -> jax.Array:
  """Mean over the present modalities (axis 0 of ``[M, B]``); 0 for a sample with none."""
  if present is None:
    return jnp.mean(bounds, axis=0)
  checks.check_shape(f"{where}: present", present, bounds.shape)
  checks.check_dtype(f"{where}: present", present, "bool")
  total = jnp.sum(jnp.where(present, bounds, 0.0), axis=0)
  return total / jnp.maximum(jnp.sum(present, axis=0), 1)


def mmvae_looser_bound(log_weights: jax.Array, present: jax.Array | None = None) -> jax.Array:
  """MMVAE's multimodal IWAE bound with the average over modalities outside the log ("looser").

  With M unimodal posteriors ``q_m(z|x_m)`` and their mixture ``q(z|x) = 1/M Σ_n q_n(z|x_n)``,
  the bound is ``1/M Σ_m E_{z_m^{1:K} ~ q_m} [log 1/K Σ_k p(x, z_m^k) / q(z_m^k | x)]``: each
  modality's posterior draws its own K samples (a stratified sample of the mixture), but every
  log-weight divides by the MIXTURE density (`mmjax.losses.distributions.mixture_log_prob`), not by
  ``q_m``, and ``p(x | z)`` is the likelihood of all modalities (each rescaled by its weight,
  `likelihood_rescaling`). Averaging outside the log gives a looser bound than the IWAE of all
  M·K samples (logmeanexp over them, `iwae_bound` of the ``[M·K, B]`` log-weights); the paper
  found it trains better cross-modal generation.

  Args:
    log_weights: ``[M, K, B]``: ``log_weights[m, k, b] = log p(x_b, z) − log q(z | x_b)`` at
      ``z = z_m^k``, the k-th sample of modality m's posterior.
    present: optional ``bool[M, B]``; the mean runs over the present modalities of each sample
      (whose mixture and likelihood the caller also restricts to them).

  Returns:
    ``[B]`` bounds (float32).

  References:
    Shi et al., Variational Mixture-of-Experts Autoencoders for Multi-Modal Deep Generative
    Models, 2019 (eq. 4; ``m_iwae_looser`` in the reference code).

  >>> log_weights = jnp.log(jnp.array([[[1.0], [3.0]], [[2.0], [2.0]]]))  # M = 2, K = 2, B = 1
  >>> mmvae_looser_bound(log_weights)  # (log 2 + log 2) / 2
  Array([0.6931...], dtype=float32)
  """
  _check_log_weights("mmvae_looser_bound", log_weights, ("M", "K", "B"))
  bounds = _log_mean_exp(log_weights.astype(jnp.float32), axis=1)
  return _masked_modality_mean(bounds, present, "mmvae_looser_bound")


def dreg_mmvae_looser_surrogate(
    log_weights_fn: LogWeightsFn, z: jax.Array, present: jax.Array | None = None
) -> jax.Array:
  """`mmvae_looser_bound` as a surrogate whose gradient is DReG's (MMVAE's ``dreg_looser``).

  Each modality's IWAE term gets the treatment of `dreg_iwae_surrogate`, with weights normalised
  over that modality's K samples: the generative model gets ``Σ_k w̃_mk ∇ log w_mk`` and the
  encoders, through ``z_m^k``, ``Σ_k w̃_mk² ∂ log w_mk / ∂z_m^k``. The mixture density in the
  log-weights must use every posterior's parameters under `jax.lax.stop_gradient`
  (``mixture_log_prob(posteriors.stop_gradient(), z, present)``).

  Args:
    log_weights_fn: maps ``z`` ``[M, K, B, D]`` (K samples of each modality's posterior) to
      log-weights ``[M, K, B]``, as described in `mmvae_looser_bound`.
    z: ``[M, K, B, D]`` reparameterised samples.
    present: optional ``bool[M, B]``.

  Returns:
    ``[B]`` looser bounds (float32) with the DReG gradient.

  References:
    Shi et al. 2019 (``m_dreg_looser`` in the reference code); Tucker et al. 2019.

  >>> from mmjax.losses.distributions import DiagonalGaussian, mixture_log_prob
  >>> posteriors = DiagonalGaussian(jnp.array([[[0.5]], [[-0.5]]]), jnp.zeros((2, 1, 1)))  # M = 2, B = 1, D = 1
  >>> z = jax.vmap(lambda q, key: q.sample(key, 3))(posteriors, jax.random.split(jax.random.key(0), 2))
  >>> prior = DiagonalGaussian(jnp.zeros((1, 1)), jnp.zeros((1, 1)))
  >>> log_weights = lambda z: prior.log_prob(z) - mixture_log_prob(posteriors.stop_gradient(), z)
  >>> dreg_mmvae_looser_surrogate(log_weights, z).shape
  (1,)
  """
  checks.check_shape("dreg_mmvae_looser_surrogate: z", z, ("M", "K", "B", "D"))
  bounds = _dreg_bounds(log_weights_fn, z, "dreg_mmvae_looser_surrogate", axis=1)
  return _masked_modality_mean(bounds, present, "dreg_mmvae_looser_surrogate")


def iwae_log_likelihood(
    log_weights_fn: Callable[[jax.Array], jax.Array],
    key: jax.Array,
    *,
    num_samples: int,
    chunk_size: int,
) -> jax.Array:
  """The IWAE estimate of ``log p(x)`` with many samples, drawn and reduced `chunk_size` at a time.

  A `jax.lax.scan` over ``num_samples / chunk_size`` chunks keeps a running ``logsumexp``, so
  memory is that of one chunk whatever `num_samples` (evaluation uses K = 1000 to 5000). The
  result equals `iwae_bound` of all the log-weights at once.

  Args:
    log_weights_fn: maps a PRNG key to ``[chunk_size, B]`` log-weights of `chunk_size` fresh samples
      (it samples ``z ~ q(z|x)`` with that key and returns ``log p(x, z) − log q(z|x)``).
    key: PRNG key, split into one key per chunk.
    num_samples: K, a multiple of `chunk_size`.
    chunk_size: samples per chunk.

  Returns:
    ``[B]`` estimates (float32).

  References:
    Burda et al., Importance Weighted Autoencoders, 2016 (the log-likelihood estimate, K = 5000).

  >>> log_weights_fn = lambda key: jnp.zeros((4, 2)) + jax.random.uniform(key)
  >>> iwae_log_likelihood(log_weights_fn, jax.random.key(0), num_samples=12, chunk_size=4).shape
  (2,)
  """
  where = "iwae_log_likelihood"
  for name, value in (("num_samples", num_samples), ("chunk_size", chunk_size)):
    if not isinstance(value, int) or value < 1:
      raise ValueError(f"{where}: {name}: expected a positive Python int, got {value!r}.")
  if num_samples % chunk_size:
    raise ValueError(f"{where}: num_samples: expected a multiple of chunk_size={chunk_size}, got {num_samples}.")
  keys = jax.random.split(key, num_samples // chunk_size)

  def chunk_logsumexp(chunk_key: jax.Array) -> jax.Array:
    log_weights = log_weights_fn(chunk_key)
    checks.check_shape(f"{where}: log_weights_fn(key)", log_weights, (chunk_size, None))
    checks.check_dtype(f"{where}: log_weights_fn(key)", log_weights, "float")
    return _logsumexp(log_weights.astype(jnp.float32), axis=0)

  def accumulate(total: jax.Array, chunk_key: jax.Array) -> tuple[jax.Array, None]:
    return jnp.logaddexp(total, chunk_logsumexp(chunk_key)), None

  total, _ = jax.lax.scan(accumulate, chunk_logsumexp(keys[0]), keys[1:])
  return total - math.log(num_samples)
