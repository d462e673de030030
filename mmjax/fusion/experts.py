"""Products and mixtures of Gaussian experts: how multimodal VAEs (and the fusion library) combine
per-modality posteriors, with missing modalities.

Experts are stacked along a leading axis, one per modality in a fixed order (the models use sorted
modality names): means and log-variances ``[M, B, D]`` and a presence mask ``bool[M, B]``, the
batch's ``present`` entries stacked in the same order. An absent expert's parameters may hold
anything finite: they never change the result, and their gradients are exactly 0.

* `product_of_experts`: the MVAE posterior, a precision-weighted product with a ``N(0, I)`` prior
  expert, computed in log-precision space;
* `mixture_of_experts`: one component per sample, chosen by a deterministic stratified partition
  of the batch (static shapes; MMVAE's and MoPoE's mixture sampling);
* `mixture_of_products_of_experts`: MoPoE, the mixture over every non-empty subset of the
  present modalities of the subset's product (`modality_subsets`,
  `subset_products_of_experts`).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np

from mmjax import checks
from mmjax.numerics import masked_logsumexp

# Which subsets' products include the N(0, I) prior expert (see `subset_products_of_experts`).
PRIOR_SUBSETS = ("none", "all", "full")


def _check_experts(where: str, means, log_variances, present) -> tuple[dict[str, int], jax.Array]:
  bound = checks.check_shape(f"{where}: means", means, ("M", "B", "D"))
  checks.check_shape(f"{where}: log_variances", log_variances, ("M", "B", "D"), bound)
  checks.check_dtype(f"{where}: means", means, "float")
  checks.check_dtype(f"{where}: log_variances", log_variances, "float")
  return bound, _presence(where, present, bound)


def _presence(where: str, present, bound: dict[str, int]) -> jax.Array:
  if present is None:
    return jnp.ones((bound["M"], bound["B"]), jnp.bool_)
  checks.check_shape(f"{where}: present", present, ("M", "B"), bound)
  checks.check_dtype(f"{where}: present", present, "bool")
  return present


def _product(means, log_variances, present, with_prior) -> tuple[jax.Array, jax.Array]:
  """PoE of the present experts, plus the prior expert where `with_prior` (or nothing is present)."""
  means, log_variances = means.astype(jnp.float32), log_variances.astype(jnp.float32)
  with_prior = with_prior | ~jnp.any(present, axis=0)  # [B]
  # The prior expert N(0, I) has log-precision 0 and mean 0: appended as one more expert.
  mask = jnp.concatenate([present, with_prior[None]])[..., None]  # [M + 1, B, 1]
  log_precisions = jnp.concatenate([jnp.where(present[..., None], -log_variances, 0.0), jnp.zeros_like(means[:1])])
  joint_log_precision = masked_logsumexp(log_precisions, mask, axis=0)
  # Normalised precisions, softmax over the present experts (the prior included).
  weights = jnp.where(mask, jnp.exp(jnp.where(mask, log_precisions - joint_log_precision, 0.0)), 0.0)
  safe_means = jnp.concatenate([jnp.where(present[..., None], means, 0.0), jnp.zeros_like(means[:1])])
  return jnp.sum(weights * safe_means, axis=0), -joint_log_precision


def product_of_experts(
    means: jax.Array,
    log_variances: jax.Array,
    present: jax.Array | None = None,
    *,
    prior_expert: bool = True,
) -> tuple[jax.Array, jax.Array]:
  """Product of diagonal Gaussian experts, in precision space, with an optional ``N(0, I)`` prior expert.

  The product of Gaussians ``N(μ_m, σ_m²)`` is the Gaussian of precision ``Σ_m 1/σ_m²`` and mean
  ``Σ_m (1/σ_m²) μ_m / Σ_m 1/σ_m²``. Everything is computed from log-variances:
  ``log σ² = −logsumexp_m(−log σ_m²)`` and the mean weights are ``softmax_m(−log σ_m²)``, so
  log-variances of ±30 (precisions of e^±30) give finite values and gradients.

  An absent expert's precision is zeroed with the "double where": its log-precision is replaced by
  a finite value before any arithmetic and its weight is then set to 0, so its inputs change
  nothing and get a zero (never NaN) gradient. (Giving it a log-variance of +inf instead, the
  usual trick, makes JAX's gradients NaN.) A sample with no present expert and no prior expert
  gets ``N(0, I)``.

  Args:
    means: ``[M, B, D]`` experts' means.
    log_variances: ``[M, B, D]`` experts' log-variances.
    present: optional ``bool[M, B]``; False leaves the expert out for that sample.
    prior_expert: include the ``N(0, I)`` expert (MVAE always does: it keeps the product
      well-defined with any subset of modalities and regularises it).

  Returns:
    ``(mean, log_variance)``, each ``[B, D]`` float32.

  References:
    Wu & Goodman, Multimodal Generative Models for Scalable Weakly-Supervised Learning, 2018.
    Unlike its reference code (and MoPoE's), no ``1e-8`` is added to the experts' variances.

  >>> mean, log_variance = product_of_experts(jnp.full((1, 1, 2), 2.0), jnp.zeros((1, 1, 2)))
  >>> mean, jnp.exp(log_variance)  # N(2, 1)·N(0, 1) ∝ N(1, 1/2)
  (Array([[1., 1.]], dtype=float32), Array([[0.5, 0.5]], dtype=float32))
  """
  _, present = _check_experts("product_of_experts", means, log_variances, present)
  with_prior = jnp.full(present.shape[1:], prior_expert, jnp.bool_)
  return _product(means, log_variances, present, with_prior)


def stratified_components(present: jax.Array) -> jax.Array:
  """Assigns each sample one of its present mixture components by a deterministic stratified partition.

  Samples with the same presence pattern form a group (of ``g`` samples, with ``n`` present
  components). In batch order, the group's first ``≈ g/n`` samples take its first present
  component, the next ``≈ g/n`` its second, and so on: component ``j`` gets the samples of rank
  ``r`` with ``⌊r·n/g⌋ = j``, so each component gets ``⌊g/n⌋`` or ``⌈g/n⌉`` of them. With every
  component present this is MoPoE's ``mixture_component_selection`` (contiguous blocks of the
  batch; it gives any remainder to the last component). The batch order is random, so a fixed
  partition samples the mixture with stratification, static shapes and no random key.

  Args:
    present: ``bool[C, B]``, which components each sample may use.

  Returns:
    ``int32[B]`` component indices; a sample with no present component gets 0.

  >>> stratified_components(jnp.ones((2, 4), bool)).tolist()
  [0, 0, 1, 1]
  >>> stratified_components(jnp.array([[1, 1, 0, 1], [1, 1, 1, 0], [1, 1, 1, 1]], bool)).tolist()
  [0, 1, 1, 0]
  """
  checks.check_shape("stratified_components: present", present, ("C", "B"))
  checks.check_dtype("stratified_components: present", present, "bool")
  size = present.shape[1]
  index = jnp.arange(size)
  # A stable sort by presence pattern makes every group contiguous, in batch order.
  order = jnp.lexsort(tuple(present))
  patterns = present[:, order]
  starts = jnp.concatenate([jnp.ones((1,), jnp.bool_), jnp.any(patterns[:, 1:] != patterns[:, :-1], axis=0)])
  group = jnp.cumsum(starts) - 1
  rank = index - jax.lax.cummax(jnp.where(starts, index, 0))
  group_size = jax.ops.segment_sum(jnp.ones(size, jnp.int32), group, num_segments=size)[group]
  count = jnp.sum(patterns, axis=0)
  choice = rank * count // group_size
  # The chosen component is the `choice`-th present one (counting from 0).
  chosen = jnp.argmax(patterns & (jnp.cumsum(patterns, axis=0) - 1 == choice), axis=0).astype(jnp.int32)
  return jnp.zeros(size, jnp.int32).at[order].set(chosen)


def mixture_of_experts(experts, present: jax.Array | None = None):
  """Picks one present component per sample (`stratified_components`) from stacked experts.

  Sampling each sample's latent from its chosen component is a stratified sample of the uniform
  mixture ``1/|P| Σ_{m ∈ P} q_m`` of the present components. The chosen component's parameters
  get the gradient; the others get 0.

  Args:
    experts: a pytree of arrays ``[C, B, ...]`` (``(means, log_variances)``, a stacked
      `DiagonalGaussian` or `DiagonalLaplace` from `mmjax.losses.distributions`, …).
    present: optional ``bool[C, B]``.

  Returns:
    ``(selected, component)``: the pytree of the chosen components' parameters ``[B, ...]``, and
    ``int32[B]`` their indices. A sample with no present component gets all-zero parameters (the
    standard distribution for the log-parametrised distributions of `mmjax.losses`) and index 0.

  >>> means = jnp.array([[[1.0], [1.0]], [[2.0], [2.0]]])  # 2 experts, batch of 2
  >>> (mean, _), component = mixture_of_experts((means, jnp.zeros_like(means)))
  >>> mean.tolist(), component.tolist()
  ([[1.0], [2.0]], [0, 1])
  """
  leaves = jax.tree.leaves(experts)
  if not leaves:
    raise ValueError("mixture_of_experts: experts: expected a pytree of [C, B, ...] arrays, got no arrays.")
  bound: dict[str, int] = {}
  for path, leaf in jax.tree_util.tree_leaves_with_path(experts):
    name = jax.tree_util.keystr(path) or "array"
    expected = ("C", "B", *[None] * max(jnp.ndim(leaf) - 2, 0))
    bound = checks.check_shape(f"mixture_of_experts: experts{name}", leaf, expected, bound)
  present = jnp.ones((bound["C"], bound["B"]), jnp.bool_) if present is None else present
  checks.check_shape("mixture_of_experts: present", present, ("C", "B"), bound)
  checks.check_dtype("mixture_of_experts: present", present, "bool")
  component = stratified_components(present)
  any_present = jnp.any(present, axis=0)

  def select(leaf: jax.Array) -> jax.Array:
    trailing = [1] * (leaf.ndim - 2)
    chosen = jnp.take_along_axis(leaf, component.reshape(1, -1, *trailing), axis=0)[0]
    return jnp.where(any_present.reshape(-1, *trailing), chosen, 0)

  return jax.tree.map(select, experts), component


def modality_subsets(num_modalities: int) -> tuple[tuple[int, ...], ...]:
  """Every non-empty subset of ``range(num_modalities)``, by size then lexicographically.

  >>> modality_subsets(3)
  ((0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2))
  """
  if not isinstance(num_modalities, int) or num_modalities < 1:
    raise ValueError(f"modality_subsets: num_modalities: expected a positive int, got {num_modalities!r}.")
  modalities = range(num_modalities)
  return tuple(s for size in range(1, num_modalities + 1) for s in itertools.combinations(modalities, size))


def subset_products_of_experts(
    means: jax.Array,
    log_variances: jax.Array,
    present: jax.Array | None = None,
    *,
    prior_subsets: str = "none",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """The product of experts of every non-empty subset of modalities (`modality_subsets` order).

  A subset is available to a sample when all of its modalities are present: as in the MoPoE
  reference code, a subset with a missing modality is left out rather than reduced to its present
  members (that would repeat a smaller subset and double its weight in the mixture).

  Args:
    means: ``[M, B, D]`` experts' means.
    log_variances: ``[M, B, D]`` experts' log-variances.
    present: optional ``bool[M, B]``.
    prior_subsets: which subsets' products include the ``N(0, I)`` prior expert: ``"none"``,
      ``"all"``, or ``"full"``: only the subset of all M modalities, which is what MoPoE's reference
      implementation does (its ``poe_fusion`` appends the prior expert when the subset has every
      modality).

  Returns:
    ``(means, log_variances, available)``: ``[S, B, D]``, ``[S, B, D]`` and ``bool[S, B]``, with
    ``S = 2^M − 1``. An unavailable subset's product is still finite (that of its present
    members, or ``N(0, I)``).

  References:
    Sutter et al., Generalized Multimodal ELBO, 2021.

  >>> zeros = jnp.zeros((2, 1, 3))  # 2 experts, a batch of 1
  >>> _, _, available = subset_products_of_experts(zeros, zeros, jnp.array([[True], [False]]))
  >>> available[:, 0].tolist()  # subsets (0,), (1,), (0, 1)
  [True, False, False]
  """
  where = "subset_products_of_experts"
  bound, present = _check_experts(where, means, log_variances, present)
  if prior_subsets not in PRIOR_SUBSETS:
    raise ValueError(f"{where}: prior_subsets: expected one of {PRIOR_SUBSETS}, got {prior_subsets!r}.")
  subsets = modality_subsets(bound["M"])
  membership = np.zeros((len(subsets), bound["M"]), bool)
  for row, subset in enumerate(subsets):
    membership[row, list(subset)] = True
  with_prior = {
      "none": np.zeros(len(subsets), bool),
      "all": np.ones(len(subsets), bool),
      "full": membership.all(axis=1),
  }[prior_subsets]
  member_present = membership[:, :, None] & present[None]  # [S, M, B]
  subset_means, subset_log_variances = jax.vmap(_product, in_axes=(None, None, 0, 0))(
      means, log_variances, member_present, jnp.broadcast_to(with_prior[:, None], (len(subsets), bound["B"]))
  )
  available = ~jnp.any(membership[:, :, None] & ~present[None], axis=1)
  return subset_means, subset_log_variances, available


def mixture_of_products_of_experts(
    means: jax.Array,
    log_variances: jax.Array,
    present: jax.Array | None = None,
    *,
    prior_subsets: str = "none",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """MoPoE: one stratified pick per sample among the products of its available modality subsets.

  The MoPoE posterior is the uniform mixture, over the non-empty subsets of the present
  modalities, of each subset's product of experts (`subset_products_of_experts`); this picks each
  sample's component with `mixture_of_experts`, so that a sample from the returned Gaussian is a
  stratified sample of that mixture.

  Args:
    means: ``[M, B, D]`` experts' means.
    log_variances: ``[M, B, D]`` experts' log-variances.
    present: optional ``bool[M, B]``.
    prior_subsets: see `subset_products_of_experts`.

  Returns:
    ``(mean, log_variance, subset)``: ``[B, D]``, ``[B, D]`` and ``int32[B]``, the index of each
    sample's subset in `modality_subsets`.

  References:
    Sutter et al., Generalized Multimodal ELBO, 2021.

  >>> mean, log_variance, subset = mixture_of_products_of_experts(jnp.zeros((2, 6, 1)), jnp.zeros((2, 6, 1)))
  >>> subset.tolist()  # subsets (0,), (1,), (0, 1), two samples each
  [0, 0, 1, 1, 2, 2]
  """
  subset_means, subset_log_variances, available = subset_products_of_experts(
      means, log_variances, present, prior_subsets=prior_subsets
  )
  (mean, log_variance), subset = mixture_of_experts((subset_means, subset_log_variances), available)
  return mean, log_variance, subset
