"""Aligning two modalities without paired supervision: cycle consistency and adversarial alignment.

* `cycle_consistency_loss`: translators ``G: A → B`` and ``F: B → A`` should invert each other, so
  ``F(G(a)) ≈ a`` and ``G(F(b)) ≈ b`` (CycleGAN).
* `gradient_reversal`: the identity whose gradient is multiplied by ``−λ`` (DANN).
* `domain_adversarial_loss`: a domain classifier learns to tell which modality an embedding came
  from, while, through gradient reversal, the encoders learn to make the two indistinguishable.

Losses are computed in float32, average over the valid rows of optional ``bool[B]`` masks, and are
pure functions: use them under `jit`, `grad` and `vmap`.
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from mmjax import checks
from mmjax.losses import gan
from mmjax.numerics import masked_mean

# Per-element distances a cycle-consistency loss may use (CycleGAN: L1).
DISTANCES: dict[str, Callable[[jax.Array], jax.Array]] = {"l1": jnp.abs, "l2": jnp.square}


def _cycle_distance(fn: str, name: str, original, cycled, mask, distance) -> jax.Array:
  """``[B]``: the mean over each row's elements of ``distance(cycled − original)``."""
  bound = checks.check_shape(f"{fn}: {name}", original, ("B", *(None,) * max(jnp.ndim(original) - 1, 0)))
  checks.check_shape(f"{fn}: {name}_cycled", cycled, jnp.shape(original))
  checks.check_dtype(f"{fn}: {name}", original, "float")
  checks.check_dtype(f"{fn}: {name}_cycled", cycled, "float")
  if mask is not None:
    checks.check_shape(f"{fn}: {name}_mask", mask, ("B",), bound)
    checks.check_dtype(f"{fn}: {name}_mask", mask, "bool")
  difference = jnp.asarray(cycled, jnp.float32) - jnp.asarray(original, jnp.float32)
  per_row = jnp.mean(distance(difference).reshape(difference.shape[0], -1), axis=1)
  return masked_mean(per_row, mask)


def cycle_consistency_loss(
    first: jax.Array,
    first_cycled: jax.Array,
    second: jax.Array,
    second_cycled: jax.Array,
    *,
    distance: str = "l1",
    first_mask: jax.Array | None = None,
    second_mask: jax.Array | None = None,
) -> jax.Array:
  """Cycle-consistency loss between two modalities: ``d(F(G(a)), a) + d(G(F(b)), b)``.

  Each direction's distance is the mean over the elements of a row (the mean absolute or squared
  error, as CycleGAN's ``L1Loss``), averaged over the valid rows. The two batches are independent
  (unpaired data) and may differ in size. Multiply by the weight you want (CycleGAN: λ = 10).
  Continuous modalities only: compare a discrete one (text tokens) in an embedding space, or with a
  likelihood of the cycled logits.

  Args:
    first: ``[B1, ...]`` a batch of the first modality, ``a``.
    first_cycled: ``F(G(a))``, the same shape: ``a`` translated to the second modality and back.
    second: ``[B2, ...]`` a batch of the second modality, ``b``.
    second_cycled: ``G(F(b))``, the same shape as `second`.
    distance: ``"l1"`` or ``"l2"`` (see `DISTANCES`).
    first_mask: optional ``bool[B1]``; False rows are left out.
    second_mask: optional ``bool[B2]``; False rows are left out.

  Returns:
    The scalar loss (float32).

  References:
    Zhu et al., Unpaired Image-to-Image Translation using Cycle-Consistent Adversarial Networks
    (CycleGAN), 2017.

  >>> a, b = jnp.zeros((2, 3)), jnp.ones((1, 4))
  >>> float(cycle_consistency_loss(a, a + 0.5, b, b - 2.0))  # 0.5 + 2
  2.5
  >>> float(cycle_consistency_loss(a, a + 0.5, b, b - 2.0, distance="l2"))  # 0.25 + 4
  4.25
  """
  fn = "cycle_consistency_loss"
  if distance not in DISTANCES:
    raise ValueError(f"{fn}: unknown distance {distance!r}; valid choices: {sorted(DISTANCES)}.")
  measure = DISTANCES[distance]
  return _cycle_distance(fn, "first", first, first_cycled, first_mask, measure) + _cycle_distance(
      fn, "second", second, second_cycled, second_mask, measure
  )


@jax.custom_vjp
def _reverse(x, scale):
  return x


def _reverse_forward(x, scale):
  return x, scale


def _reverse_backward(scale, cotangent):
  flipped = jax.tree.map(lambda g: (-scale * g).astype(g.dtype), cotangent)
  return flipped, jnp.zeros_like(scale)


_reverse.defvjp(_reverse_forward, _reverse_backward)


def gradient_reversal(x, scale: float | jax.Array = 1.0):
  """The identity, whose gradient is multiplied by ``−scale`` on the way back.

  Placed between a feature extractor and a domain classifier, it lets one minimisation train the
  classifier to separate the domains and the extractor to confuse it. `scale` (``λ``) may be traced,
  for a schedule (DANN: ``λ = 2 / (1 + exp(−10 p)) − 1`` over training progress ``p``); no gradient
  flows into it. Defined with `jax.custom_vjp`: reverse-mode only (`jax.jvp` through it raises).

  Args:
    x: a float array, or a pytree of float arrays.
    scale: ``λ ≥ 0``, a scalar.

  Returns:
    `x`, unchanged.

  References:
    Ganin & Lempitsky, Unsupervised Domain Adaptation by Backpropagation, 2015; Ganin et al.,
    Domain-Adversarial Training of Neural Networks (DANN), 2016.

  >>> jax.grad(lambda x: jnp.sum(3.0 * gradient_reversal(x, 0.5)))(jnp.ones(2))
  Array([-1.5, -1.5], dtype=float32)
  """
  checks.check_shape("gradient_reversal: scale", scale, ())
  return _reverse(x, jnp.asarray(scale, jnp.float32))


def domain_adversarial_loss(
    domain_classifier: Callable[[jax.Array], jax.Array],
    first_embeddings: jax.Array,
    second_embeddings: jax.Array,
    *,
    scale: float | jax.Array = 1.0,
    first_mask: jax.Array | None = None,
    second_mask: jax.Array | None = None,
) -> jax.Array:
  """Adversarial alignment of two modalities' embeddings through a domain classifier and gradient reversal.

  The classifier gets both batches of embeddings through `gradient_reversal` and is scored by the
  binary cross-entropy of telling them apart (label 1: first modality, 0: second), the mean of the
  two batches' mean losses (balanced, whatever their sizes; ``log 2`` at chance). Minimising the
  returned value therefore trains the classifier to separate the modalities and, its gradient
  reversed and scaled by ``−scale``, the encoders upstream to make them indistinguishable.

  Args:
    domain_classifier: maps ``[N, D]`` embeddings to ``[N]`` logits that they come from the first
      modality; it is called once, on both batches concatenated.
    first_embeddings: ``[B1, D]`` embeddings of the first modality.
    second_embeddings: ``[B2, D]`` embeddings of the second modality.
    scale: ``λ``, the weight of the reversed gradient reaching the encoders (may be traced).
    first_mask: optional ``bool[B1]``; False rows are left out.
    second_mask: optional ``bool[B2]``; False rows are left out.

  Returns:
    The scalar classifier loss (float32).

  References:
    Ganin et al., Domain-Adversarial Training of Neural Networks (DANN), 2016.

  >>> classifier = lambda e: e[:, 0]
  >>> first, second = jnp.array([[2.0, 0.0]]), jnp.array([[-2.0, 0.0]])
  >>> round(float(domain_adversarial_loss(classifier, first, second)), 4)  # softplus(-2)
  0.1269
  >>> float(jax.grad(domain_adversarial_loss, argnums=1)(classifier, first, second)[0, 0])  # reversed
  0.0596...
  """
  fn = "domain_adversarial_loss"
  bound = checks.check_shape(f"{fn}: first_embeddings", first_embeddings, ("B1", "D"))
  bound = checks.check_shape(f"{fn}: second_embeddings", second_embeddings, ("B2", "D"), bound)
  checks.check_dtype(f"{fn}: first_embeddings", first_embeddings, "float")
  checks.check_dtype(f"{fn}: second_embeddings", second_embeddings, "float")
  for name, mask, size in (("first_mask", first_mask, "B1"), ("second_mask", second_mask, "B2")):
    if mask is not None:
      checks.check_shape(f"{fn}: {name}", mask, (size,), bound)
      checks.check_dtype(f"{fn}: {name}", mask, "bool")
  size = bound["B1"]
  embeddings = gradient_reversal(jnp.concatenate([first_embeddings, second_embeddings]), scale)
  logits = domain_classifier(embeddings)
  checks.check_shape(f"{fn}: domain_classifier output", logits, (size + bound["B2"],))
  return 0.5 * gan.minimax_discriminator_loss(
      logits[:size], logits[size:], real_mask=first_mask, fake_mask=second_mask
  )
