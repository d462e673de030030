"""Fusion modules: linen modules combining the features of several modalities, aware of missing ones.

The contract every fusion honours
---------------------------------
A fusion is called as ``fusion(inputs, present=None, *, train=False)`` and returns ``[B, features]``
in its ``dtype`` (parameters stay float32):

* ``inputs`` is ``{modality: x}``, where ``x`` is either an encoder's pooled features ``[B, D_m]`` or
  an `mmjax.encoders.base.Encoded` (``pooled [B, D_m]``, ``tokens [B, T_m, D_m]``, ``valid bool[B, T_m]``,
  what encoders return with ``return_tokens=True``). Widths and lengths may differ per modality.
  Pooled fusions read ``x.pooled``; token fusions read ``x.tokens`` and its validity mask, and take
  a pooled array as a sequence of one token.
* ``present`` is ``{modality: bool[B]}``, the batch's per-sample presence mask (``batch["present"]``),
  with exactly the keys of ``inputs``; None means every modality of every sample is present.
* ``train`` switches dropout on (only the transformer-based fusions have any) and, for
  `LateFusion` with ``combine="vote"``, chooses differentiable averaging over voting.

Class attributes tell a model how to use a fusion (`Fusion`):

* ``needs_tokens``: the fusion reads token sequences, so a model asks its encoders for them only then;
* ``outputs_predictions``: the output is already combined class log-probabilities (`LateFusion`,
  whose ``features`` is the number of classes), so a classifier puts no head on it.

Every fusion processes its modalities in sorted name order (never the dict's order), names its
per-modality parameters after the modality, and validates its inputs: a wrong rank, batch size or
dtype, a token array without its mask, or a presence entry missing or extra raises a ``ValueError``
naming the modality. An absent modality never influences the output, and its values get exactly
zero gradient: they are replaced before anything reads them (zeros, masked out of attention,
pooling, gates and graphs; a learned "absent" embedding where a value is needed: early, tensor and
multiplicative fusion). A sample with every modality absent gives a finite output.

The fusions, by family (`FUSIONS` names them for configs):

=====================  ==========================  ===============================================
name                   module                      family
=====================  ==========================  ===============================================
``early``              `EarlyFusion`               concatenation + projection (pooled.py)
``sum``, ``mean``      `SumFusion`, `MeanFusion`   pooling over present modalities (pooled.py)
``attention``          `AttentionFusion`           softmax weights over modalities (pooled.py)
``late``               `LateFusion`                per-modality heads, combined (late.py)
``gmu``, ``gated``     `GatedMultimodalUnit`,      gated units, 2 and N modalities (gated.py)
                       `GatedFusion`
``tensor``             `TensorFusion`              outer product, TFN (tensor.py)
``low_rank``           `LowRankFusion`             low-rank tensor fusion, LMF (tensor.py)
``multiplicative``     `MultiplicativeFusion`      multiplicative interactions (multiplicative.py)
``cross_modal``        `CrossModalTransformer`     directional cross-modal attention, MulT (attention.py)
``co_attention``       `CoAttentionFusion`         co-attention streams (attention.py)
``transformer``        `MultimodalTransformer`     single-stream transformer (transformer.py)
``bottleneck``         `BottleneckFusion`          attention bottlenecks, MBT (transformer.py)
``graph``              `GraphFusion`               modalities as graph nodes, GCN/GAT (graph.py)
``token_graph``        `TokenGraphFusion`          tokens as graph nodes, GCN/GAT (graph.py)
=====================  ==========================  ===============================================

>>> import jax
>>> import jax.numpy as jnp
>>> fusion = FUSIONS["mean"](features=4)
>>> inputs = {"image": jnp.ones((3, 8)), "text": jnp.ones((3, 5))}
>>> present = {"image": jnp.array([True, True, False]), "text": jnp.array([True, False, False])}
>>> variables = fusion.init(jax.random.key(0), inputs, present)
>>> fusion.apply(variables, inputs, present).shape, fusion.needs_tokens, fusion.outputs_predictions
((3, 4), False, False)
"""

from mmjax.fusion.attention import CoAttentionFusion, CrossAttention, CrossModalTransformer
from mmjax.fusion.base import AbsentEmbedding, Fusion
from mmjax.fusion.experts import (
    mixture_of_experts,
    mixture_of_products_of_experts,
    modality_subsets,
    product_of_experts,
    stratified_components,
    subset_products_of_experts,
)
from mmjax.fusion.gated import GatedFusion, GatedMultimodalUnit
from mmjax.fusion.graph import GATLayer, GCNLayer, GraphFusion, MessagePassing, TokenGraphFusion
from mmjax.fusion.late import LateFusion
from mmjax.fusion.multiplicative import MultiplicativeFusion, MultiplicativeInteraction
from mmjax.fusion.pooled import AttentionFusion, EarlyFusion, MeanFusion, SumFusion
from mmjax.fusion.tensor import LowRankFusion, TensorFusion
from mmjax.fusion.transformer import BottleneckFusion, MultimodalTransformer

FUSIONS: dict[str, type[Fusion]] = {
    "early": EarlyFusion,
    "sum": SumFusion,
    "mean": MeanFusion,
    "attention": AttentionFusion,
    "late": LateFusion,
    "gmu": GatedMultimodalUnit,
    "gated": GatedFusion,
    "tensor": TensorFusion,
    "low_rank": LowRankFusion,
    "multiplicative": MultiplicativeFusion,
    "cross_modal": CrossModalTransformer,
    "co_attention": CoAttentionFusion,
    "transformer": MultimodalTransformer,
    "bottleneck": BottleneckFusion,
    "graph": GraphFusion,
    "token_graph": TokenGraphFusion,
}

__all__ = [
    "FUSIONS",
    "AbsentEmbedding",
    "AttentionFusion",
    "BottleneckFusion",
    "CoAttentionFusion",
    "CrossAttention",
    "CrossModalTransformer",
    "EarlyFusion",
    "Fusion",
    "GATLayer",
    "GCNLayer",
    "GatedFusion",
    "GatedMultimodalUnit",
    "GraphFusion",
    "LateFusion",
    "LowRankFusion",
    "MeanFusion",
    "MessagePassing",
    "MultimodalTransformer",
    "MultiplicativeFusion",
    "MultiplicativeInteraction",
    "SumFusion",
    "TensorFusion",
    "TokenGraphFusion",
    "mixture_of_experts",
    "mixture_of_products_of_experts",
    "modality_subsets",
    "product_of_experts",
    "stratified_components",
    "subset_products_of_experts",
]
