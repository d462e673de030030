"""Fixtures shared by the fusion tests: a small three-modality batch with padding and missing
modalities, garbage to put where values must not matter, and relabelling of modalities."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mmjax.encoders.base import Encoded

BATCH = 5
# Sample 0 has every modality, samples 1, 2 and 4 miss some, sample 3 misses all of them; each
# modality is absent from some sample that has others.
PRESENT = {
    "audio": np.array([1, 0, 1, 0, 1], bool),
    "image": np.array([1, 1, 0, 0, 1], bool),
    "text": np.array([1, 1, 0, 0, 0], bool),
}
AUDIO_VALID = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0], [1, 0, 0, 0], [1, 1, 1, 1]], bool)
TEXT_VALID = np.array([[1, 1, 0], [1, 1, 1], [1, 0, 0], [1, 1, 0], [1, 1, 1]], bool)


def make_batch(seed: int = 0, modalities=("audio", "image", "text")) -> tuple[dict, dict]:
  """`(inputs, present)`: audio and text as `Encoded` with padding, image pooled; see `PRESENT`
  for who is missing."""
  rng = np.random.default_rng(seed)

  def normal(*shape):
    return jnp.asarray(rng.normal(size=shape), jnp.float32)

  inputs = {
      "audio": Encoded(normal(BATCH, 3), normal(BATCH, 4, 3), jnp.asarray(AUDIO_VALID)),
      "image": normal(BATCH, 5),
      "text": Encoded(normal(BATCH, 6), normal(BATCH, 3, 6), jnp.asarray(TEXT_VALID)),
  }
  return {m: inputs[m] for m in modalities}, {m: jnp.asarray(PRESENT[m]) for m in modalities}


def init_and_apply(module, inputs: dict, present: dict, apply=lambda f: f, seed: int = 0):
  """`(params, output)`: the module's parameters from key `seed`, and ``apply(module.apply)`` (a
  chex variant, for instance) on the batch with them."""
  params = module.init(jax.random.key(seed), inputs, present)["params"]
  return params, apply(module.apply)({"params": params}, inputs, present)


@pytest.fixture
def batch():
  """`make_batch` as a fixture, for tests that are plain functions."""
  return make_batch


def _garbage_like(x: jax.Array, keep: jax.Array, seed: int) -> jax.Array:
  """`x` where `keep` holds, huge finite values of random sign elsewhere."""
  sign = np.where(np.random.default_rng(seed).random(x.shape) < 0.5, -1.0, 1.0)
  keep = np.reshape(keep, keep.shape + (1,) * (x.ndim - keep.ndim))
  return jnp.asarray(np.where(keep, x, sign * 1e30), x.dtype)


@pytest.fixture
def with_garbage():
  """``with_garbage(inputs, present)``: absent samples' features and padding tokens replaced by ±1e30."""

  def fill(inputs, present):
    filled = {}
    for index, (name, x) in enumerate(sorted(inputs.items())):
      here = np.asarray(present[name])
      if isinstance(x, Encoded):
        filled[name] = Encoded(
            _garbage_like(x.pooled, here, index),
            _garbage_like(x.tokens, np.asarray(x.valid) & here[:, None], index + 10),
            x.valid,
        )
      else:
        filled[name] = _garbage_like(x, here, index)
    return filled

  return fill


def _rename(key: str, mapping: dict[str, str]) -> str:
  for old, new in mapping.items():
    if key.startswith(f"{old}_"):
      return new + key[len(old) :]
  return key


@pytest.fixture
def relabel():
  """``relabel(tree, {"a": "b", "b": "a"})``: a dict (params, inputs, presence) with its modality-named
  keys (``"a"`` or ``"a_projection"``) renamed."""

  def rename(tree, mapping):
    if not isinstance(tree, dict):
      return tree
    return {mapping.get(k, _rename(k, mapping)): rename(v, mapping) for k, v in tree.items()}

  return rename


@pytest.fixture
def assert_params_all_have_gradient():
  """Asserts every parameter leaf's gradient is finite and not all zero, naming the leaves that fail."""

  def check(grads):
    flat = jax.tree_util.tree_flatten_with_path(grads)[0]
    dead = [jax.tree_util.keystr(path) for path, g in flat if not np.any(np.asarray(g) != 0)]
    bad = [jax.tree_util.keystr(path) for path, g in flat if not np.all(np.isfinite(np.asarray(g)))]
    assert not dead, f"no gradient reaches {dead}"
    assert not bad, f"non-finite gradient in {bad}"

  return check
