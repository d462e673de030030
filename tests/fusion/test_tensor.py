"""Tensor fusion against an explicit NumPy outer product; low-rank fusion equals tensor fusion with the
rank-r weight tensor its factors define; absent modalities use their learned embedding."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from mmjax.fusion import LowRankFusion, TensorFusion
from tests.fusion.conftest import init_and_apply, make_batch


def _augmented(params, inputs, present):
  """``[x_m; 1]`` per modality (sorted), absent ones replaced by their embedding, in float64."""
  out = []
  for name in sorted(inputs):
    x = np.asarray(getattr(inputs[name], "pooled", inputs[name]), np.float64)
    x = np.where(np.asarray(present[name])[:, None], x, np.asarray(params[f"{name}_absent"]["embedding"], np.float64))
    out.append(np.concatenate([x, np.ones((len(x), 1))], -1))
  return out


class AgainstNumpyTest(chex.TestCase):
  """Outputs against NumPy float64, traced and untraced alike."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_tensor_fusion_is_a_projection_of_the_outer_product(self):
    inputs, present = make_batch(0)
    module = TensorFusion(3)
    params, got = init_and_apply(module, inputs, present, self.variant, seed=0)
    a, i, t = _augmented(params, inputs, present)
    product = np.einsum("bi,bj,bk->bijk", a, i, t)  # audio varies slowest, then image, then text
    kernel = np.asarray(params["projection"]["kernel"], np.float64)
    chex.assert_shape(kernel, (4 * 6 * 7, 3))  # (3 + 1)(5 + 1)(6 + 1) entries of the product
    np.testing.assert_allclose(got, product.reshape(len(a), -1) @ kernel, rtol=1e-5, atol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_low_rank_fusion_equals_tensor_fusion_with_the_rank_r_weight_tensor(self):
    inputs, present = make_batch(1)
    low_rank = LowRankFusion(3, rank=4)
    params = low_rank.init(jax.random.key(2), inputs, present)["params"]
    factors = [np.asarray(params[f"{n}_factors"], np.float64) for n in sorted(inputs)]  # [rank, D_m + 1, F]
    weight_tensor = np.einsum("rif,rjf,rkf->ijkf", *factors)  # W[i, j, k, f] = Σ_r Π_m W_m^r[i_m, f]
    tensor_params = {
        "projection": {"kernel": jnp.asarray(weight_tensor.reshape(-1, 3), jnp.float32)},
        **{k: v for k, v in params.items() if k.endswith("_absent")},
    }
    want = self.variant(TensorFusion(3).apply)({"params": tensor_params}, inputs, present)
    got = self.variant(low_rank.apply)({"params": params}, inputs, present)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    # And directly: Σ_r Π_m (W_m^r [x_m; 1]).
    projections = [np.einsum("bd,rdf->brf", v, f) for v, f in zip(_augmented(params, inputs, present), factors)]
    direct = np.sum(np.prod(projections, axis=0), axis=1)
    np.testing.assert_allclose(got, direct, rtol=1e-5, atol=1e-5)


def test_absent_modality_reads_as_its_embedding(batch):
  inputs, present = batch(2, ("audio", "image"))
  module = LowRankFusion(2, rank=2)
  params = module.init(jax.random.key(0), inputs, present)["params"]
  embedding = params["image_absent"]["embedding"]
  absent = {"audio": jnp.ones(5, bool), "image": jnp.zeros(5, bool)}
  as_embedding = {**inputs, "image": jnp.broadcast_to(embedding, inputs["image"].shape)}
  np.testing.assert_allclose(
      module.apply({"params": params}, inputs, absent), module.apply({"params": params}, as_embedding), rtol=1e-6
  )
