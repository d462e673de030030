"""Sharding of the training state from rules that are config data.

A rule is ``(pattern, action)``: the first rule whose regular expression is found (`re.search`) in
a leaf's path decides how that leaf is laid out on the mesh. Paths look like
``params/encoders_text/token_embedding/embedding`` or, for the optimizer's copy of that parameter,
``opt_state/contrastive/1/0/mu/encoders_text/token_embedding/embedding``, so one rule covers a
parameter and its optimizer statistics. Actions:

* ``"replicate"``: a full copy on every device.
* ``"fsdp"``: split the largest dimension that the ``fsdp`` axis size divides over that axis
  (ZeRO-3 / fully sharded data parallelism), if the leaf has at least ``fsdp_min_size`` elements;
  otherwise replicate (small leaves are not worth the communication).
* a tuple of mesh axis names or None, one per dimension: an explicit `PartitionSpec`, e.g.
  ``(None, "model")`` for tensor parallelism of a kernel's output dimension.

Leaves no rule matches are replicated.

>>> spec_for("params/dense/kernel", (1024, 512), [(".*", "fsdp")], fsdp_size=4, fsdp_min_size=2**16)
P('fsdp', None)
>>> spec_for("params/dense/bias", (512,), [(".*", "fsdp")], fsdp_size=4, fsdp_min_size=2**16)
P()
>>> spec_for("params/embed/embedding", (100, 64), [("embed", (None, "model"))], fsdp_size=4, fsdp_min_size=0)
P(None, 'model')
"""

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from mmjax.schema import ConfigError, Field

ACTIONS = ("replicate", "fsdp")

CONFIG_SCHEMA = {
    "rules": Field((tuple, list)),
    "fsdp_min_size": Field(int, low=0),
}

Rule = tuple[str, str | Sequence[str | None]]


def validate_rules(rules: Sequence[Rule], axis_names: Sequence[str]) -> None:
  """Raises `ConfigError` for a malformed rule, naming it and the valid actions."""
  for rule in rules:
    if not isinstance(rule, (tuple, list)) or len(rule) != 2 or not isinstance(rule[0], str):
      raise ConfigError(f"sharding rule {rule!r} must be a (regex, action) pair.")
    pattern, action = rule
    try:
      re.compile(pattern)
    except re.error as error:
      raise ConfigError(f"sharding rule {rule!r}: bad regular expression: {error}") from error
    if isinstance(action, str):
      if action not in ACTIONS:
        raise ConfigError(f"sharding rule {rule!r}: unknown action {action!r}; valid: {list(ACTIONS)} or a tuple of axes.")
    elif not all(axis is None or axis in axis_names for axis in action):
      raise ConfigError(f"sharding rule {rule!r}: axes must be None or among {list(axis_names)}.")


def spec_for(path: str, shape: Sequence[int], rules: Sequence[Rule], fsdp_size: int, fsdp_min_size: int) -> P:
  """The `PartitionSpec` the first matching rule gives a leaf at `path` with `shape`."""
  for pattern, action in rules:
    if not re.search(pattern, path):
      continue
    if action == "replicate":
      return P()
    if action == "fsdp":
      if fsdp_size == 1 or math.prod(shape) < fsdp_min_size:
        return P()
      divisible = [d for d in range(len(shape)) if shape[d] % fsdp_size == 0]
      if not divisible:
        return P()
      largest = max(divisible, key=lambda d: shape[d])
      return P(*("fsdp" if d == largest else None for d in range(len(shape))))
    if len(action) != len(shape):
      raise ConfigError(f"sharding rule {(pattern, action)!r} gives {len(action)} axes to {path} of shape {tuple(shape)}.")
    return P(*action)
  return P()


def path_string(path: tuple) -> str:
  """``params/encoder/kernel`` from a `jax.tree_util` key path."""
  parts = []
  for key in path:
    for attribute in ("key", "name", "idx"):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return "/".join(parts)


def tree_shardings(tree: Any, mesh: Mesh, rules: Sequence[Rule], fsdp_min_size: int) -> Any:
  """A `NamedSharding` for every leaf of `tree` (arrays or shape structs) by the rules."""
  validate_rules(rules, mesh.axis_names)
  fsdp_size = mesh.shape.get("fsdp", 1)

  def sharding(path, leaf):
    spec = spec_for(path_string(path), leaf.shape, rules, fsdp_size, fsdp_min_size)
    return NamedSharding(mesh, spec)

  return jax.tree_util.tree_map_with_path(sharding, tree)


def describe(tree: Any, shardings: Any) -> list[str]:
  """One line per leaf: path, shape, partition spec (for logs and docs)."""
  lines = []
  for (path, leaf), sharding in zip(jax.tree_util.tree_leaves_with_path(tree), jax.tree.leaves(shardings)):
    lines.append(f"{path_string(path)} {tuple(leaf.shape)} {sharding.spec}")
  return lines
