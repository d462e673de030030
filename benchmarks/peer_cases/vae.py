"""MVAE and MMVAE on the MNIST architecture (issue 12, cases 2 and 3): image and label of MNIST,
MLP 784-512-512 Swish image encoder, label embedding (512) and one 512 Swish layer, latent 64,
decoders of three 512 Swish layers, batch 100, Adam.

* ``mvae``: product of experts with the prior expert; the joint ELBO plus both unimodal ELBOs, one
  sample each (Wu & Goodman 2018). Peer: ``multivae.models.MVAE`` with the same networks.
* ``mmvae``: Gaussian posteriors, K = 30 samples from each, the looser bound with the DReG
  gradient (Shi et al. 2019). Peer: ``multivae.models.MMVAE`` (``dreg_looser``, normal
  posteriors and prior, prior not learnt).

The mmjax side is built from the library's blocks (`MLPEncoder`, `LabelEncoder`, the MLP decoders,
`product_of_experts`, `DiagonalGaussian`, `mixture_log_prob`, `elbo`,
`dreg_mmvae_looser_surrogate`, the likelihoods) and trained by the trainer's step.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from benchmarks.peer_cases.harness import MmjaxSide, ModuleModel, TorchSide
from mmjax import losses
from mmjax.decoders.image import MLPImageDecoder
from mmjax.decoders.label import MLPLabelDecoder
from mmjax.encoders import LabelEncoder, MLPEncoder
from mmjax.fusion import product_of_experts
from mmjax.losses import DiagonalGaussian

SIZES = dict(batch=100, image=28, width=512, latent=64, classes=10, samples=30)
QUICK = dict(SIZES, batch=8, width=16, latent=4, samples=3)
LEARNING_RATE = 1e-3
MODALITIES = ("image", "label")


def make_batch(sizes: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random binary 28×28 images and labels."""
  rng = np.random.default_rng(seed)
  images = (rng.random((sizes["batch"], sizes["image"], sizes["image"], 1)) > 0.5).astype(np.float32)
  return {"image": images, "label": rng.integers(0, sizes["classes"], sizes["batch"]).astype(np.int32)}


class Networks(nn.Module):
  """The MNIST image/label encoders (each to a mean and a log-variance) and decoders."""

  width: int
  latent: int
  classes: int
  image: int

  def setup(self):
    self.encoders = {
        "image": MLPEncoder(2 * self.latent, self.width, 2, "silu", "none", event_rank=3, modality="image"),
        "label": LabelEncoder(2 * self.latent, self.classes, self.width, 1, "silu", "none"),
    }
    self.decoders = {
        "image": MLPImageDecoder((self.image, self.image, 1), self.width, 3),
        "label": MLPLabelDecoder(self.classes, self.width, 3),
    }

  def posteriors(self, batch) -> DiagonalGaussian:
    """The unimodal posteriors, parameters ``[M, B, latent]`` in `MODALITIES` order."""
    outputs = jnp.stack([self.encoders[m](batch[m]) for m in MODALITIES])
    return DiagonalGaussian(outputs[..., : self.latent], outputs[..., self.latent :])

  def log_likelihood(self, modality: str, z: jax.Array, target: jax.Array) -> jax.Array:
    """``log p(x_m | z)`` for ``z[N, latent]`` whose rows decode `target` tiled N / B times."""
    output = self.decoders[modality](z)
    target = jnp.tile(target, (z.shape[0] // target.shape[0],) + (1,) * (target.ndim - 1))
    if modality == "image":
      return losses.bernoulli_log_likelihood(output, target)
    return losses.categorical_log_likelihood(output, target)

  def __call__(self, batch):
    q = self.posteriors(batch)
    return {m: self.decoders[m](q.mean[0]) for m in MODALITIES}


def mvae_loss(networks: Networks, params, batch, rng) -> jax.Array:
  """Negative joint + image-only + label-only ELBOs (batch means), PoE with the prior expert."""
  apply = lambda method, *args: networks.apply({"params": params}, *args, method=method)  # noqa: E731
  q = apply(Networks.posteriors, batch)
  subsets = jnp.array([[True, True], [True, False], [False, True]])  # joint, image, label
  batch_size = batch["label"].shape[0]
  present = jnp.broadcast_to(subsets[:, :, None], (3, 2, batch_size))
  mean, log_variance = jax.vmap(product_of_experts, in_axes=(None, None, 0))(q.mean, q.log_variance, present)
  joint = DiagonalGaussian(mean, log_variance)
  z = joint.sample(rng, 1)[0]  # [3, B, latent]
  # Each decoder sees only the subsets holding its modality: joint and image, joint and label.
  image = apply(Networks.log_likelihood, "image", z[:2].reshape(2 * batch_size, -1), batch["image"]).reshape(2, -1)
  label = apply(Networks.log_likelihood, "label", z[::2].reshape(2 * batch_size, -1), batch["label"]).reshape(2, -1)
  recon = jnp.stack([image[0] + label[0], image[1], label[1]])
  bounds = jax.vmap(losses.elbo)(recon, joint.kl_to_standard_normal())
  return -jnp.sum(jnp.mean(bounds, axis=1))


def mmvae_loss(networks: Networks, params, batch, rng, samples: int) -> jax.Array:
  """Negative MMVAE looser bound with the DReG gradient, `samples` per unimodal posterior."""
  apply = lambda method, *args: networks.apply({"params": params}, *args, method=method)  # noqa: E731
  q = apply(Networks.posteriors, batch)
  z = jax.vmap(lambda posterior, key: posterior.sample(key, samples))(q, jax.random.split(rng, len(MODALITIES)))
  prior = DiagonalGaussian(jnp.zeros_like(q.mean[0]), jnp.zeros_like(q.mean[0]))

  def log_weights(z):  # [M, K, B, latent] -> [M, K, B]
    flat = z.reshape(-1, z.shape[-1])
    likelihood = sum(apply(Networks.log_likelihood, m, flat, batch[m]) for m in MODALITIES).reshape(z.shape[:-1])
    return likelihood + prior.log_prob(z) - losses.mixture_log_prob(q.stop_gradient(), z)

  return -jnp.mean(losses.dreg_mmvae_looser_surrogate(log_weights, z))


def mmjax_side(quick: bool = False, variant: str = "mvae") -> MmjaxSide:
  sizes = QUICK if quick else SIZES
  networks = Networks(sizes["width"], sizes["latent"], sizes["classes"], sizes["image"])
  if variant == "mvae":
    loss = lambda params, batch, rng: mvae_loss(networks, params, batch, rng)  # noqa: E731
  else:
    loss = lambda params, batch, rng: mmvae_loss(networks, params, batch, rng, sizes["samples"])  # noqa: E731
  return MmjaxSide(ModuleModel(networks, loss, lambda batch: (batch,)), optax.adam(LEARNING_RATE), make_batch(sizes))


def torch_side(variant: str = "mvae") -> TorchSide:
  import torch
  from multivae.data.datasets.base import MultimodalBaseDataset
  from multivae.models import MMVAE, MVAE, MMVAEConfig, MVAEConfig
  from pythae.models.base.base_utils import ModelOutput
  from pythae.models.nn.base_architectures import BaseDecoder, BaseEncoder

  from benchmarks.peer_cases import torch_blocks

  sizes = SIZES
  width, latent, classes, pixels = sizes["width"], sizes["latent"], sizes["classes"], sizes["image"] ** 2

  class Encoder(BaseEncoder):
    def __init__(self, layers):
      super().__init__()
      self.layers = layers

    def forward(self, x):
      out = self.layers(x.flatten(1))
      return ModelOutput(embedding=out[:, :latent], log_covariance=out[:, latent:])

  class Decoder(BaseDecoder):
    def __init__(self, layers, shape):
      super().__init__()
      self.layers, self.shape = layers, shape

    def forward(self, z):
      return ModelOutput(reconstruction=self.layers(z).reshape(z.shape[0], *self.shape))

  silu = torch.nn.SiLU
  # The label encoder's first layer is an embedding: a bias-free linear map of the one-hot label.
  label_encoder = torch.nn.Sequential(
      torch.nn.Linear(classes, width, bias=False), torch.nn.Linear(width, width), silu(), torch.nn.Linear(width, 2 * latent)
  )
  encoders = {
      "image": Encoder(torch_blocks.mlp([pixels, width, width, 2 * latent], final_activation=False)),
      "label": Encoder(label_encoder),
  }
  decoders = {
      "image": Decoder(torch_blocks.mlp([latent, width, width, width, pixels], final_activation=False), (1, 28, 28)),
      "label": Decoder(torch_blocks.mlp([latent, width, width, width, classes], final_activation=False), (classes,)),
  }
  common = dict(n_modalities=2, latent_dim=latent, input_dims={"image": (1, 28, 28), "label": (classes,)},
                decoders_dist={"image": "bernoulli", "label": "categorical"})
  if variant == "mvae":
    model = MVAE(MVAEConfig(**common, warmup=0), encoders=encoders, decoders=decoders)
  else:
    config = MMVAEConfig(**common, K=sizes["samples"], prior_and_posterior_dist="normal", learn_prior=False, loss="dreg_looser")
    model = MMVAE(config, encoders=encoders, decoders=decoders)
  batch = make_batch(sizes)
  data = MultimodalBaseDataset(data={
      "image": torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous(),
      "label": torch.nn.functional.one_hot(torch.from_numpy(batch["label"]).long(), classes).float(),
  })
  trainable = [p for p in model.parameters() if p.requires_grad]
  adam = torch.optim.Adam(trainable, lr=LEARNING_RATE)
  model.train()
  step = torch_blocks.make_step(model, lambda: model(data).loss, adam)
  return TorchSide(step, sum(p.numel() for p in trainable))
