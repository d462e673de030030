"""Fusion classifiers of an image and a caption (issue 12, case 4): conv 16-32-64 image encoder and
1-layer transformer caption encoder (width 64, 16 tokens), fused by tensor fusion (``tensor``) or
by a one-layer cross-modal transformer (``attention``, MulT), then a linear head over 10 classes;
cross-entropy, AdamW with clipping, batch 128. Peer: the same models written in PyTorch.

The mmjax side is `mmjax.models.classifier.FusionClassifierModule` with the library's encoders and
fusions (`TensorFusion`, `CrossModalTransformer`), trained by the trainer's step.
"""

import numpy as np
import optax

from benchmarks.peer_cases import clip_mini
from benchmarks.peer_cases.harness import MmjaxSide, ModuleModel, TorchSide
from mmjax import losses
from mmjax.encoders import ConvEncoder, TransformerTextEncoder
from mmjax.fusion import CrossModalTransformer, TensorFusion
from mmjax.models.classifier import FusionClassifierModule

SIZES = dict(batch=128, image=32, channels=(16, 32, 64), strides=(2, 2, 2), features=64, vocab=1000, length=16,
             width=64, depth=1, heads=4, mlp_ratio=4, classes=10, fusion_depth=1)
QUICK = dict(SIZES, batch=8, channels=(8,), strides=(2,), features=8, vocab=50, width=8, heads=2)
LEARNING_RATE, WEIGHT_DECAY, CLIP_NORM = 1e-3, 1e-4, 1.0


def make_batch(sizes: dict, seed: int = 0) -> dict[str, np.ndarray]:
  batch = clip_mini.make_batch(dict(sizes, batch=sizes["batch"]), seed)
  labels = np.random.default_rng(seed + 1).integers(0, sizes["classes"], sizes["batch"]).astype(np.int32)
  return {"image": batch["image"], "caption": batch["text"], "label": labels}


def optimizer() -> optax.GradientTransformation:
  return optax.chain(optax.clip_by_global_norm(CLIP_NORM), optax.adamw(LEARNING_RATE, weight_decay=WEIGHT_DECAY))


def mmjax_side(quick: bool = False, variant: str = "tensor") -> MmjaxSide:
  sizes = QUICK if quick else SIZES
  features = sizes["features"]
  if variant == "tensor":
    fusion = TensorFusion(features)
  else:
    fusion = CrossModalTransformer(features, sizes["width"], sizes["fusion_depth"], sizes["heads"], sizes["mlp_ratio"])
  module = FusionClassifierModule(
      encoders={
          "image": ConvEncoder(features, sizes["channels"], sizes["strides"]),
          "caption": TransformerTextEncoder(features, sizes["vocab"], sizes["length"], width=sizes["width"],
                                            depth=sizes["depth"], num_heads=sizes["heads"], modality="caption"),
      },
      fusion=fusion,
      num_classes=sizes["classes"],
  )

  def inputs(batch):
    present = {m: np.ones(batch["label"].shape, bool) for m in ("image", "caption")}
    return {m: batch[m] for m in ("image", "caption")}, present

  def loss(params, batch, rng):
    logits = module.apply({"params": params}, *inputs(batch), train=True, rngs={"dropout": rng})
    return -losses.categorical_log_likelihood(logits, batch["label"]).mean()

  return MmjaxSide(ModuleModel(module, loss, inputs), optimizer(), make_batch(sizes))


def torch_side(variant: str = "tensor") -> TorchSide:
  import torch
  from torch import nn

  from benchmarks.peer_cases import torch_blocks

  sizes = SIZES
  features, width, heads = sizes["features"], sizes["width"], sizes["heads"]

  class TensorFusion(nn.Module):
    def __init__(self):
      super().__init__()
      # The learned "absent" embeddings of mmjax's fusion (unused: every modality is present).
      self.absent = nn.ParameterList([nn.Parameter(torch.zeros(features)) for _ in range(2)])
      self.projection = nn.Linear((features + 1) ** 2, features, bias=False)

    def forward(self, image, caption):
      one = torch.ones(image.shape[0], 1)
      a, b = torch.cat([caption, one], 1), torch.cat([image, one], 1)  # sorted by name: caption, image
      return self.projection((a[:, :, None] * b[:, None, :]).flatten(1))

  class CrossStream(nn.Module):
    """One modality's stream: its token projection, cross-attention to the other, a self block."""

    def __init__(self):
      super().__init__()
      self.projection = nn.Linear(features, width)
      self.target_norm, self.source_norm = nn.LayerNorm(width), nn.LayerNorm(width)
      self.cross = nn.MultiheadAttention(width, heads, batch_first=True)
      self.block = torch_blocks.TransformerBlock(width, heads, sizes["mlp_ratio"])
      self.norm = nn.LayerNorm(width)

    def forward(self, target, target_valid, source, source_valid):
      keys = self.source_norm(source)
      x = target + self.cross(self.target_norm(target), keys, keys, key_padding_mask=~source_valid, need_weights=False)[0]
      return torch_blocks.masked_mean(self.norm(self.block(x, ~target_valid)), target_valid)

  class AttentionFusion(nn.Module):
    def __init__(self):
      super().__init__()
      self.streams = nn.ModuleDict({"image": CrossStream(), "caption": CrossStream()})
      self.projection = nn.Linear(width, features)

    def forward(self, image, image_valid, caption, caption_valid):
      image_tokens = self.streams["image"].projection(image)
      caption_tokens = self.streams["caption"].projection(caption)
      pooled = (self.streams["image"](image_tokens, image_valid, caption_tokens, caption_valid)
                + self.streams["caption"](caption_tokens, caption_valid, image_tokens, image_valid)) / 2
      return self.projection(pooled)

  class Classifier(nn.Module):
    def __init__(self):
      super().__init__()
      self.image = torch_blocks.ConvEncoder(3, sizes["channels"], sizes["strides"], features)
      self.caption = torch_blocks.TransformerTextEncoder(
          sizes["vocab"], sizes["length"], width, sizes["depth"], heads, sizes["mlp_ratio"], features)
      self.fusion = TensorFusion() if variant == "tensor" else AttentionFusion()
      self.head = nn.Linear(features, sizes["classes"])

    def forward(self, images, tokens):
      if variant == "tensor":
        return self.head(self.fusion(self.image(images), self.caption(tokens)))
      image_tokens = self.image.projection(self.image.tokens(images))
      caption_features, caption_valid = self.caption.tokens(tokens)
      image_valid = torch.ones(image_tokens.shape[:2], dtype=torch.bool)
      return self.head(self.fusion(image_tokens, image_valid, self.caption.projection(caption_features), caption_valid))

  model = Classifier()
  batch = make_batch(sizes)
  images = torch.from_numpy(batch["image"]).permute(0, 3, 1, 2).contiguous()
  tokens, labels = torch.from_numpy(batch["caption"]).long(), torch.from_numpy(batch["label"]).long()
  adamw = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=WEIGHT_DECAY)
  step = torch_blocks.make_step(model, lambda: nn.functional.cross_entropy(model(images, tokens), labels), adamw, CLIP_NORM)
  return TorchSide(step, torch_blocks.count_parameters(model))
