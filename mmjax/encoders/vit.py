"""Vision Transformer image encoder (Dosovitskiy et al. 2021), with big_vision's heads and positions."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from mmjax import linear
from mmjax import normalization
from mmjax.encoders import base
from mmjax.encoders.transformer import TransformerBlock

POOLINGS = ("token", "gap", "map")
POSITIONS = ("learned", "sincos2d")
# Width, depth and heads of the standard sizes (Dosovitskiy et al. 2021, Table 1; Ti and S from
# Touvron et al. 2021); the MLP is 4x the width in all of them.
VITS: dict[str, tuple[int, int, int]] = {
    "Ti": (192, 12, 3),
    "S": (384, 12, 6),
    "B": (768, 12, 12),
    "L": (1024, 24, 16),
    "H": (1280, 32, 16),
}


def sincos2d_positions(rows: int, cols: int, width: int, temperature: float = 10_000.0) -> np.ndarray:
  """big_vision's fixed 2-D sin-cos position table (MoCo v3), ``[rows * cols, width]``, row-major.

  For the patch in row ``r`` and column ``c``, the four quarters of its ``width`` channels are
  ``sin(c * w_k)``, ``cos(c * w_k)``, ``sin(r * w_k)`` and ``cos(r * w_k)`` with
  ``w_k = temperature ** (-k / (width / 4 - 1))`` for ``k = 0 … width / 4 - 1``.

  Args:
    rows: patches along the height.
    cols: patches along the width.
    width: channels; a multiple of 4, at least 8.
    temperature: the longest wavelength, divided by 2π.

  Returns:
    float32 ``[rows * cols, width]``.

  References:
    Chen, Xie & He 2021, "An Empirical Study of Training Self-Supervised Vision Transformers";
    big_vision's ``posemb_sincos_2d``.

  >>> table = sincos2d_positions(2, 3, 8)  # frequencies 1 and 1e-4
  >>> table.shape
  (6, 8)
  >>> print(np.round(table[4], 3))  # row 1, column 1
  [0.841 0.    0.54  1.    0.841 0.    0.54  1.   ]
  """
  if width % 4 or width < 8:
    raise ValueError(f"sincos2d_positions: width must be a multiple of 4 and at least 8, got {width}.")
  quarter = width // 4
  frequencies = temperature ** -(np.arange(quarter) / (quarter - 1))
  row, col = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
  col_angles = np.outer(col.ravel(), frequencies)
  row_angles = np.outer(row.ravel(), frequencies)
  table = [np.sin(col_angles), np.cos(col_angles), np.sin(row_angles), np.cos(row_angles)]
  return np.concatenate(table, axis=1).astype(np.float32)


class MAPHead(nn.Module):
  """Multihead attention pooling: one learned query attends over the tokens, then a residual MLP.

  As big_vision's ``MAPHead`` (used by SigLIP): ``x = attention(probe, tokens)``, then
  ``x + mlp(layer_norm(x))``.

  Attributes:
    num_heads: attention heads.
    mlp_ratio: hidden width of the MLP relative to the token width.
    dtype: computation dtype (parameters stay float32).

  References:
    Lee et al. 2019, "Set Transformer" (pooling by multihead attention); Zhai et al. 2023, "Sigmoid
    Loss for Language Image Pre-Training".

  >>> pooled, variables = MAPHead(num_heads=2).init_with_output(jax.random.key(0), jnp.ones((3, 5, 8)))
  >>> pooled.shape
  (3, 8)
  """

  num_heads: int
  mlp_ratio: int = 4
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens: jax.Array) -> jax.Array:
    batch, _, width = tokens.shape
    probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, width), jnp.float32)
    probe = jnp.broadcast_to(probe.astype(self.dtype), (batch, 1, width))
    x = linear.MultiHeadDotProductAttention(
        num_heads=self.num_heads, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(), name="attention"
    )(probe, tokens)
    y = normalization.LayerNorm(dtype=self.dtype, name="mlp_norm")(x)
    y = linear.Dense(self.mlp_ratio * width, dtype=self.dtype, name="mlp_in")(y)
    y = linear.Dense(width, dtype=self.dtype, name="mlp_out")(nn.gelu(y))
    return (x + y)[:, 0]


class ViT(nn.Module):
  """Vision Transformer: patch embedding, positions, pre-LN transformer blocks, final norm, a head.

  Patches are embedded by a ``patch_size`` x ``patch_size`` convolution of stride ``patch_size``.
  The heads (`pooling`) are a learned class token prepended to the patches (``"token"``, as the
  paper), the mean over the patches (``"gap"``) or multihead attention pooling (``"map"``, see
  `MAPHead`), each read after the final LayerNorm. As in the paper, learned positions also cover the
  class token (``N + 1`` rows); the fixed sin-cos table gives it a zero position (as MAE). With
  ``return_tokens=True`` the tokens are the patch tokens in row-major order (class token excluded),
  through the same projection, all valid; with ``"gap"`` the pooled output equals their mean.

  Attributes:
    features: output dimension of the projection.
    patch_size: side of the square patches; image height and width must be multiples of it.
    width: token width.
    depth: number of transformer blocks.
    num_heads: attention heads per block (and in the MAP head).
    mlp_ratio: hidden width of the MLPs relative to `width`.
    pooling: ``"token"``, ``"gap"`` or ``"map"``.
    positions: ``"learned"`` (initialised from a normal of std 0.02; tied to the image size given at
      init) or ``"sincos2d"`` (`sincos2d_positions`, fixed, not a parameter).
    dropout_rate: dropout after adding the positions and in every block (training only; needs a
      ``"dropout"`` rng).
    remat: recompute each block in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters stay float32).
    modality: the modality encoded, named in errors.

  References:
    Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words: Transformers for Image Recognition at
    Scale"; Beyer, Zhai & Kolesnikov 2022, "Better plain ViT baselines for ImageNet-1k" (big_vision).

  >>> encoder = ViT(features=8, patch_size=4, width=16, depth=1, num_heads=2, pooling="map")
  >>> images = jnp.ones((2, 16, 16, 3))
  >>> encoded, variables = encoder.init_with_output(jax.random.key(0), images, return_tokens=True)
  >>> encoded.pooled.shape, encoded.tokens.shape  # tokens: the 4x4 patches
  ((2, 8), (2, 16, 8))
  """

  features: int
  patch_size: int = 16
  width: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_ratio: int = 4
  pooling: str = "token"
  positions: str = "learned"
  dropout_rate: float = 0.0
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  modality: str = "image"

  def _check_configuration(self, images: jax.Array) -> None:
    for what, value, choices in (("pooling", self.pooling, POOLINGS), ("positions", self.positions, POSITIONS)):
      if value not in choices:
        raise ValueError(f"ViT: unknown {what} {value!r}; valid choices: {list(choices)}.")
    if self.width % self.num_heads:
      raise ValueError(f"ViT: width {self.width} must be divisible by num_heads {self.num_heads}.")
    base.check_input("ViT", self.modality, images, (None, None, None, None), "float")
    height, width = images.shape[1:3]
    if height % self.patch_size or width % self.patch_size:
      raise ValueError(
          f"ViT: modality {self.modality!r}: image size {height}x{width} is not divisible by "
          f"patch_size {self.patch_size}."
      )

  def _position_table(self, rows: int, cols: int, class_token: bool) -> jax.Array:
    if self.positions == "learned":
      shape = (rows * cols + int(class_token), self.width)
      if self.has_variable("params", "position_embedding"):
        initialised = self.get_variable("params", "position_embedding").shape
        if initialised != shape:
          raise ValueError(
              f"ViT: modality {self.modality!r}: {rows}x{cols} patches need {shape[0]} learned positions, the "
              f"table was initialised with {initialised[0]}; use images of the init size or positions='sincos2d'."
          )
      return self.param("position_embedding", nn.initializers.normal(0.02), shape, jnp.float32)
    table = sincos2d_positions(rows, cols, self.width)
    return jnp.asarray(np.pad(table, ((int(class_token), 0), (0, 0))))

  @nn.compact
  def __call__(
      self, images: jax.Array, *, train: bool = False, return_tokens: bool = False
  ) -> jax.Array | base.Encoded:
    self._check_configuration(images)
    x = linear.Conv(
        self.width,
        (self.patch_size, self.patch_size),
        strides=self.patch_size,
        padding="VALID",
        dtype=self.dtype,
        name="patch_embedding",
    )(images.astype(self.dtype))
    batch, rows, cols, _ = x.shape
    x = x.reshape(batch, rows * cols, self.width)
    class_token = self.pooling == "token"
    if class_token:
      token = self.param("class_token", nn.initializers.zeros, (1, 1, self.width), jnp.float32)
      x = jnp.concatenate([jnp.broadcast_to(token.astype(self.dtype), (batch, 1, self.width)), x], axis=1)
    x = x + self._position_table(rows, cols, class_token).astype(self.dtype)
    x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)
    block = nn.remat(TransformerBlock, static_argnums=(3,)) if self.remat else TransformerBlock
    for index in range(self.depth):
      x = block(self.num_heads, self.mlp_ratio, self.dropout_rate, self.dtype, name=f"block{index}")(x, None, train)
    x = normalization.LayerNorm(dtype=self.dtype, name="final_norm")(x)
    patches = x[:, 1:] if class_token else x
    if self.pooling == "token":
      pooled = x[:, 0]
    elif self.pooling == "gap":
      pooled = jnp.mean(patches, axis=1)
    else:
      pooled = MAPHead(self.num_heads, self.mlp_ratio, self.dtype, name="map_head")(patches)
    projection = linear.Dense(self.features, dtype=self.dtype, name="projection")
    return base.project_outputs(projection, pooled, patches, return_tokens)


def standard_vit(variant: str, features: int, **overrides) -> ViT:
  """The ViT of a standard size, named as ``"B/16"`` (size / patch size; sizes in `VITS`).

  Args:
    variant: ``"<size>/<patch size>"``, e.g. ``"Ti/16"``, ``"S/16"``, ``"B/32"``.
    features: output dimension of the projection.
    **overrides: any other `ViT` attribute (``pooling="map"``, ``positions="sincos2d"``, …).

  Returns:
    The `ViT`; ``standard_vit("B/16", 1000)`` on 224x224 images has timm's ``vit_base_patch16_224``'s
    86,567,656 parameters.

  >>> encoder = standard_vit("S/16", features=512)
  >>> encoder.width, encoder.depth, encoder.num_heads, encoder.patch_size
  (384, 12, 6, 16)
  """
  size, _, patch_size = variant.partition("/")
  if size not in VITS or not patch_size.isdigit():
    raise ValueError(
        f"standard_vit: unknown variant {variant!r}; expected '<size>/<patch size>' with size in {list(VITS)}."
    )
  width, depth, num_heads = VITS[size]
  return ViT(features=features, patch_size=int(patch_size), width=width, depth=depth, num_heads=num_heads, **overrides)
