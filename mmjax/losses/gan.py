"""Adversarial (GAN) losses on a discriminator's outputs, and the gradient penalties that regularise it.

Every loss takes the discriminator's raw outputs, ``real_logits`` on a batch of real data and
``fake_logits`` on generated data, each ``[B]`` (one unbounded score per sample: no sigmoid, no
clipping; squeeze a ``Dense(1)`` output first), and returns a scalar **to minimise**: the
discriminator (critic) minimises ``*_discriminator_loss``, the generator ``*_generator_loss``.
Losses are computed in float32 whatever the input dtype and averaged over the valid rows of an
optional ``bool[B]`` mask (the real and the fake batch each have their own, and their own size);
a batch with no valid row contributes 0. `GAN_LOSSES` pairs the two losses of each formulation by
name, for configs.

The penalties (`gradient_penalty`, `r1_penalty`, `lazy_r1_penalty`) take the discriminator as a
function of its input, a batch ``[B, ...]`` or a pytree of such batches (the modalities of a
multimodal discriminator, interpolated together), returning ``[B]`` scores. They need each sample's
input gradient, and take it as the gradient of the summed scores: this assumes that a row's score
depends on that row only (no batch normalisation or minibatch statistics in the discriminator, as
the WGAN-GP paper also requires). Inputs must be floating point: pass a discrete modality (text
tokens, a class label) as an embedding or a one-hot, or close over it in the function (a condition
that is not penalised).

Every function is pure and works under `jit`, `grad` (the penalties differentiate twice when their
gradient is taken with respect to the discriminator's parameters) and `vmap`.
"""

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.numerics import masked_mean

# The discriminator as the penalties see it: a batch (or pytree of batches) to ``[B]`` scores.
Discriminator = Callable[[Any], jax.Array]


def _check_logits(fn: str, name: str, logits, mask, mask_name: str = "mask") -> None:
  bound = checks.check_shape(f"{fn}: {name}", logits, ("B",))
  checks.check_dtype(f"{fn}: {name}", logits, "float")
  if mask is not None:
    checks.check_shape(f"{fn}: {mask_name}", mask, ("B",), bound)
    checks.check_dtype(f"{fn}: {mask_name}", mask, "bool")


def _check_pair(fn: str, real_logits, fake_logits, real_mask, fake_mask) -> None:
  _check_logits(fn, "real_logits", real_logits, real_mask, "real_mask")
  _check_logits(fn, "fake_logits", fake_logits, fake_mask, "fake_mask")


def _f32(x: jax.Array) -> jax.Array:
  return jnp.asarray(x, jnp.float32)


def minimax_discriminator_loss(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    *,
    real_mask: jax.Array | None = None,
    fake_mask: jax.Array | None = None,
) -> jax.Array:
  """The discriminator's loss of the original GAN: ``−log D(x) − log(1 − D(G(z)))``, ``D = σ(logits)``.

  Written with softplus (``−log σ(t) = softplus(−t)``, ``−log(1 − σ(t)) = softplus(t)``), so it is
  finite with finite gradients for any finite logits. The non-saturating GAN trains its
  discriminator with this loss too.

  Args:
    real_logits: ``[B_real]`` discriminator logits on real data.
    fake_logits: ``[B_fake]`` discriminator logits on generated data.
    real_mask: optional ``bool[B_real]``; False rows are left out.
    fake_mask: optional ``bool[B_fake]``; False rows are left out.

  Returns:
    The scalar loss (float32): the mean over valid real rows plus the mean over valid fake rows.

  References:
    Goodfellow et al., Generative Adversarial Nets, 2014.

  >>> round(float(minimax_discriminator_loss(jnp.array([0.0]), jnp.array([0.0]))), 4)  # 2 log 2
  1.3863
  >>> float(minimax_discriminator_loss(jnp.array([1e4]), jnp.array([-1e4])))
  0.0
  """
  _check_pair("minimax_discriminator_loss", real_logits, fake_logits, real_mask, fake_mask)
  return masked_mean(jax.nn.softplus(-_f32(real_logits)), real_mask) + masked_mean(
      jax.nn.softplus(_f32(fake_logits)), fake_mask
  )


def minimax_generator_loss(fake_logits: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """The generator's loss of the original (saturating) GAN: ``log(1 − D(G(z)))``, ``= −softplus(logits)``.

  The form of the minimax game itself. Its gradient, ``−σ(logits)``, vanishes when the
  discriminator confidently rejects the samples (early in training); `non_saturating_generator_loss`
  is the usual remedy.

  Args:
    fake_logits: ``[B]`` discriminator logits on generated data.
    mask: optional ``bool[B]``; False rows are left out.

  Returns:
    The scalar loss (float32, at most 0), averaged over the valid rows.

  References:
    Goodfellow et al., Generative Adversarial Nets, 2014.

  >>> round(float(minimax_generator_loss(jnp.array([0.0]))), 4)  # log(1/2)
  -0.6931
  >>> float(minimax_generator_loss(jnp.array([-1e4])))
  -0.0
  """
  _check_logits("minimax_generator_loss", "fake_logits", fake_logits, mask)
  return masked_mean(-jax.nn.softplus(_f32(fake_logits)), mask)


def non_saturating_generator_loss(fake_logits: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """The non-saturating generator loss: ``−log D(G(z)) = softplus(−logits)``.

  Same fixed point as the minimax loss, but a strong gradient (``−σ(−logits)``) exactly where the
  discriminator rejects the samples.

  Args:
    fake_logits: ``[B]`` discriminator logits on generated data.
    mask: optional ``bool[B]``; False rows are left out.

  Returns:
    The scalar loss (float32), averaged over the valid rows.

  References:
    Goodfellow et al., Generative Adversarial Nets, 2014 (section 3).

  >>> round(float(non_saturating_generator_loss(jnp.array([0.0]))), 4)
  0.6931
  >>> float(non_saturating_generator_loss(jnp.array([-1e4])))
  10000.0
  """
  _check_logits("non_saturating_generator_loss", "fake_logits", fake_logits, mask)
  return masked_mean(jax.nn.softplus(-_f32(fake_logits)), mask)


def hinge_discriminator_loss(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    *,
    real_mask: jax.Array | None = None,
    fake_mask: jax.Array | None = None,
) -> jax.Array:
  """The hinge discriminator loss: ``relu(1 − D(x)) + relu(1 + D(G(z)))``.

  Args:
    real_logits: ``[B_real]`` discriminator scores on real data.
    fake_logits: ``[B_fake]`` discriminator scores on generated data.
    real_mask: optional ``bool[B_real]``; False rows are left out.
    fake_mask: optional ``bool[B_fake]``; False rows are left out.

  Returns:
    The scalar loss (float32): mean over valid real rows plus mean over valid fake rows.

  References:
    Lim & Ye, Geometric GAN, 2017; Miyato et al., Spectral Normalization for GANs, 2018;
    Brock et al., Large Scale GAN Training for High Fidelity Natural Image Synthesis (BigGAN), 2019.

  >>> float(hinge_discriminator_loss(jnp.array([2.0, 0.5]), jnp.array([-3.0, 0.0])))
  0.75
  """
  _check_pair("hinge_discriminator_loss", real_logits, fake_logits, real_mask, fake_mask)
  return masked_mean(jax.nn.relu(1.0 - _f32(real_logits)), real_mask) + masked_mean(
      jax.nn.relu(1.0 + _f32(fake_logits)), fake_mask
  )


def hinge_generator_loss(fake_logits: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """The hinge generator loss: ``−D(G(z))``.

  Args:
    fake_logits: ``[B]`` discriminator scores on generated data.
    mask: optional ``bool[B]``; False rows are left out.

  Returns:
    The scalar loss (float32), averaged over the valid rows.

  References:
    Brock et al., BigGAN, 2019.

  >>> float(hinge_generator_loss(jnp.array([1.0, 3.0])))
  -2.0
  """
  _check_logits("hinge_generator_loss", "fake_logits", fake_logits, mask)
  return masked_mean(-_f32(fake_logits), mask)


def least_squares_discriminator_loss(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    *,
    real_target: float = 1.0,
    fake_target: float = 0.0,
    real_mask: jax.Array | None = None,
    fake_mask: jax.Array | None = None,
) -> jax.Array:
  """The least-squares (LSGAN) discriminator loss: ``½ (D(x) − b)² + ½ (D(G(z)) − a)²``.

  Args:
    real_logits: ``[B_real]`` discriminator scores on real data (no sigmoid).
    fake_logits: ``[B_fake]`` discriminator scores on generated data.
    real_target: ``b``, the score real data should get (LSGAN: 1).
    fake_target: ``a``, the score generated data should get (LSGAN: 0; or −1 with the generator
      target 0, the paper's Pearson χ² setting).
    real_mask: optional ``bool[B_real]``; False rows are left out.
    fake_mask: optional ``bool[B_fake]``; False rows are left out.

  Returns:
    The scalar loss (float32): the paper's ½ times the mean squared error on each batch, summed.

  References:
    Mao et al., Least Squares Generative Adversarial Networks, 2017.

  >>> float(least_squares_discriminator_loss(jnp.array([1.0, 3.0]), jnp.array([2.0])))
  3.0
  """
  _check_pair("least_squares_discriminator_loss", real_logits, fake_logits, real_mask, fake_mask)
  return 0.5 * (
      masked_mean(jnp.square(_f32(real_logits) - real_target), real_mask)
      + masked_mean(jnp.square(_f32(fake_logits) - fake_target), fake_mask)
  )


def least_squares_generator_loss(
    fake_logits: jax.Array, *, target: float = 1.0, mask: jax.Array | None = None
) -> jax.Array:
  """The least-squares (LSGAN) generator loss: ``½ (D(G(z)) − c)²``.

  Args:
    fake_logits: ``[B]`` discriminator scores on generated data.
    target: ``c``, the score the generator wants its samples to get (LSGAN: 1, the real target).
    mask: optional ``bool[B]``; False rows are left out.

  Returns:
    The scalar loss (float32), averaged over the valid rows.

  References:
    Mao et al., Least Squares Generative Adversarial Networks, 2017.

  >>> float(least_squares_generator_loss(jnp.array([0.0, 3.0])))
  1.25
  """
  _check_logits("least_squares_generator_loss", "fake_logits", fake_logits, mask)
  return 0.5 * masked_mean(jnp.square(_f32(fake_logits) - target), mask)


def wasserstein_discriminator_loss(
    real_logits: jax.Array,
    fake_logits: jax.Array,
    *,
    real_mask: jax.Array | None = None,
    fake_mask: jax.Array | None = None,
) -> jax.Array:
  """The Wasserstein critic loss: ``D(G(z)) − D(x)``, to be used with `gradient_penalty` (WGAN-GP).

  Args:
    real_logits: ``[B_real]`` critic scores on real data.
    fake_logits: ``[B_fake]`` critic scores on generated data.
    real_mask: optional ``bool[B_real]``; False rows are left out.
    fake_mask: optional ``bool[B_fake]``; False rows are left out.

  Returns:
    The scalar loss (float32): mean over valid fake rows minus mean over valid real rows.

  References:
    Arjovsky et al., Wasserstein GAN, 2017; Gulrajani et al., Improved Training of Wasserstein
    GANs, 2017.

  >>> float(wasserstein_discriminator_loss(jnp.array([2.0, 4.0]), jnp.array([-1.0])))
  -4.0
  """
  _check_pair("wasserstein_discriminator_loss", real_logits, fake_logits, real_mask, fake_mask)
  return masked_mean(_f32(fake_logits), fake_mask) - masked_mean(_f32(real_logits), real_mask)


def wasserstein_generator_loss(fake_logits: jax.Array, *, mask: jax.Array | None = None) -> jax.Array:
  """The Wasserstein generator loss: ``−D(G(z))``.

  Args:
    fake_logits: ``[B]`` critic scores on generated data.
    mask: optional ``bool[B]``; False rows are left out.

  Returns:
    The scalar loss (float32), averaged over the valid rows.

  References:
    Arjovsky et al., Wasserstein GAN, 2017.

  >>> float(wasserstein_generator_loss(jnp.array([1.0, 2.0])))
  -1.5
  """
  _check_logits("wasserstein_generator_loss", "fake_logits", fake_logits, mask)
  return masked_mean(-_f32(fake_logits), mask)


class GanLoss(NamedTuple):
  """The two losses of one GAN formulation."""

  discriminator: Callable[..., jax.Array]
  generator: Callable[..., jax.Array]


# Formulations a config may name. The non-saturating GAN keeps the minimax discriminator loss.
GAN_LOSSES: dict[str, GanLoss] = {
    "minimax": GanLoss(minimax_discriminator_loss, minimax_generator_loss),
    "non_saturating": GanLoss(minimax_discriminator_loss, non_saturating_generator_loss),
    "hinge": GanLoss(hinge_discriminator_loss, hinge_generator_loss),
    "least_squares": GanLoss(least_squares_discriminator_loss, least_squares_generator_loss),
    "wasserstein": GanLoss(wasserstein_discriminator_loss, wasserstein_generator_loss),
}


def gan_loss(name: str) -> GanLoss:
  """The discriminator and generator losses of the formulation `name` (see `GAN_LOSSES`).

  >>> gan_loss("hinge").generator(jnp.array([2.0]))
  Array(-2., dtype=float32)
  >>> gan_loss("vanilla")
  Traceback (most recent call last):
  ...
  ValueError: Unknown GAN loss 'vanilla'; valid choices: ['hinge', 'least_squares', 'minimax', ...
  """
  if name not in GAN_LOSSES:
    raise ValueError(f"Unknown GAN loss {name!r}; valid choices: {sorted(GAN_LOSSES)}.")
  return GAN_LOSSES[name]


def _check_inputs(fn: str, name: str, inputs, mask, like=None, size: int | None = None) -> int:
  """Checks a batch or pytree of batches; returns the batch size. With `like`, shapes must match it."""
  leaves = jax.tree_util.tree_leaves_with_path(inputs)
  if not leaves:
    raise ValueError(f"{fn}: {name} holds no array.")
  if like is not None and jax.tree.structure(inputs) != jax.tree.structure(like):
    raise ValueError(
        f"{fn}: {name} must have the structure of the real batch, {jax.tree.structure(like)}; "
        f"got {jax.tree.structure(inputs)}."
    )
  like_leaves = [None] * len(leaves) if like is None else jax.tree.leaves(like)
  bound = {} if size is None else {"B": size}
  for (path, leaf), reference in zip(leaves, like_leaves):
    where = f"{fn}: {name}{jax.tree_util.keystr(path)}"
    rest = (None,) * max(jnp.ndim(leaf) - 1, 0) if reference is None else jnp.shape(reference)[1:]
    bound = checks.check_shape(where, leaf, ("B", *rest), bound)
    checks.check_dtype(where, leaf, "float")
  if mask is not None:
    checks.check_shape(f"{fn}: mask", mask, ("B",), bound)
    checks.check_dtype(f"{fn}: mask", mask, "bool")
  return bound["B"]


def _row_squared_norms(grads) -> jax.Array:
  """``[B]``: the squared norm of each row's gradient, over every leaf together."""
  return sum(jnp.sum(jnp.square(g.astype(jnp.float32)).reshape(g.shape[0], -1), axis=1) for g in jax.tree.leaves(grads))


def _input_gradients(fn: str, discriminator: Discriminator, inputs, mask, size: int):
  """The gradient of the kept rows' summed scores: each row's gradient of its own score when rows
  are independent; with a batch-coupled critic, masked rows' scores add nothing to it."""

  def total(x):
    scores = discriminator(x)
    checks.check_shape(f"{fn}: discriminator output", scores, (size,))
    scores = _f32(scores)
    return jnp.sum(scores if mask is None else jnp.where(mask, scores, 0.0))

  return jax.grad(total)(inputs)


def gradient_penalty(
    critic: Discriminator,
    key: jax.Array,
    real,
    fake,
    *,
    weight: float = 10.0,
    mask: jax.Array | None = None,
) -> jax.Array:
  """The WGAN-GP gradient penalty ``λ · E[(‖∇ₓ̂ D(x̂)‖ − 1)²]`` on random interpolates of real and fake.

  Each row ``i`` is interpolated as ``x̂ᵢ = εᵢ xᵢ + (1 − εᵢ) x̃ᵢ`` with one ``εᵢ ~ U[0, 1)`` per row,
  drawn as ``jax.random.uniform(key, (B,))`` and shared by every leaf of the pytree (a pair of
  modalities is interpolated together). The gradient norm is taken over all leaves of the row. Where
  that gradient is exactly zero the penalty is ``λ`` and its gradient is zero, not NaN.

  Args:
    critic: maps a batch shaped like `real` to ``[B]`` scores. Rows may interact (a
      minibatch-stddev layer): the gradient is that of the kept rows' summed scores, as in
      WGAN-GP's and StyleGAN2's code.
    key: a `jax.random` key for the interpolation coefficients.
    real: a real batch ``[B, ...]`` (float), or a pytree of such batches.
    fake: a generated batch of the same structure and shapes as `real`.
    weight: ``λ`` (10 in the paper).
    mask: optional ``bool[B]``; False rows are left out of the mean.

  Returns:
    The scalar penalty (float32), to add to `wasserstein_discriminator_loss`.

  References:
    Gulrajani et al., Improved Training of Wasserstein GANs, 2017.

  A linear critic ``x ↦ 2·x₀`` has gradient norm 2 everywhere, so the penalty is ``λ (2 − 1)²``:

  >>> critic = lambda x: 2.0 * x[:, 0]
  >>> float(gradient_penalty(critic, jax.random.key(0), jnp.ones((4, 3)), jnp.zeros((4, 3))))
  10.0
  """
  fn = "gradient_penalty"
  size = _check_inputs(fn, "real", real, mask)
  _check_inputs(fn, "fake", fake, None, like=real, size=size)
  epsilon = jax.random.uniform(key, (size,), jnp.float32)

  def interpolate(x: jax.Array, x_fake: jax.Array) -> jax.Array:
    mix = epsilon.reshape((size,) + (1,) * (x.ndim - 1))
    return (mix * _f32(x) + (1.0 - mix) * _f32(x_fake)).astype(x.dtype)

  interpolates = jax.tree.map(interpolate, real, fake)
  squared = _row_squared_norms(_input_gradients(fn, critic, interpolates, mask, size))
  nonzero = squared > 0
  # The "double where": sqrt's derivative at 0 is infinite, so zero rows never reach it.
  norms = jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, squared, 1.0)), 0.0)
  return weight * masked_mean(jnp.square(norms - 1.0), mask)


def r1_penalty(
    discriminator: Discriminator,
    real,
    *,
    gamma: float = 10.0,
    mask: jax.Array | None = None,
) -> jax.Array:
  """The R1 penalty ``γ/2 · E[‖∇ₓ D(x)‖²]`` on real data.

  Args:
    discriminator: maps a batch shaped like `real` to ``[B]`` logits. Rows may interact (a
      minibatch-stddev layer): the gradient is that of the kept rows' summed logits, as in
      StyleGAN2's code.
    real: a real batch ``[B, ...]`` (float), or a pytree of such batches (the gradient's squared
      norm is summed over all leaves of a row).
    gamma: ``γ`` (StyleGAN2: 10 at 1024², less for smaller images).
    mask: optional ``bool[B]``; False rows are left out of the mean.

  Returns:
    The scalar penalty (float32), to add to the discriminator's loss.

  References:
    Mescheder et al., Which Training Methods for GANs do actually Converge?, 2018;
    Karras et al., Analyzing and Improving the Image Quality of StyleGAN (StyleGAN2), 2020.

  A linear discriminator ``x ↦ 3·x₀`` has squared gradient norm 9, so the penalty is ``γ/2 · 9``:

  >>> float(r1_penalty(lambda x: 3.0 * x[:, 0], jnp.ones((4, 2)), gamma=2.0))
  9.0
  """
  fn = "r1_penalty"
  return _checked_r1_penalty(fn, discriminator, real, gamma, mask, _check_inputs(fn, "real", real, mask))


def _checked_r1_penalty(fn: str, discriminator: Discriminator, real, gamma: float, mask, size: int) -> jax.Array:
  squared = _row_squared_norms(_input_gradients(fn, discriminator, real, mask, size))
  return 0.5 * gamma * masked_mean(squared, mask)


def lazy_r1_penalty(
    discriminator: Discriminator,
    real,
    step: jax.Array | int,
    *,
    gamma: float = 10.0,
    every: int = 16,
    mask: jax.Array | None = None,
) -> jax.Array:
  """The R1 penalty applied lazily: ``every × r1_penalty`` on steps divisible by `every`, 0 otherwise.

  Scaling by `every` keeps the penalty's average strength that of a penalty at every step. The
  branch is chosen with `jax.lax.cond` on the (traced) `step`, so under `jit` the penalty, one more
  forward pass and a double backward pass of the discriminator on the real batch, runs only on due
  steps and costs nothing on the others, forward and backward; the whole training step still
  compiles once. (A `jnp.where` would compute the penalty on every step; so does `lax.cond` under
  `vmap` with a batched `step`, where it becomes a select.) StyleGAN2 also corrects Adam for the
  lazy updates (learning rate and betas raised to the power ``every / (every + 1)``): that belongs
  to the optimiser's settings.

  Args:
    discriminator: as in `r1_penalty`.
    real: as in `r1_penalty`.
    step: the training step, an integer scalar (usually traced).
    gamma: ``γ``.
    every: apply the penalty every this many steps (StyleGAN2: 16).
    mask: optional ``bool[B]``; False rows are left out of the mean.

  Returns:
    The scalar penalty (float32).

  References:
    Karras et al., Analyzing and Improving the Image Quality of StyleGAN (StyleGAN2), 2020
    (section 3.1, lazy regularisation).

  >>> discriminator = lambda x: 3.0 * x[:, 0]
  >>> penalty = jax.jit(lambda step: lazy_r1_penalty(discriminator, jnp.ones((4, 2)), step, gamma=2.0, every=4))
  >>> [float(penalty(step)) for step in range(5)]
  [36.0, 0.0, 0.0, 0.0, 36.0]
  """
  fn = "lazy_r1_penalty"
  if not isinstance(every, int) or every < 1:
    raise ValueError(f"{fn}: every must be a positive int, got {every!r}.")
  checks.check_shape(f"{fn}: step", step, ())
  checks.check_dtype(f"{fn}: step", step, "int")
  size = _check_inputs(fn, "real", real, mask)
  return jax.lax.cond(
      step % every == 0,
      lambda: every * _checked_r1_penalty(fn, discriminator, real, gamma, mask, size),
      lambda: jnp.zeros((), jnp.float32),
  )
