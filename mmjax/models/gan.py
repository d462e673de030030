"""Multimodal conditional GAN: a generator G(z, c) of paired modalities, a discriminator D(x₁, x₂, c).

The generator maps noise ``z`` and a class ``c`` to every generated modality jointly: one shared
latent ``[z, embed(c)]`` feeds one decoder per modality (`mmjax.models.decoder_configs`), so the
modalities of one sample come from the same draw. The discriminator encodes each modality
(`mmjax.models.encoder_configs` for images and vectors), fuses the features and scores the pair
given ``c``, by concatenation (an MLP on ``[features, embed(c)]``) or by projection
(``ψ(h) + ⟨embed(c), h⟩``, Miyato & Koyama 2018).

A discrete modality (a ``label``) is generated as a relaxed one-hot: the softmax of the
decoder's logits. The discriminator reads it through a linear layer, which on a real (hard)
one-hot is exactly a class embedding, so real and generated values share one input space and the
generator gets gradients through it; the data representation (the class index) is its argmax.

Training runs two objectives in one compiled step: ``"discriminator"`` (``n_critic`` updates,
the loss named by ``model.loss`` plus an optional WGAN-GP or lazy R1 penalty) then
``"generator"``. With ``train.ema_decay`` set, evaluation and sampling use the moving average of
the parameters (of which the generator's are the ones used), kept in the checkpoint.

References:
  Mirza & Osindero, Conditional Generative Adversarial Nets, 2014;
  Miyato & Koyama, cGANs with Projection Discriminator, 2018.
"""

from collections.abc import Iterable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import checks, compiler_options, linear
from mmjax.data.spec import DataSpec
from mmjax.eval import gan as gan_metrics
from mmjax.losses import gan as gan_losses
from mmjax.models import decoder_configs, encoder_configs
from mmjax.models.base import Batch, Family, Objective, Variables
from mmjax.numerics import masked_mean
from mmjax.parallel import distributed
from mmjax.reference_classifiers import config_problems as reference_problems, config_schema as reference_schema
from mmjax.schema import Field

CONDITIONINGS = ("concat", "projection")
PENALTIES = ("none", "gradient_penalty", "r1")
GENERATED_KINDS = ("image", "vector", "label")


class Generator(nn.Module):
  """``G(z, c)``: noise ``[B, Z]`` and classes ``int[B]`` → ``{modality: [B, …]}`` (labels as
  probabilities ``[B, K]``, other modalities as their decoders' outputs).

  Attributes:
    decoders: one decoder per generated modality (`mmjax.decoders` contract).
    num_classes: classes of the condition.
    condition_dim: width of the class embedding concatenated to the noise.
  """

  decoders: Mapping[str, nn.Module]
  num_classes: int
  condition_dim: int = 32

  @nn.compact
  def __call__(self, z: jax.Array, classes: jax.Array) -> dict[str, jax.Array]:
    latent = jnp.concatenate([z, nn.Embed(self.num_classes, self.condition_dim, name="condition")(classes)], axis=-1)
    outputs = {}
    for modality, decoder in self.decoders.items():
      out = decoder(latent)
      outputs[modality] = jax.nn.softmax(out.astype(jnp.float32)) if _is_label(decoder) else out.astype(jnp.float32)
    return outputs


def _is_label(module: nn.Module) -> bool:
  return getattr(module, "num_classes", None) is not None


class Discriminator(nn.Module):
  """``D(x, c)``: ``{modality: [B, …]}`` (labels as one-hot or relaxed one-hot) and ``int[B]`` → ``[B]`` logits.

  Attributes:
    encoders: one encoder per modality that is not a label.
    label_modalities: modalities read as (relaxed) one-hots through a linear layer.
    num_classes: classes of the condition.
    features: width of each modality's features and of the fused hidden layer.
    conditioning: ``"concat"`` or ``"projection"``.
  """

  encoders: Mapping[str, nn.Module]
  label_modalities: tuple[str, ...]
  num_classes: int
  features: int = 128
  conditioning: str = "projection"

  @nn.compact
  def __call__(self, inputs: Mapping[str, jax.Array], classes: jax.Array) -> jax.Array:
    parts = [encoder(inputs[m]) for m, encoder in self.encoders.items()]
    parts += [linear.Dense(self.features, name=f"{m}_embedding")(inputs[m]) for m in self.label_modalities]
    embedding = nn.Embed(self.num_classes, self.features, name="condition")(classes)
    hidden = jnp.concatenate(parts, axis=-1)
    if self.conditioning == "concat":
      hidden = jnp.concatenate([hidden, embedding], axis=-1)
    hidden = nn.leaky_relu(linear.Dense(self.features, name="fuse")(hidden), 0.2)
    logits = linear.Dense(1, name="output")(hidden)[:, 0]
    if self.conditioning == "projection":
      logits = logits + jnp.sum(embedding * hidden, axis=-1)
    return logits.astype(jnp.float32)


class GanModule(nn.Module):
  """The generator and discriminator under the top-level names the objectives train."""

  generator: Generator
  discriminator: Discriminator

  def __call__(self, z: jax.Array, classes: jax.Array) -> jax.Array:
    return self.discriminator(self.generator(z, classes), classes)

  def generate(self, z: jax.Array, classes: jax.Array) -> dict[str, jax.Array]:
    return self.generator(z, classes)

  def discriminate(self, inputs: Mapping[str, jax.Array], classes: jax.Array) -> jax.Array:
    return self.discriminator(inputs, classes)


class ConditionalGAN:
  """The multimodal conditional GAN; honours `mmjax.models.base.Model` and `base.Generative`.

  Args:
    config: the ``model`` section (see `config_schema`).
    spec: the dataset's modalities and classes.
    references: real-data classifiers of the generated modalities that are not labels.

  >>> import ml_collections
  >>> from mmjax.data.spec import ModalitySpec
  >>> spec = DataSpec({"image": ModalitySpec("image", (8, 8, 1)), "label": ModalitySpec("label", (), num_classes=10)},
  ...                 class_names=tuple("0123456789"))
  >>> config = ml_collections.ConfigDict(dict(
  ...     modalities=("image", "label"), latent_dim=8, condition_dim=4, features=16, conditioning="projection",
  ...     decoders=dict(image=decoder_configs.decoder_section("image", "mlp"), label=decoder_configs.decoder_section("label", "mlp")),
  ...     encoders=dict(image=encoder_configs.encoder_section("image", "mlp")), loss="hinge", n_critic=1, dtype="float32", remat=False))
  >>> gan = ConditionalGAN(config, spec)
  >>> batch = {"image": jnp.zeros((4, 8, 8, 1)), "label": jnp.zeros(4, jnp.int32),
  ...          "present": {"image": jnp.ones(4, bool), "label": jnp.ones(4, bool)}}
  >>> variables = gan.init(jax.random.key(0), batch)
  >>> sorted(variables["params"]), [o.name for o in gan.objectives]
  (['discriminator', 'generator'], ['discriminator', 'generator'])
  >>> samples = gan.sample(variables, 3, jax.random.key(1))
  >>> samples["image"].shape, samples["label"].shape
  ((3, 8, 8, 1), (3,))
  """

  def __init__(self, config, spec: DataSpec, references=None):
    self.config = config
    self.modalities = tuple(config.modalities)
    checks.check_modalities(spec.modalities, self.modalities, "ConditionalGAN data")
    if not spec.class_names:
      raise ValueError("ConditionalGAN: the data has no class label (data.label) to condition on.")
    self.spec = spec
    self.num_classes = spec.num_classes
    self.references = references
    self.labels = tuple(m for m in self.modalities if spec.modalities[m].kind == "label")
    self.module = GanModule(
        generator=Generator(
            decoders={
                m: decoder_configs.build_decoder(config.decoders[m], spec.modalities[m], m, config.dtype, config.remat)
                for m in self.modalities
            },
            num_classes=self.num_classes, condition_dim=config.condition_dim,
        ),
        discriminator=Discriminator(
            encoders={
                m: encoder_configs.build_encoder(config.encoders[m], spec.modalities[m], m, config.features, config.dtype, config.remat)
                for m in self.modalities if m not in self.labels
            },
            label_modalities=self.labels, num_classes=self.num_classes, features=config.features,
            conditioning=config.conditioning,
        ),
    )
    self.loss_pair = gan_losses.gan_loss(config.loss)
    self.objectives = (
        Objective("discriminator", self.discriminator_loss, trains=("discriminator",), repeats=config.n_critic),
        Objective("generator", self.generator_loss, trains=("generator",)),
    )
    self._generate = jax.jit(self._generate_classes, compiler_options=compiler_options.repeated())

  def _real(self, batch: Batch) -> tuple[dict[str, jax.Array], jax.Array, jax.Array]:
    """The real pair in the discriminator's representation, its classes and its valid rows."""
    checks.check_modalities(batch, self.modalities, "ConditionalGAN batch")
    inputs = {m: jax.nn.one_hot(batch[m], self.num_classes) if m in self.labels else batch[m].astype(jnp.float32) for m in self.modalities}
    valid = jnp.all(jnp.stack([batch["present"][m] for m in self.modalities]), axis=0)
    return inputs, batch["label"], valid

  def _fake(self, params, classes: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    z = jax.random.normal(key, (classes.shape[0], self.config.latent_dim))
    return self.module.apply({"params": params}, z, classes, method=GanModule.generate)

  def init(self, rng: jax.Array, batch: Batch) -> Variables:
    classes = batch["label"]
    z = jnp.zeros((classes.shape[0], self.config.latent_dim))
    return dict(self.module.init(rng, z, classes))

  def discriminator_loss(self, params, model_state, batch, rng, step):
    """The named loss's discriminator term on a real and a generated pair (same classes), plus
    the configured penalty."""
    real, classes, valid = self._real(batch)
    fake_key, penalty_key = jax.random.split(rng)
    fake = jax.lax.stop_gradient(self._fake(params, classes, fake_key))
    discriminate = lambda x: self.module.apply({"params": params}, x, classes, method=GanModule.discriminate)  # noqa: E731
    real_logits, fake_logits = discriminate(real), discriminate(fake)
    adversarial = self.loss_pair.discriminator(real_logits, fake_logits, real_mask=valid, fake_mask=valid)
    config = self.config
    if config.penalty == "gradient_penalty":
      penalty = gan_losses.gradient_penalty(discriminate, penalty_key, real, fake, weight=config.penalty_weight, mask=valid)
    elif config.penalty == "r1":
      penalty = gan_losses.lazy_r1_penalty(discriminate, real, step, gamma=config.penalty_weight, every=config.penalty_every, mask=valid)
    else:
      penalty = jnp.zeros((), jnp.float32)
    metrics = {"adversarial": adversarial, "penalty": penalty,
               "real_logit": masked_mean(real_logits, valid), "fake_logit": masked_mean(fake_logits, valid)}
    return adversarial + penalty, (metrics, model_state)

  def generator_loss(self, params, model_state, batch, rng, step):
    """The named loss's generator term on pairs generated for the batch's classes."""
    del step
    _, classes, valid = self._real(batch)
    fake = self._fake(params, classes, rng)
    logits = self.module.apply({"params": params}, fake, classes, method=GanModule.discriminate)
    return self.loss_pair.generator(logits, mask=valid), ({}, model_state)

  def _generate_classes(self, variables: Variables, classes: jax.Array, key: jax.Array) -> dict[str, jax.Array]:
    """Generated pairs in the data's representation (label modalities as class indices)."""
    fake = self._fake(variables["params"], classes, key)
    return {m: jnp.argmax(v, -1).astype(jnp.int32) if m in self.labels else v for m, v in fake.items()}

  def sample(self, variables: Variables, num_samples: int, rng: jax.Array) -> dict[str, jax.Array]:
    """`num_samples` joint samples, each of a uniformly drawn class."""
    class_key, noise_key = jax.random.split(rng)
    classes = jax.random.randint(class_key, (num_samples,), 0, self.num_classes)
    return self._generate_classes(variables, classes, noise_key)

  def cross_generate(self, variables: Variables, batch: Batch, target: str, rng: jax.Array) -> jax.Array:
    """`target` generated for the class of each row, read from a present label modality (the only
    modality a conditional GAN can condition on)."""
    checks.check_modalities(self.spec.modalities, (target,), "ConditionalGAN.cross_generate target")
    sources = [m for m in self.labels if m != target]
    if not sources:
      raise ValueError(
          f"ConditionalGAN.cross_generate: {target!r} can be generated only from a label modality; "
          f"the model has {list(self.labels)}."
      )
    return self._generate_classes(variables, batch[sources[0]], rng)[target]

  def evaluate(self, variables: Variables, batches: Iterable[Batch]) -> dict:
    """``gan/conditional_accuracy``, ``gan/pair_consistency`` (two generated modalities), ``gan/diversity``
    (same-class spread of generated images relative to the real evaluation data's) and a uniform
    ``samples`` grid (one row per class), from ``eval_samples_per_class`` samples per class drawn
    with a fixed key."""
    reals, real_classes = [], []
    judged = next((m for m in self.modalities if m not in self.labels), None)
    for batch in batches:
      fetched = distributed.to_host({"x": batch[judged], "label": batch["label"], "present": batch["present"]})
      valid = np.all([fetched["present"][m] for m in self.modalities], axis=0)
      reals.append(fetched["x"][valid])
      real_classes.append(fetched["label"][valid])
    per_class = self.config.eval_samples_per_class
    classes = np.repeat(np.arange(self.num_classes, dtype=np.int32), per_class)
    generated = self._generate(variables, classes, jax.random.key(self.config.eval_seed))
    predictions = {
        m: np.asarray(generated[m] if m in self.labels else self.references.predict(m, generated[m])) for m in self.modalities
    }
    metrics = {"gan/conditional_accuracy": gan_metrics.conditional_accuracy(predictions[judged], classes)}
    if len(self.modalities) == 2:
      metrics["gan/pair_consistency"] = gan_metrics.pair_consistency(*(predictions[m] for m in self.modalities))
    images = np.asarray(generated[judged])
    metrics["gan/diversity"] = gan_metrics.diversity_ratio(
        images, classes, np.concatenate(reals), np.concatenate(real_classes), self.num_classes
    )
    if self.spec.modalities[judged].kind == "image":
      shown = images.reshape(self.num_classes, per_class, *images.shape[1:])[:, : min(per_class, 10)]
      metrics["samples"] = gan_metrics.class_grid(shown)
    return metrics


def config_schema(config) -> dict:
  """The ``model`` section's schema; encoder and decoder sections follow their data kinds."""
  kinds = {name: section.get("kind") for name, section in config.data.modalities.items()}
  model = config.model
  return {
      "name": Field(str),
      "modalities": Field((tuple, list), items=str),
      "latent_dim": Field(int, low=1),
      "condition_dim": Field(int, low=1),
      "features": Field(int, low=1),
      "decoders": {m: decoder_configs.section_schema(kinds.get(m), s) for m, s in model.get("decoders", {}).items()},
      "encoders": {m: encoder_configs.ENCODERS.section_schema(kinds.get(m), s) for m, s in model.get("encoders", {}).items()},
      "conditioning": Field(str, choices=CONDITIONINGS),
      "loss": Field(str, choices=tuple(sorted(gan_losses.GAN_LOSSES))),
      "penalty": Field(str, choices=PENALTIES),
      "penalty_weight": Field(float, low=0.0),
      "penalty_every": Field(int, low=1),
      "n_critic": Field(int, low=1),
      "eval_samples_per_class": Field(int, low=2),
      "eval_seed": Field(int, low=0),
      "reference_classifiers": reference_schema(config, model.get("reference_classifiers", {})),
      "dtype": Field(str, choices=tuple(encoder_configs.DTYPES)),
      "remat": Field(bool),
  }


def _judged(config) -> tuple[str, ...]:
  return tuple(config.model.modalities)


def config_problems(config) -> list[str]:
  model = config.model
  problems = []
  kinds = {m: config.data.modalities[m]["kind"] for m in model.modalities if m in config.data.modalities}
  missing = [m for m in model.modalities if m not in kinds]
  if missing:
    return [f"model.modalities: {missing} are not data modalities; present: {sorted(config.data.modalities)}"]
  if not 1 <= len(model.modalities) <= 2:
    problems.append(f"model.modalities: a GAN generates one or two modalities, got {list(model.modalities)}")
  if not config.data.label:
    problems.append("data.label: a conditional GAN needs the class label feature")
  for m, kind in kinds.items():
    if kind not in GENERATED_KINDS:
      problems.append(f"model.modalities: {m!r} is of kind {kind!r}; a GAN generates kinds {list(GENERATED_KINDS)}")
    if m not in model.decoders:
      problems.append(f"model.decoders: no decoder section for modality {m!r}")
    if kind != "label":
      if m not in model.encoders:
        problems.append(f"model.encoders: no discriminator encoder section for modality {m!r}")
      elif encoder_configs.ENCODERS.stateful(model.encoders[m]):
        problems.append(
            f"model.encoders.{m}: the discriminator's rows must not interact (penalties, per-sample scores); "
            "choose an encoder without batch statistics"
        )
  if all(kind == "label" for kind in kinds.values()):
    problems.append("model.modalities: a GAN needs a modality that is not a label (an image or vector)")
  if (config.data.batch_size // max(config.train.accumulation_steps, 1)) % model.n_critic:
    problems.append(f"model.n_critic ({model.n_critic}) must divide the batch size per micro-batch ({config.data.batch_size})")
  problems.extend(reference_problems(config, model.reference_classifiers, _judged(config), "model.reference_classifiers"))
  return problems


FAMILY = Family(
    build=lambda config, data, references: ConditionalGAN(config, data.spec, references),
    config_schema=config_schema,
    objectives=lambda config: ("discriminator", "generator"),
    config_problems=config_problems,
    judged=_judged,
)
