"""ResNet image encoders (He et al. 2016), in the v1.5 variant of torchvision and the Flax examples."""

from collections.abc import Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from mmjax import linear
from mmjax.encoders import base

# Each convolution of a residual branch as (output channels / block channels, kernel size, takes the
# block's stride). v1.5: a bottleneck downsamples in its 3x3 convolution, not in the first 1x1.
BLOCKS: dict[str, tuple[tuple[int, int, bool], ...]] = {
    "basic": ((1, 3, True), (1, 3, False)),
    "bottleneck": ((1, 1, False), (1, 3, True), (4, 1, False)),
}
# Stems as (kernel size, stride, followed by a 3x3 stride-2 max-pool).
STEMS: dict[str, tuple[int, int, bool]] = {
    "imagenet": (7, 2, True),  # 224x224 images: 4x downsampling before the first stage
    "small": (3, 1, False),  # 8x8 to 32x32 images (CIFAR-style)
}
RESNET_NORMS = ("batch", "group")
# Stage sizes and block of the standard depths (He et al. 2016, Table 1).
RESNETS: dict[int, tuple[tuple[int, ...], str]] = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}
MAX_GROUPS = 32  # Wu & He 2018


def group_count(channels: int) -> int:
  """Groups of the ``"group"`` norm: 32, or the largest divisor of `channels` below 32 when 32 does not
  divide it (so narrow test networks still get a valid GroupNorm).

  >>> group_count(256), group_count(16), group_count(48)
  (32, 16, 24)
  """
  return max(groups for groups in range(1, MAX_GROUPS + 1) if channels % groups == 0)


def _conv(channels: int, kernel: int, stride: int, dtype, name: str) -> nn.Conv:
  # Symmetric padding kernel // 2, as torchvision: 'SAME' would pad a stride-2 convolution on the
  # high side only, shifting every downsampled grid by half a pixel.
  return linear.Conv(
      channels, (kernel, kernel), strides=stride, padding=kernel // 2, use_bias=False, dtype=dtype, name=name
  )


def _norm(kind: str, channels: int, train: bool, dtype, name: str, zero_scale: bool = False) -> nn.Module:
  scale_init = nn.initializers.zeros if zero_scale else nn.initializers.ones
  if kind == "batch":
    # Flax's momentum is the weight of the old running statistic: 0.9 here is PyTorch's momentum 0.1.
    return nn.BatchNorm(
        use_running_average=not train, momentum=0.9, epsilon=1e-5, dtype=dtype, scale_init=scale_init, name=name
    )
  return nn.GroupNorm(num_groups=group_count(channels), epsilon=1e-5, dtype=dtype, scale_init=scale_init, name=name)


def _check_choice(what: str, value: str, choices: Sequence[str] | Mapping) -> None:
  if value not in choices:
    raise ValueError(f"ResNet: unknown {what} {value!r}; valid choices: {sorted(choices)}.")


class ResidualBlock(nn.Module):
  """``relu(shortcut(x) + branch(x))``: one basic or bottleneck block of `ResNet`.

  The branch is the block's convolutions (see `BLOCKS`), each followed by a norm and, except the
  last, a ReLU. The shortcut is the identity, or a 1x1 convolution and a norm when the branch changes
  the shape.

  Attributes:
    channels: channels of the block (a bottleneck outputs 4x as many).
    stride: stride of the block's downsampling convolution.
    block: ``"basic"`` or ``"bottleneck"``.
    norm: ``"batch"`` or ``"group"``.
    zero_init_residual: start the branch's last norm with scale 0, so the block starts as its shortcut.
    dtype: computation dtype (parameters stay float32).

  >>> block = ResidualBlock(channels=4, stride=2, block="bottleneck", norm="group")
  >>> y, variables = block.init_with_output(jax.random.key(0), jnp.ones((2, 8, 8, 3)), False)
  >>> y.shape
  (2, 4, 4, 16)
  """

  channels: int
  stride: int
  block: str
  norm: str
  zero_init_residual: bool = True
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    layout = BLOCKS[self.block]
    y = x
    for index, (multiplier, kernel, strided) in enumerate(layout):
      last = index == len(layout) - 1
      channels = multiplier * self.channels
      y = _conv(channels, kernel, self.stride if strided else 1, self.dtype, f"conv{index}")(y)
      y = _norm(self.norm, channels, train, self.dtype, f"norm{index}", zero_scale=last and self.zero_init_residual)(y)
      if not last:
        y = nn.relu(y)
    if x.shape != y.shape:
      x = _conv(y.shape[-1], 1, self.stride, self.dtype, "shortcut_conv")(x)
      x = _norm(self.norm, y.shape[-1], train, self.dtype, "shortcut_norm")(x)
    return nn.relu(x + y)


class ResNet(nn.Module):
  """ResNet v1.5: a stem, stages of residual blocks, global average pooling and a linear projection.

  Stage ``i`` has ``stage_sizes[i]`` blocks of ``width * 2**i`` channels; the first block of every
  stage but the first downsamples by 2. With ``return_tokens=True`` the tokens are the cells of the
  last stage's feature map, ``[B, H' * W', features]`` in row-major order, all valid; the pooled output
  (the projection of the mean over cells) equals their mean. `standard_resnet` builds the standard depths.

  Batch norm (``norm="batch"``) normalises with the statistics of the batch in training and with
  running averages in evaluation, so training must be applied with ``mutable=["batch_stats"]``, which
  updates ``running = 0.9 * running + 0.1 * batch statistic`` (the variance is the biased one). Under
  `jax.jit` with the batch sharded over a mesh, the batch statistics are those of the global batch:
  XLA inserts the cross-device reductions, so no ``axis_name`` is needed (it is only for `pmap` and
  `shard_map`). In training a sample's features depend on the rest of its batch; with a contrastive
  loss that leaks information between the samples being contrasted (the reason `layers.NORMS` leaves
  batch norm out), so prefer ``norm="group"`` there.

  Attributes:
    features: output dimension of the projection.
    stage_sizes: blocks per stage, e.g. ``(2, 2, 2, 2)`` (ResNet-18), ``(3, 4, 6, 3)`` (ResNet-34/50).
    block: ``"basic"`` (two 3x3 convolutions) or ``"bottleneck"`` (1x1, 3x3, 1x1 with 4x expansion).
    width: channels of the stem and the first stage (64 in the paper).
    stem: ``"imagenet"`` (7x7 stride-2 convolution, 3x3 stride-2 max-pool) or ``"small"`` (3x3 stride-1
      convolution, no pool, for 8x8 to 32x32 images).
    norm: ``"batch"`` (momentum 0.9, epsilon 1e-5) or ``"group"`` (`group_count` groups, epsilon 1e-5).
    zero_init_residual: start the last norm of every residual branch with scale 0 (Goyal et al. 2017).
    remat: recompute each block in the backward pass instead of storing its activations.
    dtype: computation dtype (parameters and batch statistics stay float32).
    modality: the modality encoded, named in errors.

  References:
    He et al. 2016, "Deep Residual Learning for Image Recognition"; Goyal et al. 2017, "Accurate,
    Large Minibatch SGD: Training ImageNet in 1 Hour" (zero-init residual); Wu & He 2018, "Group
    Normalization".

  >>> encoder = ResNet(features=8, stage_sizes=(1, 1), width=4, stem="small")
  >>> images = jnp.ones((2, 8, 8, 3))
  >>> variables = encoder.init(jax.random.key(0), images)
  >>> sorted(variables)
  ['batch_stats', 'params']
  >>> encoded, updates = encoder.apply(variables, images, train=True, return_tokens=True, mutable=["batch_stats"])
  >>> encoded.pooled.shape, encoded.tokens.shape  # tokens: the 4x4 cells of the last stage
  ((2, 8), (2, 16, 8))
  """

  features: int
  stage_sizes: Sequence[int] = (2, 2, 2, 2)
  block: str = "basic"
  width: int = 64
  stem: str = "imagenet"
  norm: str = "batch"
  zero_init_residual: bool = True
  remat: bool = False
  dtype: jnp.dtype = jnp.float32
  modality: str = "image"

  @nn.compact
  def __call__(
      self, images: jax.Array, *, train: bool = False, return_tokens: bool = False
  ) -> jax.Array | base.Encoded:
    _check_choice("block", self.block, BLOCKS)
    _check_choice("stem", self.stem, STEMS)
    _check_choice("norm", self.norm, RESNET_NORMS)
    base.check_input("ResNet", self.modality, images, (None, None, None, None), "float")
    kernel, stride, max_pool = STEMS[self.stem]
    x = _conv(self.width, kernel, stride, self.dtype, "stem_conv")(images.astype(self.dtype))
    x = nn.relu(_norm(self.norm, self.width, train, self.dtype, "stem_norm")(x))
    if max_pool:
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    block = nn.remat(ResidualBlock, static_argnums=(2,)) if self.remat else ResidualBlock
    for stage, size in enumerate(self.stage_sizes):
      for index in range(size):
        x = block(
            self.width * 2**stage,
            2 if stage > 0 and index == 0 else 1,
            self.block,
            self.norm,
            self.zero_init_residual,
            self.dtype,
            name=f"stage{stage}_block{index}",
        )(x, train)
    cells = x.reshape(x.shape[0], -1, x.shape[-1])
    projection = linear.Dense(self.features, dtype=self.dtype, name="projection")
    return base.project_outputs(projection, jnp.mean(x, axis=(1, 2)), cells, return_tokens)


def standard_resnet(depth: int, features: int, **overrides) -> ResNet:
  """The ResNet of a standard `depth` (18, 34, 50, 101 or 152; see `RESNETS`).

  Args:
    depth: number of weighted layers.
    features: output dimension of the projection.
    **overrides: any other `ResNet` attribute (``stem="small"``, ``norm="group"``, ``width``, …).

  Returns:
    The `ResNet`; with 1000 features, the ImageNet stem and 224x224 images, ResNet-18 and ResNet-50
    have torchvision's 11,689,512 and 25,557,032 parameters.

  >>> standard_resnet(50, features=1000).stage_sizes
  (3, 4, 6, 3)
  """
  if depth not in RESNETS:
    raise ValueError(f"standard_resnet: unknown depth {depth}; valid choices: {sorted(RESNETS)}.")
  stage_sizes, block = RESNETS[depth]
  return ResNet(features=features, stage_sizes=stage_sizes, block=block, **overrides)
