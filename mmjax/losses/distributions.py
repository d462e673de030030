"""Diagonal Gaussian and Laplace distributions: the posteriors and priors of multimodal VAEs.

Each is a small immutable pytree (`flax.struct.dataclass`) of arrays ``[..., D]``: a batch of
factorised distributions over the last axis, the latent dimensions. They pass through `jit`,
`vmap`, `grad` and `jax.lax.scan` like any pytree, and stack: parameters ``[M, B, D]`` hold M
experts (one per modality) for a batch of B samples.

* ``sample(key, num_samples)`` draws reparameterised samples ``[num_samples, ..., D]``;
* ``log_prob(z)`` is the density summed over the latent axis, for ``z`` of shape ``[..., D]``
  ending with the parameters' shape (leading sample axes allowed);
* ``stop_gradient()`` returns the same distribution with its parameters cut from the graph, the
  ``log q`` of the DReG estimator;
* both are parametrised in log space, so all-zero parameters are the standard distribution
  (``N(0, I)``, ``Laplace(0, 1)``): masking an absent expert's parameters with zeros keeps every
  computation on it finite.

Computations are in float32 whatever the parameters' dtype.
"""

import math

import jax
import jax.numpy as jnp
from flax import struct

from mmjax import checks
from mmjax.numerics import masked_logsumexp

# Added by MMVAE to its posterior scale, so that no latent dimension's scale reaches zero.
MMVAE_SCALE_FLOOR = 1e-6


def _check_parameters(where: str, first, second, names: tuple[str, str]) -> None:
  checks.check_shape(f"{where}: {names[0]}", first, (*[None] * max(jnp.ndim(first) - 1, 0), "D"))
  checks.check_shape(f"{where}: {names[1]}", second, jnp.shape(first))
  checks.check_dtype(f"{where}: {names[0]}", first, "float")
  checks.check_dtype(f"{where}: {names[1]}", second, "float")


def _check_point(where: str, z, shape: tuple[int, ...]) -> None:
  checks.check_shape(f"{where}: z", z, (*[None] * max(jnp.ndim(z) - len(shape), 0), *shape))
  checks.check_dtype(f"{where}: z", z, "float")


def _check_num_samples(where: str, num_samples) -> None:
  if not isinstance(num_samples, int) or num_samples < 1:
    raise ValueError(f"{where}: num_samples: expected a positive Python int (a static shape), got {num_samples!r}.")


@struct.dataclass
class DiagonalGaussian:
  """Independent Gaussians ``N(mean, exp(log_variance))`` over the last axis.

  Attributes:
    mean: ``[..., D]`` means.
    log_variance: ``[..., D]`` log-variances (what VAE encoders output; precision-space products
      of experts combine them stably).

  >>> q = DiagonalGaussian(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
  >>> q.sample(jax.random.key(0), 4).shape
  (4, 2, 3)
  >>> q.log_prob(jnp.zeros((2, 3)))  # −(3/2)·log 2π
  Array([-2.7568..., -2.7568...], dtype=float32)
  >>> DiagonalGaussian(jnp.ones((1, 2)), jnp.zeros((1, 2))).kl_to_standard_normal()
  Array([1.], dtype=float32)
  """

  mean: jax.Array
  log_variance: jax.Array

  def _checked(self, where: str) -> tuple[jax.Array, jax.Array]:
    _check_parameters(f"DiagonalGaussian.{where}", self.mean, self.log_variance, ("mean", "log_variance"))
    return self.mean.astype(jnp.float32), self.log_variance.astype(jnp.float32)

  @property
  def variance(self) -> jax.Array:
    return jnp.exp(self.log_variance.astype(jnp.float32))

  @property
  def scale(self) -> jax.Array:
    """The standard deviations."""
    return jnp.exp(0.5 * self.log_variance.astype(jnp.float32))

  def sample(self, key: jax.Array, num_samples: int) -> jax.Array:
    """``[num_samples, ..., D]`` samples ``mean + scale·ε``, ``ε ~ N(0, I)``: differentiable in the parameters."""
    mean, log_variance = self._checked("sample")
    _check_num_samples("DiagonalGaussian.sample", num_samples)
    noise = jax.random.normal(key, (num_samples, *mean.shape), jnp.float32)
    return mean + jnp.exp(0.5 * log_variance) * noise

  def log_prob(self, z: jax.Array) -> jax.Array:
    """``log q(z)`` summed over the last axis: ``[..., *shape] -> [..., *shape[:-1]]``."""
    mean, log_variance = self._checked("log_prob")
    _check_point("DiagonalGaussian.log_prob", z, mean.shape)
    squared = jnp.square(z.astype(jnp.float32) - mean) * jnp.exp(-log_variance)
    return -0.5 * jnp.sum(squared + log_variance + math.log(2 * math.pi), axis=-1)

  def stop_gradient(self) -> "DiagonalGaussian":
    """The same distribution with `jax.lax.stop_gradient` on its parameters."""
    return jax.tree.map(jax.lax.stop_gradient, self)

  def kl_to_standard_normal(self) -> jax.Array:
    """``KL(self ‖ N(0, I)) = ½ Σ (mean² + σ² − 1 − log σ²)``, summed over the last axis."""
    mean, log_variance = self._checked("kl_to_standard_normal")
    return 0.5 * jnp.sum(jnp.square(mean) + jnp.exp(log_variance) - 1.0 - log_variance, axis=-1)


@struct.dataclass
class DiagonalLaplace:
  """Independent Laplace distributions ``Laplace(loc, exp(log_scale))`` over the last axis.

  The density of one coordinate is ``exp(−|z − loc| / b) / (2b)`` with ``b = exp(log_scale)``; its
  mean is `loc` and its variance ``2b²``.

  Attributes:
    loc: ``[..., D]`` locations.
    log_scale: ``[..., D]`` log scales ``log b``.

  >>> q = DiagonalLaplace(jnp.zeros((2, 3)), jnp.zeros((2, 3)))
  >>> q.log_prob(jnp.zeros((2, 3)))  # −3·log 2
  Array([-2.0794..., -2.0794...], dtype=float32)
  >>> q.kl_to_standard_laplace()
  Array([0., 0.], dtype=float32)
  """

  loc: jax.Array
  log_scale: jax.Array

  @classmethod
  def from_mmvae_logits(cls, loc: jax.Array, logits: jax.Array) -> "DiagonalLaplace":
    """MMVAE's posterior: scale ``softmax(logits)·D + 1e-6``, the softmax over the D latent dimensions.

    In the reference implementation (Shi et al. 2019, ``Enc.forward`` of every unimodal VAE),
    the encoder's second head ``l`` gives the scale ``F.softmax(l, dim=-1) * l.size(-1) +
    Constants.eta`` with ``eta = 1e-6``. The softmax is across the latent dimensions of each
    sample, not a per-dimension positivity map: the scales of one sample sum to ``D (1 + 1e-6)``,
    so their mean is ~1, the prior's scale; the encoder only chooses how to share them out. The
    reference's prior is ``Laplace(0, softmax(0)·D) = Laplace(0, 1)`` (the scale's logits are a
    frozen zero parameter unless ``--learn-prior``).

    Args:
      loc: ``[..., D]`` the encoder's location head.
      logits: ``[..., D]`` the encoder's scale head.

    Returns:
      The posterior, with ``log_scale = log(softmax(logits)·D + 1e-6)``.

    >>> q = DiagonalLaplace.from_mmvae_logits(jnp.zeros((1, 4)), jnp.array([[0.0, 0.0, 0.0, jnp.log(5.0)]]))
    >>> q.scale
    Array([[0.5..., 0.5..., 0.5..., 2.5...]], dtype=float32)
    """
    _check_parameters("DiagonalLaplace.from_mmvae_logits", loc, logits, ("loc", "logits"))
    size = logits.shape[-1]
    scale = jax.nn.softmax(logits.astype(jnp.float32), axis=-1) * size + MMVAE_SCALE_FLOOR
    return cls(loc, jnp.log(scale))

  def _checked(self, where: str) -> tuple[jax.Array, jax.Array]:
    _check_parameters(f"DiagonalLaplace.{where}", self.loc, self.log_scale, ("loc", "log_scale"))
    return self.loc.astype(jnp.float32), self.log_scale.astype(jnp.float32)

  @property
  def mean(self) -> jax.Array:
    return self.loc.astype(jnp.float32)

  @property
  def scale(self) -> jax.Array:
    """The scales ``b`` (not the standard deviations, which are ``√2·b``)."""
    return jnp.exp(self.log_scale.astype(jnp.float32))

  @property
  def variance(self) -> jax.Array:
    return 2.0 * jnp.exp(2.0 * self.log_scale.astype(jnp.float32))

  def sample(self, key: jax.Array, num_samples: int) -> jax.Array:
    """``[num_samples, ..., D]`` samples ``loc + b·ε``, ``ε ~ Laplace(0, 1)``: differentiable in the parameters."""
    loc, log_scale = self._checked("sample")
    _check_num_samples("DiagonalLaplace.sample", num_samples)
    noise = jax.random.laplace(key, (num_samples, *loc.shape), jnp.float32)
    return loc + jnp.exp(log_scale) * noise

  def log_prob(self, z: jax.Array) -> jax.Array:
    """``log q(z)`` summed over the last axis: ``[..., *shape] -> [..., *shape[:-1]]``."""
    loc, log_scale = self._checked("log_prob")
    _check_point("DiagonalLaplace.log_prob", z, loc.shape)
    distance = jnp.abs(z.astype(jnp.float32) - loc) * jnp.exp(-log_scale)
    return -jnp.sum(distance + log_scale + math.log(2.0), axis=-1)

  def stop_gradient(self) -> "DiagonalLaplace":
    """The same distribution with `jax.lax.stop_gradient` on its parameters."""
    return jax.tree.map(jax.lax.stop_gradient, self)

  def kl_to_standard_laplace(self) -> jax.Array:
    """``KL(self ‖ Laplace(0, 1))`` in closed form, summed over the last axis.

    Per coordinate, with ``b = exp(log_scale)``: ``−log b + |loc| + b·exp(−|loc|/b) − 1``, the
    special case of ``KL(Laplace(μ₁, b₁) ‖ Laplace(μ₂, b₂)) = log(b₂/b₁) + |μ₁ − μ₂|/b₂
    + (b₁/b₂)·exp(−|μ₁ − μ₂|/b₁) − 1``. The product ``b·exp(−|loc|/b)`` is formed as
    ``exp(log b − |loc|/b)``, which underflows to 0 rather than overflowing.
    """
    loc, log_scale = self._checked("kl_to_standard_laplace")
    distance = jnp.abs(loc)
    return jnp.sum(-log_scale + distance + jnp.exp(log_scale - distance * jnp.exp(-log_scale)) - 1.0, axis=-1)


Distribution = DiagonalGaussian | DiagonalLaplace


def mixture_log_prob(components: Distribution, z: jax.Array, present: jax.Array | None = None) -> jax.Array:
  """``log q(z)`` under the uniform mixture ``q = 1/|P| Σ_{m ∈ P} q_m`` of the present components.

  This is the mixture-of-experts posterior density of MMVAE, ``q(z|x) = 1/M Σ_m q_m(z|x_m)``,
  which its importance weights use whichever component drew ``z``. Absent components (False in
  `present`) are left out per sample: their parameters, whatever they hold, reach neither the
  value nor the gradient.

  Args:
    components: a `DiagonalGaussian` or `DiagonalLaplace` with parameters ``[M, B, D]``: M
      components for each of B samples.
    z: ``[..., B, D]`` points (leading sample axes allowed, e.g. ``[K, B, D]``).
    present: optional ``bool[M, B]``; a sample with no present component gets 0.

  Returns:
    ``[..., B]`` log-densities.

  >>> experts = DiagonalGaussian(jnp.array([[[0.0]], [[2.0]]]), jnp.zeros((2, 1, 1)))
  >>> mixture_log_prob(experts, jnp.array([[1.0]]))  # both components give N(1; 0, 1)
  Array([-1.4189...], dtype=float32)
  """
  where = "mixture_log_prob"
  bound: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(components):
    bound = checks.check_shape(f"{where}: components{jax.tree_util.keystr(path)}", leaf, ("M", "B", "D"), bound)
  _check_point(where, z, (bound["B"], bound["D"]))
  if present is None:
    present = jnp.ones((bound["M"], bound["B"]), jnp.bool_)
  checks.check_shape(f"{where}: present", present, ("M", "B"), bound)
  checks.check_dtype(f"{where}: present", present, "bool")
  safe = jax.tree.map(lambda p: jnp.where(present[..., None], p, 0), components)
  log_probs = jax.vmap(lambda component: component.log_prob(z))(safe)  # [M, ..., B]
  mask = present.reshape(present.shape[0], *[1] * (jnp.ndim(z) - 2), present.shape[1])
  count = jnp.sum(present, axis=0)
  return masked_logsumexp(log_probs, mask, axis=0) - jnp.log(jnp.maximum(count, 1))
