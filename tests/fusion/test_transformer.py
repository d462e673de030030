"""Single-stream transformer against a step-by-step construction from its own blocks; bottleneck streams
exchange information only through the shared tokens and only from the fusion layer on."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders.base import Encoded
from mmjax.encoders.transformer import TransformerBlock
from mmjax.fusion import BottleneckFusion, MultimodalTransformer


def test_single_stream_is_cls_plus_embedded_tokens_through_masked_blocks(batch):
  inputs, present = batch(0, ("audio", "text"))
  module = MultimodalTransformer(3, width=8, depth=2, num_heads=2)
  params = jax.jit(module.init)(jax.random.key(0), inputs, present)["params"]
  got = jax.jit(module.apply)({"params": params}, inputs, present)
  sequence, valid = [jnp.broadcast_to(params["cls"], (5, 1, 8))], [jnp.ones((5, 1), bool)]
  for name in ("audio", "text"):
    sequence.append(inputs[name].tokens @ params[f"{name}_projection"]["kernel"] + params[f"{name}_embedding"])
    valid.append(inputs[name].valid & present[name][:, None])
  x, valid = jnp.concatenate(sequence, 1), jnp.concatenate(valid, 1)
  for layer in range(2):
    x = TransformerBlock(2).apply({"params": params[f"block{layer}"]}, x, nn.make_attention_mask(valid, valid), False)
  cls = nn.LayerNorm().apply({"params": params["final_norm"]}, x[:, 0])
  want = cls @ params["projection"]["kernel"] + params["projection"]["bias"]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_single_stream_ignores_extra_padding_and_tells_modalities_apart(batch, relabel):
  inputs, _ = batch(1, ("audio", "text"))
  module = MultimodalTransformer(3, width=8, depth=1, num_heads=2)
  variables = module.init(jax.random.key(0), inputs)
  audio = inputs["audio"]
  padded = Encoded(audio.pooled, jnp.pad(audio.tokens, ((0, 0), (0, 3), (0, 0)), constant_values=7.0),
                   jnp.pad(audio.valid, ((0, 0), (0, 3))))
  out = module.apply(variables, inputs)
  np.testing.assert_allclose(module.apply(variables, {**inputs, "audio": padded}), out, atol=1e-5)
  # Two modalities of one width: swapping their inputs changes the output, swapping their parameters too does not.
  pair = {"first": audio, "second": audio._replace(tokens=audio.tokens[:, ::-1])}
  variables = module.init(jax.random.key(1), pair)
  swap = {"first": "second", "second": "first"}
  out = module.apply(variables, pair)
  assert not np.allclose(module.apply(variables, relabel(pair, swap)), out, atol=1e-4)
  np.testing.assert_allclose(module.apply(relabel(variables, swap), relabel(pair, swap)), out, rtol=1e-5, atol=1e-6)


def _block_outputs(module, variables, inputs):
  _, state = module.apply(variables, inputs, capture_intermediates=True, mutable=["intermediates"])
  return {name: value["__call__"][0] for name, value in state["intermediates"].items() if "_block" in name}


@pytest.mark.parametrize("fusion_layer", [0, 1, 2])
def test_bottleneck_streams_meet_only_through_the_shared_tokens_from_the_fusion_layer_on(batch, fusion_layer):
  inputs, _ = batch(2, ("audio", "text"))
  module = BottleneckFusion(3, width=8, depth=3, fusion_layer=fusion_layer, num_bottlenecks=2, num_heads=2)
  variables = module.init(jax.random.key(0), inputs)
  before = _block_outputs(module, variables, inputs)
  text = inputs["text"]
  after = _block_outputs(module, variables, {**inputs, "text": text._replace(tokens=text.tokens * 3 + 1)})
  for layer in range(3):
    audio_changed = not np.allclose(before[f"audio_block{layer}"], after[f"audio_block{layer}"], atol=1e-6)
    # Layer `fusion_layer` reads the initial shared tokens; the text stream's updates of them arrive one layer later.
    assert audio_changed == (layer > fusion_layer), layer


def test_bottleneck_tokens_average_the_present_streams_updates(batch):
  """With one modality absent, the other stream's output equals that stream fused alone."""
  inputs, _ = batch(3, ("audio", "text"))
  module = BottleneckFusion(3, width=8, depth=2, fusion_layer=0, num_bottlenecks=2, num_heads=2)
  variables = module.init(jax.random.key(0), inputs)
  only_audio = {"audio": jnp.ones(5, bool), "text": jnp.zeros(5, bool)}
  alone = {"params": {k: v for k, v in variables["params"].items() if not k.startswith("text_")}}
  np.testing.assert_allclose(
      module.apply(variables, inputs, only_audio), module.apply(alone, {"audio": inputs["audio"]}), rtol=1e-5, atol=1e-6
  )


def test_bottleneck_rejects_bad_layers():
  inputs = {"a": jnp.ones((1, 8)), "b": jnp.ones((1, 8))}
  with pytest.raises(ValueError, match=r"BottleneckFusion: fusion_layer must be in \[0, depth=2\), got 2"):
    BottleneckFusion(3, width=8, depth=2, fusion_layer=2, num_heads=2).init(jax.random.key(0), inputs)
  with pytest.raises(ValueError, match=r"BottleneckFusion: num_bottlenecks must be at least 1, got 0"):
    BottleneckFusion(3, width=8, depth=2, fusion_layer=1, num_bottlenecks=0, num_heads=2).init(jax.random.key(0), inputs)
  with pytest.raises(ValueError, match=r"BottleneckFusion: width 8 does not divide into num_heads=3 heads"):
    BottleneckFusion(3, width=8, depth=2, fusion_layer=1, num_heads=3).init(jax.random.key(0), inputs)
