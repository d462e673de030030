"""PyTorch twins of the mmjax encoders the peer cases use, layer for layer (same parameter counts,
same activations: flax's ``nn.gelu`` is the tanh approximation, LayerNorm over channels only).
Imported only when torch is installed (the ``bench`` extra)."""

import torch
from torch import nn


class ConvEncoder(nn.Module):
  """`mmjax.encoders.ConvEncoder`: stages ``conv(3×3, stride) → LayerNorm(channels) → gelu``,
  global mean pool, linear projection; NCHW images."""

  def __init__(self, in_channels: int, channels, strides, features: int):
    super().__init__()
    self.convs = nn.ModuleList()
    self.norms = nn.ModuleList()
    for width, stride in zip(channels, strides):
      self.convs.append(nn.Conv2d(in_channels, width, 3, stride=stride, padding=1))
      self.norms.append(nn.LayerNorm(width))
      in_channels = width
    self.projection = nn.Linear(in_channels, features)

  def tokens(self, images: torch.Tensor) -> torch.Tensor:
    """``[B, H'·W', C]`` cells of the last feature map."""
    x = images
    for conv, norm in zip(self.convs, self.norms):
      x = conv(x).permute(0, 2, 3, 1)
      x = nn.functional.gelu(norm(x), approximate="tanh").permute(0, 3, 1, 2)
    return x.flatten(2).transpose(1, 2)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    return self.projection(self.tokens(images).mean(1))


class TransformerBlock(nn.Module):
  """`mmjax.encoders.TransformerBlock`: pre-LN attention and MLP, residuals."""

  def __init__(self, width: int, heads: int, mlp_ratio: int):
    super().__init__()
    self.attention_norm = nn.LayerNorm(width)
    self.attention = nn.MultiheadAttention(width, heads, batch_first=True)
    self.mlp_norm = nn.LayerNorm(width)
    self.mlp_in = nn.Linear(width, mlp_ratio * width)
    self.mlp_out = nn.Linear(mlp_ratio * width, width)

  def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
    y = self.attention_norm(x)
    x = x + self.attention(y, y, y, key_padding_mask=padding, need_weights=False)[0]
    y = self.mlp_out(nn.functional.gelu(self.mlp_in(self.mlp_norm(x)), approximate="tanh"))
    return x + y


def masked_mean(x: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
  weights = valid.to(x.dtype).unsqueeze(-1)
  return (x * weights).sum(1) / weights.sum(1).clamp(min=1)


class TransformerTextEncoder(nn.Module):
  """`mmjax.encoders.TransformerTextEncoder` (mean pooling over non-padding tokens, pad id 0)."""

  def __init__(self, vocab: int, length: int, width: int, depth: int, heads: int, mlp_ratio: int, features: int):
    super().__init__()
    self.token_embedding = nn.Embedding(vocab, width)
    self.position_embedding = nn.Parameter(torch.randn(length, width) * 0.02)
    self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth))
    self.final_norm = nn.LayerNorm(width)
    self.projection = nn.Linear(width, features)

  def tokens(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``([B, L, width] features, bool[B, L] valid)``."""
    valid = tokens != 0
    x = self.token_embedding(tokens) + self.position_embedding[: tokens.shape[1]]
    for block in self.blocks:
      x = block(x, ~valid)
    return self.final_norm(x), valid

  def forward(self, tokens: torch.Tensor) -> torch.Tensor:
    return self.projection(masked_mean(*self.tokens(tokens)))


def mlp(sizes, activation=nn.SiLU, final_activation: bool = True) -> nn.Sequential:
  """Linear layers between consecutive `sizes`, `activation` after each (and after the last if
  `final_activation`)."""
  layers = []
  for index, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    layers.append(nn.Linear(a, b))
    if final_activation or index < len(sizes) - 2:
      layers.append(activation())
  return nn.Sequential(*layers)


def count_parameters(module: nn.Module) -> int:
  return sum(p.numel() for p in module.parameters())


def make_step(module: nn.Module, loss_fn, optimizer, clip_norm: float | None = None):
  """One full update of `module`: ``loss_fn()``, backward, optional norm clipping, optimizer step."""

  def step():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn()
    loss.backward()
    if clip_norm is not None:
      nn.utils.clip_grad_norm_(module.parameters(), clip_norm)
    optimizer.step()

  return step
