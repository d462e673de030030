"""What the multimodal VAE families share: per-modality encoders with posterior heads, decoders,
likelihoods, the config section, and the `base.Generative` API with its evaluation.

A family (`mvae`, `mmvae`, `mopoe`) subclasses `MultimodalVAE` and gives its training loss and
how it infers the latent from any subset of modalities (`conditional`, `proposal`). Modalities are
stacked in sorted name order wherever they become experts ``[M, B, D]``.

The likelihood of each modality is a config section (`likelihood_section`)::

    likelihoods=dict(image=likelihood_section("bernoulli"), label=likelihood_section("categorical", weight=50.0))

``weight`` multiplies the modality's log-likelihood in training (MVAE's label weight, MMVAE's
rescaling: `mmjax.losses.likelihood_rescaling`); evaluation's ``log_likelihood`` uses weight 1.

Every modality kind of the data layer decodes (`LIKELIHOODS`). Text is a categorical at each of
the ``L`` positions of the padded token sequence, independent given the latent, as the text
decoder's ``[B, L, vocab]`` logits are: its log-likelihood sums over all ``L`` positions, the pad
positions included. Scoring the pads as targets is what teaches the decoder where a caption ends:
generation takes the most likely token at every position at once (no autoregressive stop), so a
decoder never trained to emit the pad token would fill every position after the end with words.
MMVAE's reference code scores its padded CUB sentences the same way (a categorical at each of the
32 positions). Audio is a Gaussian or Laplace over the waveform samples (decoder output ``linear``:
`mmjax.decoders.audio.OUTPUTS`).
"""

import math
from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import checks, compiler_options, linear
from mmjax.data.spec import DataSpec
from mmjax.eval import coherence
from mmjax.losses import likelihoods as lik
from mmjax.losses.distributions import DiagonalGaussian, DiagonalLaplace, Distribution
from mmjax.losses.elbo import iwae_log_likelihood
from mmjax import reference_classifiers
from mmjax.models import decoder_configs, encoder_configs
from mmjax.models.base import Batch, Objective, Variables
from mmjax.schema import Field

# Likelihood names valid for each modality kind: every kind of `mmjax.data.spec.KINDS` (the data
# section's schema rejects any other kind, listing these).
LIKELIHOODS = {
    "image": ("bernoulli", "gaussian", "laplace"),
    "vector": ("gaussian", "laplace", "bernoulli"),
    "label": ("categorical",),
    "text": ("categorical",),
    "audio": ("gaussian", "laplace"),
}
# Maps from a decoder's output to the mean of a Gaussian or Laplace likelihood.
LINKS = {"identity": lambda x: x, "sigmoid": jax.nn.sigmoid}
POSTERIORS = ("gaussian", "laplace")


def likelihood_section(name: str, *, scale: float = 0.75, learn_scale: bool = False, link: str = "identity",
                       weight: float = 1.0) -> dict:
  """A modality's likelihood section.

  Args:
    name: ``bernoulli`` (decoder gives logits; data in [0, 1]), ``gaussian``, ``laplace``, or
      ``categorical`` (labels; text: one categorical per token position, pads included). Valid
      names per modality kind: `LIKELIHOODS`.
    scale: the Gaussian standard deviation or Laplace scale (MMVAE: 0.75); the initial value if learned.
    learn_scale: learn one scale per modality.
    link: ``identity`` or ``sigmoid`` (MMVAE's Laplace means), from decoder output to the mean.
    weight: the factor on this modality's log-likelihood in training.

  Returns:
    The section (a dict).

  >>> likelihood_section("laplace", link="sigmoid")["scale"]
  0.75
  """
  return dict(name=name, scale=scale, learn_scale=learn_scale, link=link, weight=weight)


def experts(loc: jax.Array, raw: jax.Array, posterior: str) -> Distribution:
  """The posterior distributions of an encoder's two heads: Gaussian (``raw`` = log-variance) or
  MMVAE's Laplace (``raw`` = scale logits, `DiagonalLaplace.from_mmvae_logits`).

  >>> experts(jnp.zeros((1, 2)), jnp.zeros((1, 2)), "laplace").scale
  Array([[1..., 1...]], dtype=float32)
  """
  if posterior == "gaussian":
    return DiagonalGaussian(loc, raw)
  return DiagonalLaplace.from_mmvae_logits(loc, raw)


def prior(posterior: str, batch_size: int, latent_size: int) -> Distribution:
  """The standard prior of the posterior's family: ``N(0, I)`` or ``Laplace(0, 1)``, ``[B, D]``."""
  zeros = jnp.zeros((batch_size, latent_size), jnp.float32)
  return DiagonalGaussian(zeros, zeros) if posterior == "gaussian" else DiagonalLaplace(zeros, zeros)


class VAEModule(nn.Module):
  """Per-modality encoders with posterior heads, and per-modality decoders of one shared latent.

  Attributes:
    encoders: one encoder per modality (`mmjax.encoders` contract), by name.
    decoders: one decoder per modality (`mmjax.decoders` contract), by name.
    latent_size: D.
    log_scales: per modality, ``(initial log scale, learned)`` of its Gaussian/Laplace likelihood.
    input_shapes: per-example shape of every modality; inputs are checked against it.
  """

  # Head outputs per latent dimension: a posterior's location and scale (a deterministic
  # autoencoder's subclass has one).
  outputs_per_latent = 2

  encoders: Mapping[str, nn.Module]
  decoders: Mapping[str, nn.Module]
  latent_size: int
  log_scales: Mapping[str, tuple[float, bool]]
  input_shapes: Mapping[str, tuple[int, ...]]

  def setup(self):
    self.heads = {m: linear.Dense(self.outputs_per_latent * self.latent_size, name=f"posterior_{m}") for m in sorted(self.encoders)}
    self.learned = {
        m: self.param(f"log_scale_{m}", nn.initializers.constant(value), ())
        for m, (value, learned) in self.log_scales.items() if learned
    }

  def encode(self, inputs: Mapping[str, jax.Array], train: bool = False) -> tuple[jax.Array, jax.Array]:
    """The posterior heads ``(loc, raw)``, each ``[M, B, D]`` in sorted modality order."""
    outputs = []
    for m in sorted(self.encoders):
      checks.check_shape(f"VAE: modality {m!r}", inputs[m], ("B", *self.input_shapes[m]))
      outputs.append(self.heads[m](self.encoders[m](inputs[m], train=train)).astype(jnp.float32))
    stacked = jnp.stack(outputs)
    return stacked[..., : self.latent_size], stacked[..., self.latent_size :]

  def decode(self, z: jax.Array, train: bool = False) -> dict[str, jax.Array]:
    """Every modality's likelihood parameters (unnormalised decoder outputs) for ``z`` ``[N, D]``."""
    return {m: decoder(z, train=train).astype(jnp.float32) for m, decoder in self.decoders.items()}

  def log_scale(self, modality: str) -> jax.Array:
    return self.learned[modality] if modality in self.learned else jnp.float32(self.log_scales[modality][0])

  def __call__(self, inputs: Mapping[str, jax.Array], train: bool = False):
    loc, _ = self.encode(inputs, train)
    return self.decode(loc[0], train)


def log_likelihood(section: Mapping, output: jax.Array, target: jax.Array, log_scale: jax.Array) -> jax.Array:
  """``[N]`` log-likelihoods of `target` under a modality's likelihood with decoder `output`.

  A label's logits are ``[N, C]`` for ``int[N]`` targets; a text's ``[N, L, vocab]`` for
  ``int[N, L]`` token ids, summed over the ``L`` positions (see the module docstring).

  >>> log_likelihood(likelihood_section("categorical"), jnp.zeros((1, 2)), jnp.array([1]), 0.0)
  Array([-0.6931...], dtype=float32)
  >>> log_likelihood(likelihood_section("categorical"), jnp.zeros((1, 3, 4)), jnp.array([[2, 0, 0]]), 0.0)  # 3·log(1/4)
  Array([-4.1588...], dtype=float32)
  """
  name = section["name"]
  if name == "bernoulli":
    return lik.bernoulli_log_likelihood(output, target)
  if name == "categorical":
    return lik.categorical_log_likelihood(output, target)
  density = lik.gaussian_log_likelihood if name == "gaussian" else lik.laplace_log_likelihood
  return density(LINKS[section["link"]](output), log_scale, target)


def mean_value(section: Mapping, output: jax.Array) -> jax.Array:
  """A decoder output as data: the likelihood's mean (pixels, waveforms), or the most likely class
  (labels ``int32[N]``) or token at each position (text ``int32[N, L]``).

  >>> mean_value(likelihood_section("bernoulli"), jnp.zeros((1, 2))).tolist()
  [[0.5, 0.5]]
  >>> mean_value(likelihood_section("categorical"), jnp.array([[[0.0, 1.0], [2.0, 1.0]]])).tolist()
  [[1, 0]]
  """
  name = section["name"]
  if name == "bernoulli":
    return jax.nn.sigmoid(output)
  if name == "categorical":
    return jnp.argmax(output, -1).astype(jnp.int32)
  return LINKS[section["link"]](output)


class MultimodalVAE:
  """Shared machinery of the VAE families; honours `base.Model` and `base.Generative`.

  Subclasses define ``loss`` (the `Objective`'s), ``conditional(params, inputs, present) ->
  posterior [B, D]`` (the latent given the present modalities), and may override ``proposal``
  (samples and their log-density for the IWAE log-likelihood) and ``sample_latent``.

  Args:
    config: the ``model`` section.
    spec: the data's modalities.
    references: the reference classifiers of the judged modalities (None: no coherence).
  """

  module_class: type[VAEModule] = VAEModule
  # Whether `sample` draws from a prior (evaluation's joint coherence needs one).
  has_prior = True
  # The name of the one objective (what `optimizer.per_objective` may name).
  objective = "elbo"

  def __init__(self, config, spec: DataSpec, references=None):
    self.config = config
    self.modalities = tuple(sorted(config.modalities))
    checks.check_modalities(spec.modalities, self.modalities, f"{config.name} data")
    self.specs = {m: spec.modalities[m] for m in self.modalities}
    self.likelihoods = {m: dict(config.likelihoods[m]) for m in self.modalities}
    self.weights = {m: float(self.likelihoods[m]["weight"]) for m in self.modalities}
    self.references = references
    self.module = self.module_class(
        encoders={m: encoder_configs.build_encoder(config.encoders[m], self.specs[m], m, config.features, config.dtype, config.remat)
                  for m in self.modalities},
        decoders={m: decoder_configs.build_decoder(config.decoders[m], self.specs[m], m, config.dtype, config.remat)
                  for m in self.modalities},
        latent_size=config.latent_size,
        log_scales={m: (math.log(s["scale"]), bool(s["learn_scale"])) for m, s in self.likelihoods.items()
                    if s["name"] in ("gaussian", "laplace")},
        input_shapes={m: tuple(self.specs[m].shape) for m in self.modalities},
        **self.module_fields(),
    )
    self.objectives = (Objective(self.objective, self.loss),)
    self._evaluation = jax.jit(self._evaluation_outputs, compiler_options=compiler_options.repeated())
    self._prior_samples = jax.jit(self.sample, static_argnums=1, compiler_options=compiler_options.repeated())

  # -- pieces the families combine ---------------------------------------------------------------

  def module_fields(self) -> dict:
    """Fields of `module_class` beyond `VAEModule`'s (none here)."""
    return {}

  def inputs(self, batch: Batch) -> tuple[dict, jax.Array]:
    """The modalities of `batch` and their presence ``bool[M, B]`` in sorted order."""
    checks.check_modalities(batch, self.modalities, f"{self.config.name} batch")
    return {m: batch[m] for m in self.modalities}, jnp.stack([batch["present"][m] for m in self.modalities])

  def encode(self, params, inputs) -> Distribution:
    loc, raw = self.module.apply({"params": params}, inputs, method=VAEModule.encode)
    return experts(loc, raw, self.config.posterior)

  def decode(self, params, z: jax.Array) -> dict[str, jax.Array]:
    return self.module.apply({"params": params}, z, method=VAEModule.decode)

  def log_likelihoods(self, params, outputs: Mapping, inputs: Mapping, repeats: int = 1) -> jax.Array:
    """``[M, repeats·B]`` per-modality log-likelihoods of `inputs` (tiled `repeats` times) under `outputs`."""
    rows = []
    for m in self.modalities:
      target = jnp.tile(inputs[m], (repeats, *[1] * (inputs[m].ndim - 1)))
      scale = self.module.apply({"params": params}, m, method=VAEModule.log_scale) if m in self.module.log_scales else 0.0
      rows.append(log_likelihood(self.likelihoods[m], outputs[m], target, scale))
    return jnp.stack(rows)

  def weighted(self, log_likelihoods: jax.Array, mask: jax.Array) -> jax.Array:
    """``[N]``: the sum over modalities of weighted log-likelihoods where `mask` ``[M, N]``."""
    weights = jnp.asarray([self.weights[m] for m in self.modalities], jnp.float32)[:, None]
    return jnp.sum(jnp.where(mask, weights * log_likelihoods, 0.0), axis=0)

  def prior(self, batch_size: int) -> Distribution:
    return prior(self.config.posterior, batch_size, self.config.latent_size)

  def proposal(self, params, inputs, present, key: jax.Array, num_samples: int) -> tuple[jax.Array, jax.Array]:
    """``(z [K, B, D], log q(z) [K, B])`` from the posterior given the present modalities."""
    posterior = self.conditional(params, inputs, present)
    z = posterior.sample(key, num_samples)
    return z, posterior.log_prob(z)

  def sample_latent(self, params, inputs, present, key: jax.Array) -> jax.Array:
    """``[B, D]``: one sample of the latent given the present modalities."""
    return self.proposal(params, inputs, present, key, 1)[0][0]

  # -- base.Model ---------------------------------------------------------------------------------

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    return dict(self.module.init(rng, self.inputs(batch)[0]))

  # -- base.Generative ----------------------------------------------------------------------------

  def _generate(self, params, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    inputs, present = self.inputs(batch)
    outputs = self.decode(params, self.sample_latent(params, inputs, present, rng))
    return {m: mean_value(self.likelihoods[m], outputs[m]) for m in self.modalities}

  def reconstruct(self, variables: Variables, batch: Batch, rng: jax.Array) -> dict[str, jax.Array]:
    """Every modality decoded (its likelihood's mean, or class) from a latent sample given the present ones."""
    return self._generate(variables["params"], batch, rng)

  def cross_generate(self, variables: Variables, batch: Batch, target: str, rng: jax.Array) -> jax.Array:
    """Modality `target` generated from the modalities present in `batch`."""
    if target not in self.modalities:
      raise ValueError(f"cross_generate: target {target!r} is not one of the model's modalities {list(self.modalities)}.")
    return self._generate(variables["params"], batch, rng)[target]

  def sample(self, variables: Variables, num_samples: int, rng: jax.Array) -> dict[str, jax.Array]:
    """`num_samples` joint samples decoded from the prior."""
    z = self.prior(num_samples).sample(rng, 1)[0]
    outputs = self.decode(variables["params"], z)
    return {m: mean_value(self.likelihoods[m], outputs[m]) for m in self.modalities}

  # -- evaluation ---------------------------------------------------------------------------------

  def _log_likelihood(self, params, inputs, present, key) -> jax.Array:
    """``[B]`` IWAE estimate of the unweighted ``log p(x)`` of the present modalities."""
    config = self.config

    def log_weights(chunk_key):
      z, log_q = self.proposal(params, inputs, present, chunk_key, config.eval_chunk_size)
      flat = z.reshape(-1, z.shape[-1])
      log_p = self.log_likelihoods(params, self.decode(params, flat), inputs, z.shape[0])
      mask = jnp.tile(present, (1, z.shape[0]))
      log_px = jnp.sum(jnp.where(mask, log_p, 0.0), axis=0).reshape(z.shape[:2])
      return log_px + self.prior(z.shape[1]).log_prob(z) - log_q

    return iwae_log_likelihood(log_weights, key, num_samples=config.eval_samples, chunk_size=config.eval_chunk_size)

  def _evaluation_outputs(self, variables: Variables, batch: Batch, key: jax.Array) -> dict:
    """One jitted pass: generations of every modality from each modality alone and from all present,
    the IWAE log-likelihood and the reconstruction errors."""
    params = variables["params"]
    inputs, present = self.inputs(batch)
    keys = jax.random.split(key, len(self.modalities) + 2)
    alone = {}
    for i, source in enumerate(self.modalities):
      only = {m: present[i] & (m == source) for m in self.modalities}
      alone[source] = self._generate(params, {**inputs, "present": only}, keys[i])
    reconstruction = self._generate(params, batch, keys[-2])
    errors = {m: coherence.reconstruction_error(reconstruction[m], inputs[m]) for m in self.modalities}
    return {"alone": alone, "reconstruction": reconstruction, "errors": errors,
            "log_likelihood": self._log_likelihood(params, inputs, present, keys[-1])}

  def evaluate(self, variables: Variables, batches: Iterable[Batch]) -> dict:
    """Coherences, IWAE log-likelihood, reconstruction errors and image grids (`mmjax.eval.coherence`)."""
    return coherence.evaluate_generative(self, variables, batches, jax.random.key(self.config.eval_seed))


# -- config ---------------------------------------------------------------------------------------


# The fields of a variational family only: posterior, KL weighting, IWAE and prior samples.
VARIATIONAL_FIELDS = ("posterior", "beta", "kl_warmup_steps", "eval_samples", "eval_chunk_size", "eval_prior_samples")


def config_schema(config, *, variational: bool = True, **family_fields: Field) -> dict:
  """The ``model`` section's schema shared by the VAE families (without `VARIATIONAL_FIELDS`
  unless `variational`), plus the family's own fields."""
  kinds = {name: section.get("kind") for name, section in config.data.modalities.items()}
  model = config.model
  schema = {
      "name": Field(str),
      "modalities": Field((tuple, list), items=str),
      "features": Field(int, low=1),
      "latent_size": Field(int, low=1),
      "posterior": Field(str, choices=POSTERIORS),
      "encoders": {m: encoder_configs.ENCODERS.section_schema(kinds.get(m), s) for m, s in model.get("encoders", {}).items()},
      "decoders": {m: decoder_configs.section_schema(kinds.get(m), s) for m, s in model.get("decoders", {}).items()},
      "likelihoods": {
          m: {"name": Field(str, choices=LIKELIHOODS.get(kinds.get(m), ())), "scale": Field(float, low=1e-6),
              "learn_scale": Field(bool), "link": Field(str, choices=tuple(LINKS)), "weight": Field(float, low=0.0)}
          for m in model.get("likelihoods", {})
      },
      "beta": Field(float, low=0.0),
      "kl_warmup_steps": Field(int, low=0),
      "eval_samples": Field(int, low=1),
      "eval_chunk_size": Field(int, low=1),
      "eval_prior_samples": Field(int, low=1),
      "eval_seed": Field(int, low=0),
      "reference_classifiers": reference_classifiers.config_schema(config, model.get("reference_classifiers", {})),
      "dtype": Field(str, choices=tuple(encoder_configs.DTYPES)),
      "remat": Field(bool),
      **family_fields,
  }
  return schema if variational else {key: value for key, value in schema.items() if key not in VARIATIONAL_FIELDS}


def config_problems(config, *, gaussian_only: bool = False, variational: bool = True) -> list[str]:
  """Problems shared by the families: modalities against the data, a decoder and a likelihood for
  each, evaluation chunking, and (for products of experts) a Gaussian posterior. Every modality
  kind decodes (`LIKELIHOODS`)."""
  model = config.model
  problems = encoder_configs.modalities_problems(config, model.modalities)
  if len(model.modalities) < 2:
    problems.append(f"model.modalities: a multimodal VAE needs at least two modalities, got {list(model.modalities)}")
  for m in model.modalities:
    for section in ("decoders", "likelihoods"):
      if m not in model[section]:
        problems.append(f"model.{section}: no section for modality {m!r}")
  if variational and model.eval_samples % model.eval_chunk_size:
    problems.append(f"model.eval_samples ({model.eval_samples}) must be a multiple of model.eval_chunk_size ({model.eval_chunk_size})")
  if gaussian_only and model.posterior != "gaussian":
    problems.append(f"model.posterior: a product of experts needs 'gaussian', got {model.posterior!r}")
  problems.extend(reference_classifiers.config_problems(config, model.reference_classifiers, judged(config), "model.reference_classifiers"))
  return problems


def judged(config) -> tuple[str, ...]:
  """Coherence classifies every modality the model generates when the data has a class label."""
  return tuple(sorted(config.model.modalities)) if config.data.label else ()
