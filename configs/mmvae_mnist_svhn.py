"""MMVAE on MNIST–SVHN with the paper's architecture and settings (Shi et al. 2019).

Data: `mmjax.data.mnist_svhn` (each kept MNIST image paired with 20 SVHN images of its class and
vice versa, seed 0), both images scaled to [0, 1]; it needs TFDS ``mnist`` and ``svhn_cropped``
prepared as array_record in the data directory (docs/datasets.md). The label is used only by the
evaluation (coherence), not by the model.

Settings from the paper and its code: latent 20; Laplace prior ``Laplace(0, 1)`` and posterior
(scale ``softmax(l)·D + 1e-6``); Laplace likelihood of scale 0.75 on sigmoid means; the MNIST
log-likelihood rescaled by ``3·32·32 / 784`` against SVHN; DReG with K = 30 on the "looser" bound;
Adam, learning rate 1e-3, batch 128; 30 epochs of the 1,121,360 training pairs the default pairing
gives on the full datasets (262,818 steps).

Networks: MNIST ``784 → 400 (ReLU)`` and back ``20 → 400 (ReLU) → 784``; SVHN four 4×4 convolutions
(32, 64, 128 channels of stride 2 with ReLU, then the latent heads over the 4×4×128 map) and back
(a 4×4×128 map from the latent, conv-transposes to 64, 32, 3 channels). The family puts a linear
layer of ``features`` units between each encoder and its posterior heads; with ``features = 2 ×
latent`` (40) the encoder-to-posterior map is any linear map of rank ≤ 40 onto the 40 head outputs,
the same function class as the paper's direct heads.

Known differences from the paper's code: Adam without AMSGrad (mmjax's optimizers are AdamW and
SGD; weight decay 0 here); flax's "SAME" conv-transpose aligns its 4×4 kernels one pixel differently
from PyTorch's ``padding=1``; the data is not cached in memory (17 GB as float32 for the training
pairs) but read per batch.

``mmjax train --config configs/mmvae_mnist_svhn.py --workdir runs/mmvae_mnist_svhn``.
"""

from configs import vae_digits_base
from mmjax.data.input_pipeline import modality
from mmjax.losses.likelihoods import likelihood_rescaling
from mmjax.models.decoder_configs import decoder_section
from mmjax.models.encoder_configs import encoder_section
from mmjax.models.vae_common import likelihood_section
from mmjax.reference_classifiers import reference_section

LATENT_SIZE = 20
BATCH_SIZE = 128
EPOCHS = 30
TRAIN_PAIRS = 1_121_360  # mnist_svhn "default" on the full MNIST and SVHN training sets
IMAGE_SHAPES = {"mnist": (28, 28, 1), "svhn": (32, 32, 3)}


def get_config():
  num_steps = EPOCHS * TRAIN_PAIRS // BATCH_SIZE
  config = vae_digits_base.get_config("mmvae", num_steps=num_steps, batch_size=BATCH_SIZE)
  config.data.update(name="mnist_svhn", cache=False)
  # Assigned whole: `update` would merge them with mm_digits' image and label sections.
  config.data.modalities = dict(
      mnist=modality("mnist", "image", scaling="unit"), svhn=modality("svhn", "image", scaling="unit")
  )
  model = config.model
  model.update(
      modalities=("mnist", "svhn"), latent_size=LATENT_SIZE, features=2 * LATENT_SIZE, posterior="laplace",
      estimator="dreg", num_samples=30,
  )
  svhn_encoder = dict(
      channels=(32, 64, 128), strides=(2, 2, 2), kernel_size=4, norm="none", activation="relu", pooling="flatten"
  )
  model.encoders = dict(
      mnist=encoder_section("image", "mlp", mlp=dict(width=400, depth=1, activation="relu", norm="none")),
      svhn=encoder_section("image", "conv", conv=svhn_encoder),
  )
  model.decoders = dict(
      mnist=decoder_section("image", "mlp", mlp=dict(width=400, depth=1, activation="relu", norm="none")),
      svhn=decoder_section(
          "image", "conv_transpose",
          conv_transpose=dict(channels=(128, 64, 32), kernel_size=4, output_stride=2, output_kernel_size=4, norm="none"),
      ),
  )
  weights = likelihood_rescaling(IMAGE_SHAPES, reference="svhn")
  model.likelihoods = {m: likelihood_section("laplace", scale=0.75, link="sigmoid", weight=weights[m]) for m in IMAGE_SHAPES}
  model.reference_classifiers = reference_section(
      num_steps=2000,
      mnist=encoder_section("image", "conv", conv=dict(channels=(32, 64), strides=(1, 2))),
      svhn=encoder_section("image", "conv", conv=dict(channels=(32, 64, 128), strides=(1, 2, 2))),
  )
  # An evaluation (IWAE log-likelihood and coherence over the test pairs) every 5 epochs.
  config.train.update(eval_every=num_steps // 6, checkpoint_every=num_steps // 30)
  return config
