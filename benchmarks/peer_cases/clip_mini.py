"""CLIP-mini: conv 32-64-128 image tower and 2-layer transformer text tower into 128-d, CLIP loss,
AdamW with gradient clipping, batch 256 (issue 12, case 1). Peer: the same towers in PyTorch with
open_clip's ``ClipLoss``."""

import math

import jax
import numpy as np
import optax

from benchmarks.peer_cases.harness import MmjaxSide, ModuleModel, TorchSide
from mmjax import losses
from mmjax.encoders import ConvEncoder, TransformerTextEncoder
from mmjax.models.dual_encoder import DualEncoder

SIZES = dict(batch=256, image=32, channels=(32, 64, 128), strides=(2, 2, 2), embed=128, vocab=1000, length=16,
             width=128, depth=2, heads=4, mlp_ratio=4)
QUICK = dict(SIZES, batch=16, channels=(8, 16), strides=(2, 2), embed=16, vocab=50, width=16, depth=1)
LEARNING_RATE, WEIGHT_DECAY, CLIP_NORM, MAX_SCALE = 1e-3, 0.1, 1.0, 100.0


def make_batch(sizes: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Random images and token ids, each text 4 to `length` tokens long, padded with 0."""
  rng = np.random.default_rng(seed)
  b, length = sizes["batch"], sizes["length"]
  tokens = rng.integers(1, sizes["vocab"], (b, length)).astype(np.int32)
  lengths = rng.integers(4, length + 1, b)
  tokens[np.arange(length)[None, :] >= lengths[:, None]] = 0
  images = rng.standard_normal((b, sizes["image"], sizes["image"], 3)).astype(np.float32)
  return {"image": images, "text": tokens}


def optimizer() -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(CLIP_NORM), optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY))


def mmjax_side(quick: bool = False) -> MmjaxSide:
  sizes = QUICK if quick else SIZES
  module = DualEncoder(
      encoders={
          "image": ConvEncoder(sizes["embed"], sizes["channels"], sizes["strides"]),
          "text": TransformerTextEncoder(
              sizes["embed"], sizes["vocab"], sizes["length"], width=sizes["width"], depth=sizes["depth"],
              num_heads=sizes["heads"], mlp_ratio=sizes["mlp_ratio"], modality="text",
          ),
      },
      init_log_scale=math.log(1 / 0.07),
  )

  def loss(params, batch, rng):
    embeddings = module.apply({"params": params}, batch, train=True, rngs={"dropout": rng})
    return losses.clip_loss(embeddings["image"], embeddings["text"], params["log_scale"], max_scale=MAX_SCALE)

  model = ModuleModel(module, loss, lambda batch: (batch,))
  return MmjaxSide(model, optimizer(), make_batch(sizes))


def torch_side() -> TorchSide:
  import open_clip.loss
  import torch

  from benchmarks.peer_cases import torch_blocks

  sizes = SIZES

  class Clip(torch.nn.Module):
    def __init__(self):
      super().__init__()
      self.image = torch_blocks.ConvEncoder(3, sizes["channels"], sizes["strides"], sizes["embed"])
      self.text = torch_blocks.TransformerTextEncoder(
          sizes["vocab"], sizes["length"], sizes["width"], sizes["depth"], sizes["heads"], sizes["mlp_ratio"], sizes["embed"]
      )
      self.log_scale = torch.nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def forward(self, images, tokens):
      normalize = torch.nn.functional.normalize
      return normalize(self.image(images), dim=-1), normalize(self.text(tokens), dim=-1), self.log_scale.exp().clamp(max=MAX_SCALE)

  model = Clip()
  batch = make_batch(sizes)
  images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
  tokens = torch.from_numpy(batch["text"]).long()
  clip_loss = open_clip.loss.ClipLoss()
  adamw = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  step = torch_blocks.make_step(model, lambda: clip_loss(*model(images, tokens)), adamw, CLIP_NORM)
  return TorchSide(step, torch_blocks.count_parameters(model))
