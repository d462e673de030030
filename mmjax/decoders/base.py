"""What every decoder takes and returns, and the latent check every decoder starts with.

Every decoder is a linen module called as ``decoder(latent, train=False)``:

* `latent` is ``float[B, Z]``: a sample of the latent variable, or the generator's noise, with any
  condition (a class embedding, another modality's features) already concatenated by the caller;
* it returns the parameters of the modality's likelihood, one set per sample, unnormalised: logits
  or means (the caller picks the likelihood and its link, e.g. a sigmoid for Bernoulli pixels).

Every decoder has a ``modality`` attribute (default: its kind) that its errors name, a computation
``dtype`` (parameters stay float32) and a ``remat`` switch. Its first layer is a `LatentProjection`,
which checks the latent: rank, dtype, and, once the parameters exist, its width ``Z``.
"""

import flax.linen as nn
import jax

from mmjax import checks
from mmjax import linear


def describe(decoder: nn.Module) -> str:
  """``"<DecoderClass>: modality '<name>'"``, the prefix of a decoder's errors."""
  return f"{type(decoder).__name__}: modality {decoder.modality!r}"


class LatentProjection(linear.Dense):
  """A `mmjax.linear.Dense` (Flax's parameters; see there for its bias gradient) on the latent
  that first checks it, naming `where` (see `describe`).

  The latent must be ``float[B, Z]``; after initialisation ``Z`` must be the width the kernel was
  built for, which makes a wrong latent a `ValueError` naming the modality rather than a parameter
  shape error deep inside Flax.

  >>> layer = LatentProjection(4, where="MyDecoder: modality 'image'")
  >>> variables = layer.init(jax.random.key(0), jax.numpy.zeros((2, 8)))
  >>> try:
  ...   layer.apply(variables, jax.numpy.zeros((2, 6)))
  ... except ValueError as error:
  ...   print(error)
  MyDecoder: modality 'image': latent: expected shape (B, 8), got (2, 6).
  """

  where: str = "decoder"

  def __call__(self, latent: jax.Array) -> jax.Array:
    width = self.get_variable("params", "kernel").shape[0] if self.has_variable("params", "kernel") else "Z"
    checks.check_shape(f"{self.where}: latent", latent, ("B", width))
    checks.check_dtype(f"{self.where}: latent", latent, "float")
    return super().__call__(latent)
